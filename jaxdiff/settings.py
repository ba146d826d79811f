"""Every config default, written once: one frozen dataclass per section.

`configs/base.py` builds its `ConfigDict` from these dataclasses
(`default_config`), experiment configs override fields, and the modes turn
the `ConfigDict` back into typed settings at the boundary (`from_config`, or
`section(config, "denoise")` for one section). Code below the modes receives
a dataclass, never the whole config.

This module imports nothing but the standard library and ml_collections, so
loading a config file pulls in neither JAX model code nor matplotlib.

Adding a config key is one field (with its default and a comment) in the
dataclass of its section; adding a section is one dataclass and one line in
`Settings`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, TypeVar

import ml_collections

from jaxdiff.settings_modes import (  # re-exported: one place for defaults
    ClassifySettings, DenoiseSettings, EvalSettings, LikelihoodSettings,
    VizSettings)
from jaxdiff.settings_modes import _is_int

T = TypeVar("T")


def _dict(**kwargs) -> Any:
  return dataclasses.field(default_factory=lambda: dict(kwargs))


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """`config.data`: which images, where from, their shape."""
  name: str = "mnist"
  # files: the data set's files in data_dir | tfds: tensorflow_datasets
  # (`pip install -e ".[download]"`), its files in <data_dir>/tfds
  source: str = "files"
  data_dir: str = ""          # "" -> $JAXDIFF_DATA_DIR or ~/.cache/jaxdiff/data
  path: str = ""              # name 'folder': <path>[/<split>]/<class>/<image>
  split: str = "train"
  limit: int = 0              # use only the first N training images (0: all)
  image_size: int = 28
  channels: int = 1
  num_classes: int = 10
  random_flip: bool = False   # horizontal flips, drawn on the device

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    """[H, W, C] of one image."""
    return (self.image_size, self.image_size, self.channels)

  def load_kwargs(self) -> Dict[str, Any]:
    """`jaxdiff.data.load`'s options for the folder: path, size, channels."""
    return {"path": self.path, "image_size": self.image_size,
            "channels": self.channels} if self.name == "folder" else {}

  def validate(self) -> "DataSettings":
    for name in ("image_size", "channels", "num_classes"):
      if not _is_int(getattr(self, name), 1):
        raise ValueError(f"config.data.{name}={getattr(self, name)!r} must "
                         "be an int >= 1.")
    if not _is_int(self.limit, 0):
      raise ValueError(f"config.data.limit={self.limit!r} must be >= 0.")
    if self.name == "folder" and not self.path:
      raise ValueError("The 'folder' data set needs --config.data.path="
                       "<directory of class sub-folders>.")
    return self


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSettings:
  """`config.model`: the network (`jaxdiff.models.MODELS`) and its kwargs."""
  name: str = "unet"
  kwargs: Mapping[str, Any] = _dict(
      ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(14,),
      num_heads=8, dropout=0.1)
  # What the network outputs (jaxdiff.denoiser.PARAMETERIZATIONS):
  # eps | x0 | v | velocity (flow matching) | edm (Karras preconditioning)
  prediction: str = "eps"
  sigma_data: float = 0.5     # edm: the data's standard deviation
  dtype: str = "float32"      # compute dtype; "bfloat16" keeps fp32 params
  remat: bool = False         # unet: recompute residual blocks (less memory)


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionSettings:
  """`config.diffusion`: the forward process."""
  noise: str = "gaussian"     # or "gamma" (DDGM)
  sde: str = "vp"             # vp | subvp | ve | flow (rectified flow)
  schedule: str = "linear"    # linear | cosine
  num_steps: int = 0          # T of the discrete chain; 0: continuous
  schedule_kwargs: Mapping[str, Any] = _dict()
  sigma_min: float = 0.01     # VE only
  sigma_max: float = 50.0     # VE only
  gamma_theta0: float = 0.001  # DDGM only


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
  """`config.training`: optimiser, objective and the loop's periods."""
  batch_size: int = 128       # global batch, split over all devices
  num_train_steps: int = 10_000
  steps_per_dispatch: int = 1  # train steps per jitted call (lax.scan)
  lr: float = 2e-4
  warmup_steps: int = 0
  lr_decay: str = "none"      # or "cosine": see train.lr_schedule
  lr_decay_start: int = 0     # step at which the cosine decay starts
  lr_end_factor: float = 0.0  # final lr = lr * lr_end_factor
  weight_decay: float = 0.0
  grad_clip: float = 1.0      # global-norm clipping; 0 disables
  ema_decay: float = 0.999
  lambda_freq: float = 0.0    # weight of the FFT L1 loss on x0_hat
  freq_weighting: str = "none"  # or "snr": see losses.diffusion_loss
  # Loss weighting (jaxdiff.losses.WEIGHTINGS): none (the plain MSE of the
  # network's own target) | eps | x0 | v | snr_trunc | min_snr | edm | sigmoid
  weighting: str = "none"
  min_snr_gamma: float = 5.0  # min_snr: min(SNR, gamma) in x0 units
  sigmoid_bias: float = 0.0   # sigmoid: eps-MSE weight sigmoid(bias - logSNR)
  time_sampling: str = "uniform"  # or "lognormal": see losses.sample_time
  lognormal_mean: float = -1.2  # 'lognormal': log(sigma/alpha) ~ N(mean, std^2)
  lognormal_std: float = 1.2
  conditional: bool = False   # class-conditional network
  p_uncond: float = 0.1       # label dropout when conditional
  log_every: int = 50
  sample_every: int = 1000    # sample grid PNG every N steps (0: never)
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  max_nonfinite: int = 10     # stop after this many bad steps in a row
  # Several processes agree on a stop request (a collective) only every N
  # steps, so that the others never wait on the host; 0: log_every. A stop
  # then takes up to N steps: keep them within the cluster's grace period.
  stop_sync_every: int = 0
  # Resume although keys that change results differ from the workdir's
  # config.json (see jaxdiff.workdir.RESUMABLE); the changes are printed.
  resume_with_changes: bool = False

  def validate(self) -> "TrainingSettings":
    if not _is_int(self.batch_size, 1):
      raise ValueError(f"config.training.batch_size={self.batch_size!r} must "
                       "be >= 1 (the global batch, split over the devices).")
    if self.steps_per_dispatch < 1:
      raise ValueError("config.training.steps_per_dispatch must be >= 1.")
    if self.log_every < 1:
      raise ValueError("config.training.log_every must be >= 1.")
    if self.max_nonfinite < 1:
      raise ValueError("config.training.max_nonfinite must be >= 1.")
    for name in ("num_train_steps", "checkpoint_every", "sample_every",
                 "warmup_steps", "stop_sync_every"):
      if getattr(self, name) < 0:
        raise ValueError(f"config.training.{name} must be >= 0.")
    return self


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  """`config.sampling`: how `--mode sample`, eval and training grids draw."""
  method: str = "ddpm"        # see jaxdiff.samplers.SAMPLERS
  steps: int = 1000
  # uniform | quadratic | karras | logsnr; "default": the sampler's own
  grid: str = "default"
  num_samples: int = 64
  batch_size: int = 64
  eta: float = 0.0            # ddim (euler_ancestral: its own default 1)
  snr: float = 0.16           # pc
  clip_denoised: bool = False  # ddpm, ddim, dpm_solver_pp(_3m): x0 in [-1, 1]
  s_churn: float = 0.0        # edm: Karras et al.'s S_churn (0: plain Heun)
  s_min: float = 0.0          # edm: churn only where s_min <= sigma/alpha
  s_max: float = 1e9          # ... <= s_max
  s_noise: float = 1.0        # edm: scale of the churn noise
  guidance_scale: float = 0.0  # classifier-free guidance w
  classes: str = ""           # e.g. "0,1,2": one grid row per class
  use_ema: bool = True

  def validate(self) -> "SamplingSettings":
    if self.steps < 1 or self.batch_size < 1 or self.num_samples < 1:
      raise ValueError("config.sampling.steps, batch_size and num_samples "
                       "must be >= 1.")
    self.class_list()
    return self

  def class_list(self) -> Optional[List[int]]:
    """The classes of `classes` ('' -> None: every class)."""
    if not self.classes:
      return None
    try:
      return [int(c) for c in self.classes.split(",") if c.strip()]
    except ValueError:
      raise ValueError(f"config.sampling.classes={self.classes!r} must be "
                       "comma-separated class indices, e.g. '0,1,2'.") from None


@dataclasses.dataclass(frozen=True, eq=False)
class Settings:
  """The whole config, typed: what `from_config` returns."""
  seed: int = 0
  # CPU only: split the host into this many JAX devices, so that the
  # data-parallel train step and the sampling grids use every core.
  # -1: one per usable core (at most 8, a divisor of the batch); 0: JAX's
  # default, one device. An explicit XLA_FLAGS device count wins.
  cpu_devices: int = -1
  # 'pretrained:NAME' (jaxdiff.pretrained): the modes use that shipped model
  # instead of the workdir's checkpoint; training starts from it.
  init_from: str = ""
  data: DataSettings = dataclasses.field(default_factory=DataSettings)
  model: ModelSettings = dataclasses.field(default_factory=ModelSettings)
  diffusion: DiffusionSettings = dataclasses.field(
      default_factory=DiffusionSettings)
  training: TrainingSettings = dataclasses.field(
      default_factory=TrainingSettings)
  sampling: SamplingSettings = dataclasses.field(
      default_factory=SamplingSettings)
  eval: EvalSettings = dataclasses.field(default_factory=EvalSettings)
  viz: VizSettings = dataclasses.field(default_factory=VizSettings)
  classify: ClassifySettings = dataclasses.field(
      default_factory=ClassifySettings)
  denoise: DenoiseSettings = dataclasses.field(default_factory=DenoiseSettings)
  likelihood: LikelihoodSettings = dataclasses.field(
      default_factory=LikelihoodSettings)

  def validate(self) -> "Settings":
    """Checks data, training and sampling (`config.build_model`: the model)."""
    self.data.validate()
    self.training.validate()
    self.sampling.validate()
    return self


SECTIONS: Dict[str, Type[Any]] = {
    f.name: f.default_factory for f in dataclasses.fields(Settings)
    if f.default_factory is not dataclasses.MISSING}


def _to_config_value(value):
  if isinstance(value, Mapping):
    return ml_collections.ConfigDict(dict(value))
  return value


def default_config() -> ml_collections.ConfigDict:
  """The `ConfigDict` of every default (what `configs/base.py` returns)."""
  c = ml_collections.ConfigDict()
  for f in dataclasses.fields(Settings):
    if f.name in SECTIONS:
      section = SECTIONS[f.name]()
      c[f.name] = ml_collections.ConfigDict(
          {g.name: _to_config_value(getattr(section, g.name))
           for g in dataclasses.fields(section)})
    else:
      c[f.name] = f.default
  return c


def _plain(value):
  """ConfigDict / list values -> dict / tuple (hashable where possible)."""
  if isinstance(value, (ml_collections.ConfigDict, Mapping)):
    return {k: _plain(v) for k, v in dict(value).items()}
  if isinstance(value, list):
    return tuple(_plain(v) for v in value)
  return value


def read(cls: Type[T], values: Optional[Mapping[str, Any]], name: str) -> T:
  """`cls(**values)`; an unknown key is a ValueError naming the known ones."""
  values = dict(values) if values is not None else {}
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"Unknown config.{name} keys {unknown}; known: "
                     f"{', '.join(sorted(known))}.")
  return cls(**{k: _plain(v) for k, v in values.items()})


def section(config: ml_collections.ConfigDict, name: str) -> Any:
  """One typed section of `config` (absent: its defaults)."""
  if name not in SECTIONS:
    raise KeyError(f"No config section {name!r}; sections: "
                   f"{', '.join(SECTIONS)}.")
  return read(SECTIONS[name], config.get(name), name)


def from_config(config: ml_collections.ConfigDict) -> Settings:
  """The whole config as typed, validated `Settings` (absent sections:
  defaults); a bad value is a ValueError naming the key."""
  sections = {name: section(config, name) for name in SECTIONS}
  top = {f.name: config.get(f.name, f.default)
         for f in dataclasses.fields(Settings) if f.name not in SECTIONS}
  return Settings(**top, **sections).validate()


def to_dict(settings: Any) -> Dict[str, Any]:
  """A settings dataclass as a JSON-ready dict."""
  return dataclasses.asdict(settings)
