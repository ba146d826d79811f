"""Test set-up: repository root importable, strict rank promotion, JAX's
persistent compilation cache shared by the tests (and their subprocesses:
`launch_helpers.launch_env`), so that a computation compiles once, XLA's
fast-compile flag (`launch_helpers.FAST_COMPILE`), and with `-n N` a scheduler
that computes each module-scoped fixture once."""
import functools
import os
import pathlib
import re
import sys
import tempfile

import jax
import pytest

import launch_helpers  # pylint: disable=g-bad-import-order

# Read when the CPU backend starts (the first computation), not at import.
os.environ["XLA_FLAGS"] = launch_helpers.xla_flags(
    os.environ.get("XLA_FLAGS", ""))

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


_MODULE_FIXTURE = re.compile(r"""scope=["']module["']""")


@functools.lru_cache(maxsize=None)
def _has_module_fixture(path: str) -> bool:
  try:
    return bool(_MODULE_FIXTURE.search(pathlib.Path(path).read_text()))
  except OSError:
    return False


def pytest_xdist_make_scheduler(config, log):
  """`-n N`: the tests of a module that defines a module-scoped fixture (a
  training run, a set of launches) run one after the other on one worker,
  which computes the fixture once; spread over the workers, pytest would set
  it up again each time a worker came back to the module. Other tests are
  balanced one by one, as `--dist load` does. (xdist's own `loadgroup` marks
  do not reach its scheduler under pytest 9.)"""
  if config.getvalue("dist") != "load":
    return None
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=g-import-not-at-top

  class ModuleFixtureScheduling(LoadScopeScheduling):

    def _split_scope(self, nodeid):
      path = nodeid.split("::", 1)[0]
      return (path if _has_module_fixture(str(config.rootpath / path))
              else nodeid)

  return ModuleFixtureScheduling(config, log)


def pytest_collection_modifyitems(items):
  """The modules that run as one unit on a worker come first (stable
  otherwise): the tests balanced one by one fill in around them, so no long
  unit is left to run alone at the end."""
  items.sort(key=lambda item: not _has_module_fixture(str(item.path)))
