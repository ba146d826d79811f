"""Test set-up: repository root importable, strict rank promotion."""
import os
import pathlib
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session", name="real_data_dir")
def fixture_real_data_dir() -> str:
  """The real data sets: $JAXDIFF_TEST_DATA_DIR, else <repo>/../shared/data."""
  path = os.environ.get("JAXDIFF_TEST_DATA_DIR")
  if not path:
    path = str(pathlib.Path(ROOT).parent / "shared" / "data")
  if not os.path.isdir(path):
    pytest.skip(f"no real data at {path}; set JAXDIFF_TEST_DATA_DIR")
  return path
