"""Test set-up: repository root importable, strict rank promotion."""
import os
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

jax.config.update("jax_numpy_rank_promotion", "raise")
