"""`--mode train`: train (or resume) the model of the config in workdir."""
from jaxdiff import train as train_lib


def run(config, workdir: str):
  return train_lib.train_and_evaluate(config, workdir)
