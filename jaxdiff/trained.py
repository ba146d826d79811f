"""A trained model: the service every mode uses.

    trained = jaxdiff.trained.restore(config, "runs/organ")
    images = trained.generate(jax.random.key(1), 16)          # [16, H, W, C]
    eps, x0 = trained.denoise(x_t, t)                         # at time t

`restore` reads the newest readable checkpoint of a workdir and returns a
`Trained`: the flax module, its (EMA) parameters, the step, the forward
process and the typed settings. From it: the denoiser with parameters,
labels and guidance bound (`denoise_fn`: (x, t) -> Prediction(eps, x0),
whatever the network's parameterization), its value at a time (`denoise`), a jitted sampling function (`sample_fn`, the batch split
over the local devices when their count divides it) and batched generation
(`generate`). Nothing else in jaxdiff restores a model or builds a sampling
function.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import denoiser as denoiser_lib
from jaxdiff import pretrained as pretrained_lib
from jaxdiff import samplers
from jaxdiff.settings import Settings
from jaxdiff.train import state as state_lib

Array = jax.Array


def has_checkpoint(workdir: str) -> bool:
  """Whether `<workdir>/checkpoints` holds at least one step folder."""
  d = os.path.join(workdir, "checkpoints")
  return os.path.isdir(d) and any(
      name.isdigit() and os.path.isdir(os.path.join(d, name))
      for name in os.listdir(d))


@jax.jit
def _all_finite(tree) -> Array:
  """[] bool: no NaN or Inf in any floating leaf of `tree`."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def all_finite(tree) -> bool:
  """Whether every floating array of `tree` is finite (one jitted
  reduction on the arrays' devices, one scalar to the host)."""
  return bool(_all_finite(tree))


def refuse_nonfinite(tree, step: int, directory: str,
                     what: str = "parameters") -> None:
  """Raises CheckpointError if checkpoint `step`'s `tree` is not finite."""
  if all_finite(tree):
    return
  raise ckpt_lib.CheckpointError(
      f"Checkpoint {step} in {directory} holds non-finite (NaN/Inf) {what}: "
      "the run diverged before it was saved. Move that step folder out of "
      f"{directory} to use an older checkpoint, or train again with a lower "
      "config.training.lr (or config.training.grad_clip) in a fresh "
      "--workdir.")


def check_sampler(method: str, grid: str = "default") -> None:
  """Raises ValueError (saying what to use) for an unknown sampler or grid."""
  if method not in samplers.SAMPLERS:
    raise ValueError(
        f"Unknown sampler {method!r} (config.sampling.method); use one of "
        f"{', '.join(samplers.SAMPLERS.names())}.")
  if grid != "default" and grid not in samplers.GRIDS:
    raise ValueError(
        f"Unknown config.sampling.grid {grid!r}; use one of "
        f"{', '.join(samplers.GRIDS.names())} or 'default' (the sampler's "
        "own).")


def sampling_mesh(batch_size: int) -> Optional[jax.sharding.Mesh]:
  """A mesh of the local devices when there are several, on one process,
  and their count divides `batch_size`; else None (one device samples).
  A multi-host batch could not be gathered into one picture."""
  n = jax.local_device_count()
  if n < 2 or jax.process_count() > 1 or batch_size % n:
    return None
  return state_lib.make_mesh(jax.local_devices())


def make_sample_fn(s: Settings, apply_fn: Callable, process, *,
                   method: Optional[str] = None, steps: Optional[int] = None,
                   batch_size: Optional[int] = None,
                   mesh: Optional[jax.sharding.Mesh] = None,
                   trajectory_every: int = 0) -> Callable:
  """jitted (params, key, labels) -> images [B, H, W, C] in [-1, 1].

  Args:
    s: the run's settings (sampling, data, training.conditional).
    apply_fn: (params, x, t, y) -> the network's output F.
    process: the forward process.
    method, steps, batch_size: override `s.sampling`'s.
    mesh: split the batch over this mesh's devices (params replicated).
    trajectory_every: k > 0: return (images, trajectory [F, B, H, W, C]),
      x saved every k steps (`samplers.integrate`); give no mesh then.
  """
  sc = s.sampling
  method = method or sc.method
  steps = steps or sc.steps
  batch_size = batch_size or sc.batch_size
  check_sampler(method, sc.grid)
  shape = (batch_size, *s.data.image_shape)
  options = config_lib.sampler_options(sc, method)
  param = config_lib.build_parameterization(s)
  conditional = s.training.conditional
  jit_kwargs = {}
  if mesh is not None and mesh.size > 1 and batch_size % mesh.size == 0:
    jit_kwargs = dict(out_shardings=NamedSharding(mesh, P("data")))

  @functools.partial(jax.jit, **jit_kwargs)
  def sample_fn(params, key, labels=None):
    denoise_fn = denoiser_lib.model_denoiser(
        apply_fn, params, process, param,
        labels=labels if conditional else None,
        num_classes=s.data.num_classes, guidance_scale=sc.guidance_scale)
    return samplers.sample(method, process, denoise_fn, key, shape,
                           steps=steps,
                           grid=sc.grid, trajectory_every=trajectory_every,
                           **options)

  return sample_fn


def generate(sample_fn: Callable, params, key: Array, num: int,
             batch_size: int, labels: Optional[np.ndarray] = None
             ) -> np.ndarray:
  """Draws `num` images in batches of `batch_size` (batch i: fold_in(key, i)).

  Returns:
    images [num, H, W, C] float in [-1, 1] (host memory).
  """
  out = []
  for i in range(-(-num // batch_size)):
    y = None
    if labels is not None:
      y = jnp.asarray(np.resize(labels[i * batch_size:(i + 1) * batch_size],
                                batch_size), jnp.int32)
    out.append(np.asarray(sample_fn(params, jax.random.fold_in(key, i), y)))
  return np.concatenate(out)[:num]


@dataclasses.dataclass(frozen=True, eq=False)
class Trained:
  """A trained network and what it was trained with.

  Attributes:
    settings: the run's typed settings.
    model: the flax module.
    params: its parameters (the EMA ones unless restored with use_ema=False).
    step: the training step of the checkpoint.
    process: the forward process (SDE or gamma chain).
  """
  settings: Settings
  model: nn.Module
  params: Any
  step: int
  process: Any

  @property
  def apply_fn(self) -> Callable:
    """(params, x, t, y) -> the network's raw output F."""
    return state_lib.make_apply_fn(self.model)

  @property
  def parameterization(self) -> denoiser_lib.Parameterization:
    """What F means (config.model.prediction)."""
    return config_lib.build_parameterization(self.settings)

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return self.settings.data.image_shape

  @property
  def num_classes(self) -> int:
    return self.settings.data.num_classes

  def denoise_fn(self, labels: Optional[Array] = None, *,
                 guidance_scale: float = 0.0,
                 params=None) -> denoiser_lib.DenoiseFn:
    """denoise_fn(x, t) -> Prediction(eps, x0), with parameters, labels
    and guidance bound."""
    return denoiser_lib.model_denoiser(
        self.apply_fn, self.params if params is None else params,
        self.process, self.parameterization, labels=labels,
        num_classes=self.num_classes, guidance_scale=guidance_scale)

  def denoise(self, x: Array, t: Array, labels: Optional[Array] = None
              ) -> Tuple[Array, Array]:
    """The denoiser at time t: (eps_hat, x0_hat), each [B, H, W, C].

    Args:
      x: [B, H, W, C] noisy images x_t.
      t: [B] or scalar time.
      labels: [B] int class labels (conditional models), or None.
    """
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
    pred = self.denoise_fn(labels)(x, t)
    return pred.eps, pred.x0

  def sample_fn(self, *, method: Optional[str] = None,
                steps: Optional[int] = None,
                batch_size: Optional[int] = None) -> Callable:
    """A jitted (params, key, labels) -> images, split over local devices."""
    batch_size = batch_size or self.settings.sampling.batch_size
    return make_sample_fn(self.settings, self.apply_fn, self.process,
                          method=method, steps=steps, batch_size=batch_size,
                          mesh=sampling_mesh(batch_size))

  def spread_params(self, batch_size: Optional[int] = None):
    """The params replicated over the sampling mesh (or as they are)."""
    mesh = sampling_mesh(batch_size or self.settings.sampling.batch_size)
    if mesh is None:
      return self.params
    return jax.device_put(self.params, NamedSharding(mesh, P()))

  def generate(self, key: Array, num: int,
               labels: Optional[Sequence[int]] = None, *,
               sample_fn: Optional[Callable] = None,
               batch_size: Optional[int] = None) -> np.ndarray:
    """`num` images [num, H, W, C] in [-1, 1], drawn in batches."""
    batch_size = batch_size or self.settings.sampling.batch_size
    sample_fn = sample_fn or self.sample_fn(batch_size=batch_size)
    labels = None if labels is None else np.asarray(labels)
    return generate(sample_fn, self.spread_params(batch_size), key, num,
                    batch_size, labels)


def restore(config, workdir: str, *, use_ema: bool = True) -> Trained:
  """The newest readable checkpoint of `workdir` as a `Trained` (or, with
  `config.init_from` = 'pretrained:NAME', that shipped model's EMA weights).

  Args:
    config: the run's config (ConfigDict or `Settings`).
    workdir: the run directory (checkpoints in `<workdir>/checkpoints`).
    use_ema: take the EMA parameters (else the raw ones).

  Raises:
    CheckpointError: no checkpoint, none readable, one that does not fit
      the model the config describes, or non-finite parameters (the message
      says what to do).
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ckpt_lib.CheckpointError(
        f"--workdir {workdir} is a file, not a run directory; give the "
        "--workdir of a training run.")
  s = config_lib.typed(config)
  model = config_lib.build_model(s)
  process = config_lib.build_process(s)
  tx = state_lib.make_optimizer(s.training)
  target = state_lib.abstract_state(model, tx, s.data.image_shape)
  shipped = pretrained_lib.for_config(s)
  if shipped is not None:  # config.init_from: the workdir is not read.
    params, _, meta = shipped
    pretrained_lib.check_shapes(params, target.params, s.init_from)
    return Trained(settings=s, model=model, params=params,
                   step=int(meta.get("step", 0)), process=process)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  missing = (f"No checkpoints in {ckpt_dir}; train first with --mode train "
             "and the same --workdir.")
  if not os.path.isdir(ckpt_dir):
    raise ckpt_lib.CheckpointError(missing)
  with ckpt_lib.Checkpointer(ckpt_dir) as ckpt:
    if ckpt.latest_step() is None:
      raise ckpt_lib.CheckpointError(missing)
    state = ckpt.restore(target)
  params = state.ema_params if use_ema else state.params
  refuse_nonfinite(params, int(state.step), ckpt_dir,
                   "EMA parameters" if use_ema else "parameters")
  return Trained(settings=s, model=model, params=params, step=int(state.step),
                 process=process)
