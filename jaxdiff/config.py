"""The config boundary: typed settings in, components out.

`settings.from_config` turns the `ConfigDict` into `Settings` once, in the
modes; these builders take the typed settings (a `ConfigDict` is converted
for callers that still hold one) and pull out the few values each component
needs. Modules, schedules and samplers never see the whole config.
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Dict, Optional, Union

import jax.numpy as jnp
import ml_collections

from jaxdiff import models as models_lib
from jaxdiff import sde as sde_lib
from jaxdiff import settings as settings_lib
from jaxdiff.settings import Settings

ConfigLike = Union[Settings, ml_collections.ConfigDict]

# Options each sampler reads from `SamplingSettings`.
SAMPLER_OPTIONS = {"ddim": ("eta", "clip_denoised"),
                   "ddpm": ("clip_denoised",),
                   "dpm_solver_pp": ("clip_denoised",), "pc": ("snr",)}

_COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def typed(config: ConfigLike) -> Settings:
  """`Settings` from a ConfigDict (or the Settings themselves)."""
  if isinstance(config, Settings):
    return config
  return settings_lib.from_config(config)


def build_model(config: ConfigLike):
  """The network named by model.name with model.kwargs."""
  s = typed(config)
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in dict(s.model.kwargs).items()}
  if s.training.conditional:
    kwargs["num_classes"] = s.data.num_classes
  if s.model.dtype not in _COMPUTE_DTYPES:
    raise ValueError(f"Unknown config.model.dtype {s.model.dtype!r}; use one "
                     f"of {', '.join(_COMPUTE_DTYPES)}.")
  if s.model.dtype != "float32":  # Parameters and optimiser state stay fp32.
    kwargs["dtype"] = _COMPUTE_DTYPES[s.model.dtype]
  if s.model.remat:
    if s.model.name != "unet":
      raise ValueError(f"config.model.remat=True needs the unet; "
                       f"{s.model.name!r} has no residual blocks to "
                       "recompute. Set it to False.")
    kwargs["remat"] = True
  return models_lib.make_model(s.model.name, **kwargs)


def build_process(config: ConfigLike):
  """The forward process: an SDE, or the DDGM gamma chain."""
  d = typed(config).diffusion
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


def sampler_options(sampling: Union[settings_lib.SamplingSettings, ConfigLike],
                    method: Optional[str] = None) -> Dict[str, Any]:
  """Keyword options of the sampler `method` (default `sampling.method`):
  eta for ddim, snr for pc, clip_denoised for ddpm, ddim, dpm_solver_pp."""
  if not isinstance(sampling, settings_lib.SamplingSettings):
    sampling = typed(sampling).sampling
  method = method or sampling.method
  return {k: getattr(sampling, k) for k in SAMPLER_OPTIONS.get(method, ())}


def to_json(config: ConfigLike) -> dict:
  if isinstance(config, Settings):
    return json.loads(json.dumps(settings_lib.to_dict(config)))
  return json.loads(config.to_json_best_effort())


def load_config_file(spec: str, root: Optional[str] = None
                     ) -> ml_collections.ConfigDict:
  """'path/to/config.py[:variant]' -> the file's get_config(variant).

  A relative path that does not exist is looked up under `root` (if given).
  """
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
