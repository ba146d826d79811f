"""Base config: every experiment overrides a few fields of this.

The defaults are written once, as the typed dataclasses of
`jaxdiff/settings.py` (one per section: data, model, diffusion, training,
sampling, eval, viz, classify, denoise); this file only turns them into a
`ConfigDict`. Keys are locked: a typo in an override
(`--config.training.batchsize=8`) is an error, not a silent no-op.
"""
from jaxdiff import settings


def get_config():
  return settings.default_config()
