"""The denoising benchmark over a data set: settings in, arrays and numbers out.

`settings.DenoiseSettings` (config.denoise) becomes the problem
(`make_problem`), the methods' settings (`method_settings`) and the methods
(`make_methods`); `map_batches` runs a jitted function over a data set in
fixed-size batches (padded, so it compiles once), `reconstruct` runs one
method over the measurements, split over a device mesh, and `summary` turns
per-image metrics into the numbers the `denoise` mode writes. No file names,
no printing: progress goes to a callback.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from jaxdiff import denoiser
from jaxdiff import samplers
from jaxdiff.inverse import protocol
from jaxdiff.inverse.likelihood import NOISE_MODELS, InverseProblem
from jaxdiff.inverse.methods import (CLIPPING_SAMPLERS, METHODS, Method,
                                     MethodSettings, make_method)
from jaxdiff.inverse.operators import (OPERATORS, OperatorOptions,
                                       make_operator)
from jaxdiff.settings import DenoiseSettings

Array = jax.Array
Progress = Optional[Callable[[int], None]]  # called with rows done


# ------------------------------------------------------------ from settings


def check_settings(ds: DenoiseSettings) -> DenoiseSettings:
  """Raises ValueError for unknown method, operator, noise model, sampler or
  grid names and bad counts; returns `ds`."""
  for name in ds.method_names:
    METHODS.get(name)
  OPERATORS.get(ds.operator)
  NOISE_MODELS.get(ds.noise_model)
  _check_name("sampler", ds.sampler, samplers.SAMPLERS)
  if ds.grid != "default":  # "default": the sampler's own grid
    _check_name("grid", ds.grid, samplers.GRIDS)
  return ds.validate()


def _check_name(key: str, name: str, registry) -> None:
  if name not in registry:
    raise ValueError(f"Unknown config.denoise.{key} {name!r}; use one of "
                     f"{', '.join(registry.names())}.")


def make_problem(ds: DenoiseSettings, image_shape: Sequence[int], *,
                 operator: Optional[str] = None,
                 sigma: Optional[float] = None) -> InverseProblem:
  """The inverse problem of `ds` (operator and sigma may be overridden)."""
  options = {f.name: getattr(ds, f.name)
             for f in dataclasses.fields(OperatorOptions)}
  return InverseProblem(
      make_operator(operator or ds.operator, image_shape, **options),
      sigma=ds.sigma if sigma is None else sigma,
      noise_model=ds.noise_model, clip=ds.clip_measurement)


def method_settings(ds: DenoiseSettings,
                    sampler_options: Mapping[str, Any] = ()
                    ) -> MethodSettings:
  """The methods' settings of `ds`, with the base sampler's options.

  Args:
    ds: config.denoise.
    sampler_options: options of `ds.sampler` from config.sampling (eta,
      snr, ...); `ds.clip_denoised` replaces their clip_denoised.

  Raises:
    ValueError: an unknown sampler, or clip_denoised with a sampler that
      cannot clip.
  """
  _check_name("sampler", ds.sampler, samplers.SAMPLERS)
  options = dict(sampler_options)
  if ds.sampler in CLIPPING_SAMPLERS:
    options["clip_denoised"] = bool(ds.clip_denoised)
  elif ds.clip_denoised:
    raise ValueError(
        f"config.denoise.clip_denoised works with the samplers "
        f"{', '.join(CLIPPING_SAMPLERS)}, not {ds.sampler!r}; set it to "
        "False.")
  # Every other field of MethodSettings is the config.denoise key of its name.
  same = {f.name: getattr(ds, f.name) for f in dataclasses.fields(
      MethodSettings) if f.name != "sampler_options"}
  return MethodSettings(**same,
                        sampler_options=tuple(sorted(options.items())))


def make_methods(ds: DenoiseSettings, process, problem: InverseProblem,
                 settings: MethodSettings) -> Dict[str, Method]:
  """{name: method} for the methods of `ds`, in their order."""
  return {m: make_method(m, process, problem, settings)
          for m in ds.method_names}


# ------------------------------------------------------------------ batches


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _pad(a: np.ndarray, size: int) -> np.ndarray:
  """Pads the leading axis to `size` by repeating the last row."""
  if a.shape[0] == size:
    return a
  return np.concatenate([a, np.repeat(a[-1:], size - a.shape[0], axis=0)])


def map_batches(fn, arrays: Sequence[np.ndarray], batch_size: int, *,
                key: Optional[Array] = None, progress: Progress = None):
  """Applies fn to padded batches of the arrays' leading axis.

  Args:
    fn: (*batches[, key]) -> a pytree of [batch_size, ...] arrays.
    arrays: arrays with the same leading size N.
    batch_size: every call sees this many rows (the last batch is padded by
      repeating its last row, so fn compiles once).
    key: if given, batch i also gets fold_in(key, i).
    progress: called with the rows of each finished batch.

  Returns:
    fn's outputs for the N rows, as numpy arrays concatenated over batches.
  """
  outs = []
  n = len(arrays[0])
  for i, a in enumerate(range(0, n, batch_size)):
    b = min(a + batch_size, n)
    args = [jnp.asarray(_pad(np.asarray(v[a:b]), batch_size)) for v in arrays]
    if key is not None:
      args.append(jax.random.fold_in(key, i))
    outs.append(jax.tree.map(lambda o, k=b - a: np.asarray(o)[:k],
                             fn(*args)))
    if progress is not None:
      progress(b - a)
  return jax.tree.map(lambda *o: np.concatenate(o), *outs)


def measure(problem: InverseProblem, x: np.ndarray, noise_seed: int,
            batch_size: int) -> np.ndarray:
  """The protocol's measurements y [N, ...] of images x [N, H, W, C]."""
  fn = jax.jit(lambda x_b, i_b: problem.measure(
      jax.random.key(noise_seed), x_b, i_b))
  return map_batches(fn, [x, np.arange(len(x))], batch_size)


def evaluate(images: np.ndarray, clean: np.ndarray, batch_size: int
             ) -> Dict[str, np.ndarray]:
  """{'psnr': [M], 'ssim': [M]} of images [M, ...] against clean[:M]."""
  return map_batches(jax.jit(protocol.image_metrics),
                     [images, clean[:len(images)]], batch_size)


def summary(per_image: Dict[str, np.ndarray]) -> Dict[str, Any]:
  """Means, count and per-image lists of `evaluate`'s metrics."""
  return {"psnr_mean": float(np.mean(per_image["psnr"])),
          "ssim_mean": float(np.mean(per_image["ssim"])),
          "num_images": int(len(per_image["psnr"])),
          "psnr": [float(v) for v in per_image["psnr"]],
          "ssim": [float(v) for v in per_image["ssim"]]}


def reconstruct(method: Method,
                denoise_fn_of: Callable[[Any], denoiser.DenoiseFn], params,
                y: np.ndarray, key: Array, batch_size: int, *,
                mesh: Optional[jax.sharding.Mesh] = None,
                progress: Progress = None) -> Tuple[np.ndarray, float, float]:
  """Runs a method over measurements y [M, ...] in batches.

  Args:
    method: from `make_method`.
    denoise_fn_of: params -> denoise_fn (the network with its parameters
      bound, e.g. `lambda p: trained.denoise_fn(params=p)`).
    params: the network's parameters (replicated over `mesh`, if any).
    y: measurements [M, ...].
    key: batch i uses fold_in(key, i).
    batch_size: rows per call (a multiple of the mesh's size).
    mesh: split each batch over these devices (None: one device).
    progress: called with the rows of each finished batch.

  Returns:
    (reconstructions [M, H, W, C], wall time [s], compile time [s]).
  """
  def run_batch(p, y_b, k):
    return method(denoise_fn_of(p), y_b, k)

  jit_kwargs = {}
  if mesh is not None:
    rows, same = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    jit_kwargs = dict(in_shardings=(same, rows, same), out_shardings=rows)
  t0 = time.time()
  compiled = jax.jit(run_batch, **jit_kwargs).lower(
      params, jnp.asarray(_pad(y[:1], batch_size)), key).compile()
  compile_s = time.time() - t0
  t0 = time.time()
  recon = map_batches(lambda y_b, k: compiled(params, y_b, k), [y],
                      batch_size, key=key, progress=progress)
  return recon, time.time() - t0, compile_s
