"""Test set-up: repository root importable, strict rank promotion, JAX's
persistent compilation cache shared by the tests (and their subprocesses:
`launch_helpers.launch_env`), so that a computation compiles once."""
import os
import pathlib
import sys
import tempfile

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

jax.config.update("jax_numpy_rank_promotion", "raise")
if jax.config.jax_compilation_cache_dir is None:
  jax.config.update("jax_compilation_cache_dir", os.environ.get(
      "JAXDIFF_TEST_JIT_CACHE") or os.path.join(tempfile.gettempdir(),
                                                 "jaxdiff_test_jit_cache"))


@pytest.fixture(scope="session", name="real_data_dir")
def fixture_real_data_dir() -> str:
  """The real data sets: $JAXDIFF_TEST_DATA_DIR, else <repo>/../shared/data."""
  path = os.environ.get("JAXDIFF_TEST_DATA_DIR")
  if not path:
    path = str(pathlib.Path(ROOT).parent / "shared" / "data")
  if not os.path.isdir(path):
    pytest.skip(f"no real data at {path}; set JAXDIFF_TEST_DATA_DIR")
  return path
