"""The config boundary: typed settings in, components out.

`settings.from_config` turns the `ConfigDict` into `Settings` once, in the
modes; these builders take the typed settings (a `ConfigDict` is converted
for callers that still hold one) and pull out the few values each component
needs. Modules, schedules and samplers never see the whole config.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import os
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax.numpy as jnp
import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxdiff import denoiser as denoiser_lib
from jaxdiff import models as models_lib
from jaxdiff import sde as sde_lib
from jaxdiff import settings as settings_lib
from jaxdiff.settings import Settings

ConfigLike = Union[Settings, ml_collections.ConfigDict]

# Options each sampler reads from `SamplingSettings`.
SAMPLER_OPTIONS = {"ddim": ("eta", "clip_denoised"),
                   "ddpm": ("clip_denoised",),
                   "dpm_solver_pp": ("clip_denoised",),
                   "dpm_solver_pp_3m": ("clip_denoised",),
                   "euler_ancestral": ("clip_denoised",),
                   "edm": ("s_churn", "s_min", "s_max", "s_noise"),
                   "pc": ("snr",)}
# config.model keys that are a parameterization's own options.
PARAMETERIZATION_OPTIONS = {"edm": ("sigma_data",)}

_COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def typed(config: ConfigLike) -> Settings:
  """`Settings` from a ConfigDict (or the Settings themselves)."""
  if isinstance(config, Settings):
    return config
  return settings_lib.from_config(config)


def _is_count(value: Any, minimum: int = 1) -> bool:
  """Whether `value` is an int (not a bool) >= minimum."""
  return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and value >= minimum)


def _counts(kwargs: Mapping[str, Any], key: str, example: str, *,
            empty: bool = False) -> Tuple[int, ...]:
  """kwargs[key] as a tuple of positive ints (ValueError naming the key)."""
  value = kwargs[key]
  if (not isinstance(value, (tuple, list)) or not (value or empty)
      or not all(_is_count(v) for v in value)):
    raise ValueError(
        f"config.model.kwargs.{key}={value!r} must be a "
        f"{'' if empty else 'non-empty '}tuple of positive ints, e.g. "
        f"--config.model.kwargs.{key}='{example}'.")
  return tuple(int(v) for v in value)


def _check_counts(kwargs: Mapping[str, Any], minimums: Mapping[str, int]):
  for key, minimum in minimums.items():
    if key in kwargs and not _is_count(kwargs[key], minimum):
      raise ValueError(f"config.model.kwargs.{key}={kwargs[key]!r} must be an "
                       f"int >= {minimum}.")


def _check_unet(kwargs: Mapping[str, Any], image_size: int) -> None:
  """U-Net kwargs against the image size (defaults: `UNet`'s own)."""
  defaults = {f.name: f.default for f in dataclasses.fields(models_lib.UNet)
              if f.default is not dataclasses.MISSING}
  kwargs = {**defaults, **kwargs}
  _check_counts(kwargs, {"ch": 1, "num_res_blocks": 0, "num_heads": 1})
  ch_mult = _counts(kwargs, "ch_mult", "(1,2,2)")
  attn = _counts(kwargs, "attn_resolutions", "(14,)", empty=True)
  dropout = kwargs["dropout"]
  if (not isinstance(dropout, numbers.Real) or isinstance(dropout, bool)
      or not 0.0 <= dropout < 1.0):
    raise ValueError(f"config.model.kwargs.dropout={dropout!r} must be a "
                     "number in [0, 1).")
  factor = 2 ** (len(ch_mult) - 1)
  if image_size % factor:
    below = factor * (image_size // factor)
    sizes = " or ".join(str(n) for n in (below, below + factor) if n)
    raise ValueError(
        f"config.data.image_size={image_size} must be divisible by {factor} "
        f"for the {len(ch_mult)} levels of config.model.kwargs.ch_mult="
        f"{ch_mult}; use an image size of {sizes}, or fewer levels.")
  sizes = [image_size // 2 ** level for level in range(len(ch_mult))]
  missing = [r for r in attn if r not in sizes]
  if missing:
    raise ValueError(
        f"config.model.kwargs.attn_resolutions={attn} asks for attention at "
        f"{', '.join(map(str, missing))}, but with image_size={image_size} "
        f"and ch_mult={ch_mult} the resolutions are "
        f"{', '.join(map(str, sizes))}; use some of those (or () for none).")
  if kwargs["attention"] not in models_lib.unet.ATTENTION:
    raise ValueError(
        f"config.model.kwargs.attention={kwargs['attention']!r} must be one "
        f"of {', '.join(models_lib.unet.ATTENTION)} ('cudnn': NVIDIA GPUs).")
  heads, ch = kwargs["num_heads"], kwargs["ch"]
  widths = sorted({ch * m for m, size in zip(ch_mult, sizes) if size in attn}
                  | {ch * ch_mult[-1]})  # + the middle block's attention
  if any(w % heads for w in widths):
    divisors = [d for d in range(1, min(widths) + 1)
                if all(w % d == 0 for w in widths)]
    raise ValueError(
        f"config.model.kwargs.num_heads={heads} must divide the channels of "
        f"every attention layer ({', '.join(map(str, widths))}); use one of "
        f"{', '.join(map(str, divisors[:8]))}.")


def check_model(s: Settings) -> None:
  """Raises ValueError (naming the key and what to use) for model kwargs the
  network would reject late or silently ignore; checked before compiling."""
  s.data.validate()
  kwargs = dict(s.model.kwargs)
  if s.model.name == "unet":
    _check_unet(kwargs, s.data.image_size)
  elif s.model.name == "cnn":
    _check_counts(kwargs, {"kernel_size": 1, "last_kernel_size": 1,
                           "time_embeddings": 1})
    if "hidden" in kwargs:
      _counts(kwargs, "hidden", "(16,32,32,16)")


def build_model(config: ConfigLike):
  """The network named by model.name with model.kwargs (checked first)."""
  s = typed(config)
  check_model(s)
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
  if d.sde == "flow":
    return sde_lib.make_sde("flow")
  return sde_lib.make_sde(d.sde, schedule=d.schedule,
                          num_steps=d.num_steps or None,
                          schedule_kwargs=dict(d.schedule_kwargs))


def build_parameterization(config: ConfigLike):
  """What the network's output means (`jaxdiff.denoiser`), from
  config.model.prediction and that parameterization's own options."""
  m = typed(config).model
  if m.prediction not in denoiser_lib.PARAMETERIZATIONS:
    raise ValueError(
        f"Unknown config.model.prediction {m.prediction!r}; use one of "
        f"{', '.join(denoiser_lib.PARAMETERIZATIONS.names())}.")
  options = {k: getattr(m, k)
             for k in PARAMETERIZATION_OPTIONS.get(m.prediction, ())}
  return denoiser_lib.make_parameterization(m.prediction, **options)


def sampler_options(sampling: Union[settings_lib.SamplingSettings, ConfigLike],
                    method: Optional[str] = None) -> Dict[str, Any]:
  """Keyword options of the sampler `method` (default `sampling.method`):
  the names in `SAMPLER_OPTIONS` (eta, snr, clip_denoised, EDM's churn)."""
  if not isinstance(sampling, settings_lib.SamplingSettings):
    sampling = typed(sampling).sampling
  method = method or sampling.method
  return {k: getattr(sampling, k) for k in SAMPLER_OPTIONS.get(method, ())}


def to_json(config: ConfigLike) -> dict:
  if isinstance(config, Settings):
    return json.loads(json.dumps(settings_lib.to_dict(config)))
  return json.loads(config.to_json_best_effort())


def _config_value(value: Any) -> Any:
  if isinstance(value, Mapping):
    return ml_collections.ConfigDict({k: _config_value(v)
                                      for k, v in value.items()})
  if isinstance(value, list):
    return tuple(_config_value(v) for v in value)
  return value


# Keys that older versions wrote, as (section, key) -> (new key, value map),
# so that their config.json files and shipped models still load.
RENAMED_KEYS = {
    ("classify", "denoise_sigma"): (
        "denoise_sigmas", lambda v: f"{v:g}" if v > 0 else ""),
}


def from_json(config_json: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A `to_json` dict (a run's config.json) as a ConfigDict of every key:
  the defaults, overwritten key by key (mappings such as model.kwargs
  whole); keys of `RENAMED_KEYS` under their new names."""
  c = settings_lib.default_config()
  for name, value in config_json.items():
    if name in settings_lib.SECTIONS and isinstance(value, Mapping):
      for key, v in value.items():
        if (name, key) in RENAMED_KEYS:
          key, convert = RENAMED_KEYS[(name, key)]
          v = convert(v)
        c[name][key] = _config_value(v)
    else:
      c[name] = _config_value(value)
  return c


# `--config path` or `--config=path`: the test config_flags itself uses.
_CONFIG_FILE_ARG = re.compile(r"^-{1,2}config(=|$)")
_CONFIG_HELP = ("See configs/base.py for the config keys and their types; "
                "launch.py takes the same --config arguments.")


def _config_path(spec: str, root: Optional[str]) -> str:
  """`spec` ('path.py[:variant]') with a relative path that does not exist
  here looked up under `root`; FileNotFoundError if neither exists."""
  path, colon, variant = spec.partition(":")
  if root and not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(root, path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"No config file {path}.")
  return path + colon + variant


def last_error_line(text: str) -> str:
  """The `SomeError: message` line of an embedded traceback, else the text."""
  lines = [l.strip() for l in str(text).splitlines() if l.strip()]
  errors = [l for l in lines if re.match(r"^[A-Za-z_.]*(Error|Exception):", l)]
  return errors[-1] if errors else (lines[-1] if lines else "")


def config_error(e: Exception, args: Sequence[str],
                 help_text: str = _CONFIG_HELP) -> str:
  """One line saying what is wrong with the config arguments `args`, from
  the error absl or ml_collections raised on them (`help_text`: where to
  look, ending the line for a bad value or an unknown key)."""
  text = str(e)
  if isinstance(e, OSError):
    return f"Cannot load the --config file: {last_error_line(text)}"
  if isinstance(e, flags.Error):
    if "Traceback" in text:  # The config file raised.
      return f"{text.split(': ', 1)[0]}: {last_error_line(text)}"
    return f"{text.rstrip('.')}. {help_text}"
  # AttributeError, KeyError: an unknown key.
  key = re.search(r"'([A-Za-z0-9_]+)", text)
  hint = re.search(r'Did you mean "([A-Za-z0-9_]+)"', text)
  key = key.group(1) if key else text
  culprit = next((a.split("=")[0] for a in args
                  if re.match(r"^-{1,2}(no)?config\.", a)
                  and key in a.split("=")[0].split(".")[1:]),
                 f"--config...{key}")
  return (f"Unknown config key {culprit}"
          + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
          + f". {help_text}")


def parse_config_args(args: Sequence[str], default: Optional[str] = None, *,
                      root: Optional[str] = None
                      ) -> ml_collections.ConfigDict:
  """The config of the arguments `--config path.py[:variant]` and
  `--config.key=value`, parsed as `launch.py` parses them.

  The same parser as launch.py's flag: `ml_collections.config_flags`'
  `DEFINE_config_file` (locked: an unknown key is an error), defined on a
  fresh `FlagValues` for each call, so scripts and tests can parse several
  command lines in one process. A script with argparse options passes what
  `parse_known_args` leaves over:

      args, config_args = parser.parse_known_args(argv)
      config = config_lib.parse_config_args(config_args, "configs/x.py:tiny")

  Args:
    args: command-line arguments, config ones only (an override must follow
      a `--config` given here).
    default: the 'path.py[:variant]' loaded when `args` has no `--config`
      (the overrides then apply to it).
    root: a relative config path that does not exist from here is looked
      up under `root` (a repository's root, for scripts run elsewhere).

  Returns:
    The locked ConfigDict, every override applied.

  Raises:
    FileNotFoundError: the config file does not exist.
    ValueError: no config given, an argument that is not a config one, an
      unknown key, a value of the wrong type, or a config file that raised;
      one line saying what to fix.
  """
  args = list(args)
  for i, arg in enumerate(args):
    if _CONFIG_FILE_ARG.match(arg):
      if arg.startswith("--config=") or arg.startswith("-config="):
        name, _, spec = arg.partition("=")
        args[i] = f"{name}={_config_path(spec, root)}"
      elif i + 1 < len(args) and not args[i + 1].startswith("-"):
        args[i + 1] = _config_path(args[i + 1], root)
  if default is not None:
    default = _config_path(default, root)
  elif not any(_CONFIG_FILE_ARG.match(a) for a in args):
    raise ValueError("No config: give --config path/to/config.py[:variant].")
  argv = ["jaxdiff", *args]
  flag_values = flags.FlagValues()
  try:
    config_flags.DEFINE_config_file("config", default,
                                    flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    rest = flag_values(argv, known_only=True)[1:]
    config = flag_values["config"].value
    if config is not None:
      config.get("seed")  # Loading is lazy: fail here, clearly.
  except (flags.Error, AttributeError, KeyError, OSError) as e:
    raise ValueError(config_error(e, args)) from None
  if rest:
    raise ValueError(f"unrecognized arguments: {' '.join(rest)}")
  if config is None:
    raise ValueError("No config: give --config path/to/config.py[:variant].")
  return config


def load_config_file(spec: str, root: Optional[str] = None,
                     overrides: Sequence[str] = ()
                     ) -> ml_collections.ConfigDict:
  """'path/to/config.py[:variant]' -> its get_config(variant), with the
  `--config.key=value` arguments `overrides` applied: `parse_config_args`
  of `--config spec *overrides` (launch.py's parser).

  A relative path that does not exist is looked up under `root` (if given).
  For scripts that take several configs at once: the same overrides apply
  to each.
  """
  given = [a for a in overrides if _CONFIG_FILE_ARG.match(a)]
  if given:
    raise ValueError(
        f"{given[0]}: the config file is given apart here ({spec}); pass "
        "only --config.key=value overrides (they apply to each config of "
        "the run).")
  try:
    return parse_config_args(["--config", spec, *overrides], root=root)
  except ValueError as e:  # Say which config, for runs of several.
    raise ValueError(f"{spec}: {e}") from None
