"""The config boundary: ml_collections in, typed components out.

Modules, schedules and samplers never see the whole config; these builders
pull out the few values each needs.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

import jax.numpy as jnp
import ml_collections

from jaxdiff import models as models_lib
from jaxdiff import sde as sde_lib

# Options each sampler reads from config.sampling.
_SAMPLER_OPTIONS = {"ddim": ("eta", "clip_denoised"),
                    "ddpm": ("clip_denoised",),
                    "dpm_solver_pp": ("clip_denoised",), "pc": ("snr",)}


_COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config: ml_collections.ConfigDict):
  """The network named by config.model.name with config.model.kwargs."""
  kwargs = dict(config.model.kwargs)
  for k, v in kwargs.items():
    if isinstance(v, list):
      kwargs[k] = tuple(v)
  if config.training.conditional:
    kwargs["num_classes"] = config.data.num_classes
  dtype = config.model.get("dtype", "float32")
  if dtype not in _COMPUTE_DTYPES:
    raise ValueError(f"Unknown config.model.dtype {dtype!r}; use one of "
                     f"{', '.join(_COMPUTE_DTYPES)}.")
  if dtype != "float32":  # Parameters and optimiser state stay float32.
    kwargs["dtype"] = _COMPUTE_DTYPES[dtype]
  if config.model.get("remat", False):
    if config.model.name != "unet":
      raise ValueError(f"config.model.remat=True needs the unet; "
                       f"{config.model.name!r} has no residual blocks to "
                       "recompute. Set it to False.")
    kwargs["remat"] = True
  return models_lib.make_model(config.model.name, **kwargs)


def build_process(config: ml_collections.ConfigDict):
  """The forward process: an SDE, or the DDGM gamma chain."""
  d = config.diffusion
  if d.noise == "gamma":
    from jaxdiff import gamma  # pylint: disable=g-import-not-at-top
    return gamma.make_gamma_process(
        d.schedule, num_steps=d.num_steps or 1000, theta0=d.gamma_theta0,
        **dict(d.schedule_kwargs))
  if d.noise != "gaussian":
    raise ValueError(f"Unknown config.diffusion.noise {d.noise!r}; use "
                     "'gaussian' or 'gamma'.")
  if d.sde == "ve":
    return sde_lib.make_sde("ve", sigma_min=d.sigma_min, sigma_max=d.sigma_max)
  return sde_lib.make_sde(d.sde, schedule=d.schedule,
                          num_steps=d.num_steps or None,
                          schedule_kwargs=dict(d.schedule_kwargs))


def sampler_options(config: ml_collections.ConfigDict,
                    method: Optional[str] = None) -> Dict[str, Any]:
  """Keyword options for the configured sampler (eta for ddim, snr for pc,
  clip_denoised for ddpm, ddim and dpm_solver_pp)."""
  method = method or config.sampling.method
  return {k: config.sampling[k] for k in _SAMPLER_OPTIONS.get(method, ())}


def to_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def load_config_file(spec: str, root: Optional[str] = None
                     ) -> ml_collections.ConfigDict:
  """'path/to/config.py[:variant]' -> the file's get_config(variant).

  A relative path that does not exist is looked up under `root` (if given).
  """
  # pylint: disable=g-import-not-at-top
  import importlib.util
  import os
  # pylint: enable=g-import-not-at-top
  path, _, variant = spec.partition(":")
  if root and not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(root, path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"No config file {path}.")
  module_spec = importlib.util.spec_from_file_location("_jaxdiff_config",
                                                       path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()
