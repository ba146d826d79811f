"""What the tests that run `launch.py` in subprocesses share."""
import os
import tempfile

# The tests compile hundreds of tiny computations and run most of them a few
# times: XLA's CPU backend optimisations cost more compile time than they save
# there (a small U-Net's init compiles in 3.6 instead of 10.7 s). Every test
# process and every subprocess a test starts gets this, besides its own flags.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(extra: str = "") -> str:
  """$XLA_FLAGS of a test process: the fast-compile flag and `extra`."""
  return " ".join(f for f in (FAST_COMPILE, extra) if f)


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
  env["XLA_FLAGS"] = xla_flags()
  return env
