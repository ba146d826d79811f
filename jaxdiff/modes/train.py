"""`--mode train`: train (or resume) the model of the config in workdir."""
from jaxdiff import train as train_lib


def run(config, workdir: str):
  """Trains per `config` in `workdir`; returns the final TrainState."""
  return train_lib.train_and_evaluate(config, workdir)
