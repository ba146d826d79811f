"""jaxdiff command line: flags and a config in, one call out.

    python launch.py --config configs/organamnist.py --workdir runs/organ
    python launch.py --config configs/mnist_ddpm.py:tiny --workdir /tmp/t \
        --config.training.batch_size=32 --mode train

Multi-host: run the same command on every host with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set (or under SLURM / Open MPI).
SIGTERM or Ctrl-C saves a checkpoint and exits 0; the same command resumes.
"""
import os
import signal
import sys


def _stopped_early(signum, frame):
  """SIGTERM while starting, before training installs its own handler
  (which saves a checkpoint): nothing has been written yet."""
  del signum, frame
  print("jaxdiff: stopped by signal while starting; nothing was written. "
        "Run the same command to start again.", flush=True)
  sys.stdout.flush()
  os._exit(0)  # pylint: disable=protected-access


# Installed before the slow imports: an exception raised from a handler can
# be swallowed inside them, so the handler exits at once.
signal.signal(signal.SIGTERM, _stopped_early)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxdiff import run as run_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a variant: "
    "configs/organamnist.py:tiny", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and "
                    "pictures.")
flags.DEFINE_string("mode", "train", "What to do: one of "
                    f"{', '.join(run_lib.MODES)} (jaxdiff/modes/).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  if FLAGS.mode != "train":  # Other modes write nothing until they finish.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
  run_lib.main(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
  app.run(main, flags_parser=run_lib.parse_flags)
