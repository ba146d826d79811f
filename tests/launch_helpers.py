"""What the tests that run `launch.py` in subprocesses share."""
import os
import tempfile


def launch_env() -> dict:
  """The environment of a `launch.py` subprocess: CPU, unbuffered, a shared
  compilation cache, and none of the multi-host variables of this shell."""
  env = dict(os.environ)
  env.update(
      PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
      JAX_COMPILATION_CACHE_DIR=os.environ.get("JAXDIFF_TEST_JIT_CACHE")
      or os.path.join(tempfile.gettempdir(), "jaxdiff_test_jit_cache"))
  for k in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
            "JAX_PROCESS_ID", "JAXDIFF_DISTRIBUTED"):
    env.pop(k, None)
  return env
