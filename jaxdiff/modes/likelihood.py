"""`--mode likelihood`: bits/dim of the first `num_images` images of a split
under the newest checkpoint (config.likelihood, `LikelihoodSettings`).

Method 'ode' (continuous Gaussian processes): the probability-flow ODE's
exact likelihood of uniformly dequantized images, `jaxdiff.likelihood.
ode_bits_per_dim` (bits/dim = -log p_y/(D ln 2) + 7 for y in [-1, 1]).
Method 'chain' (the discrete DDPM chain): Ho et al.'s variational bound,
`jaxdiff.likelihood.chain_bound`. 'auto' picks by the process. Conditional
networks are evaluated unconditionally (the null class: log p(x)).

Each batch is one jitted call, split over the local devices when their count
divides the (rounded-up) batch; the last batch is padded with copies of its
last image. Batch i uses the key fold_in(key(config.likelihood.seed), i).
Writes WORKDIR/likelihood/metrics.json (or `out_dir`), rewritten after each
batch: an interrupted run keeps the batches it finished. Beside the model's
figures it reports a simple baseline on the same images, a per-pixel
independent categorical fitted on the train split
(`jaxdiff.likelihood.pixel_categorical_log_probs`), and at the end draws both
per-image distributions in bpd_histogram.png.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import distributed
from jaxdiff import files
from jaxdiff import likelihood as lk
from jaxdiff import sde as sde_lib
from jaxdiff import settings as settings_lib
from jaxdiff import trained as trained_lib
from jaxdiff import viz

UNITS = {
    "ode": ("bits/dim of the 8-bit images: -(log p_y(y) + D log(2/256)) / "
            "(D ln 2) = -log p_y(y)/(D ln 2) + 7, y = -1 + (x + u)/128 "
            "uniformly dequantized in [-1, 1) (score_sde's convention; +8 in "
            "[0, 1] units); an upper bound on -log2 P(x)/D up to the solver's "
            "error, p_y the density at t_eps"),
    "chain": ("bits/dim of the 8-bit images: the DDPM variational bound "
              "L/(D ln 2) >= -log2 P(x0)/D, x0 = x/127.5 - 1, its decoder "
              "discretized (bins of width 2/255, outer edges at +-inf); no "
              "dequantization, no offset"),
}


def _process_name(process) -> str:
  if getattr(process, "discrete", False):
    return f"the {len(process.schedule.betas)}-step {type(process).__name__}"
  return f"the continuous {type(process).__name__}"


def resolve_method(method: str, process) -> str:
  """'ode' or 'chain' for `process`; a one-line ValueError (saying what to
  set) when the method cannot be used with it."""
  sde_lib.check_gaussian(process, "--mode likelihood")
  discrete = bool(getattr(process, "discrete", False))
  is_chain = discrete and isinstance(process, sde_lib.VPSDE)
  if method == "auto":
    method = "chain" if discrete else "ode"
  if method == "chain" and not is_chain:
    raise ValueError(
        "config.likelihood.method='chain' needs the discrete VP chain "
        "(config.diffusion.sde='vp', num_steps > 0), but this model uses "
        f"{_process_name(process)}; set --config.likelihood.method=ode "
        "(or auto) for a continuous process.")
  if method == "ode" and discrete:
    raise ValueError(
        "config.likelihood.method='ode' needs a continuous schedule, but this "
        f"model uses {_process_name(process)} (config.diffusion.num_steps > "
        "0), whose piecewise-constant beta(t) stalls the adaptive solver; set "
        "--config.likelihood.method=chain (or auto).")
  return method


def check_options(ls, method: str, process) -> Optional[float]:
  """Refuses options of the other method; returns the ODE's t_eps (None:
  the process's t_min)."""
  if method == "chain":
    for name, default in (("dequant_samples", 1), ("t_eps", 0.0)):
      if getattr(ls, name) != default:
        raise ValueError(
            f"config.likelihood.{name} applies to method 'ode' only; the "
            f"chain bound needs none: set it back to {default}.")
    return None
  if ls.chain_terms:
    raise ValueError("config.likelihood.chain_terms applies to method "
                     "'chain' only; set it to 0 for the ODE.")
  if ls.t_eps and not ls.t_eps < process.t_max:
    raise ValueError(f"config.likelihood.t_eps={ls.t_eps} must be below the "
                     f"process's t_max = {process.t_max}.")
  return float(ls.t_eps) if ls.t_eps else None


def _batch_fn(ls, method: str, trained, t_eps) -> Callable:
  """(params, x uint8 [B, H, W, C], key) -> dict of [B] and scalar arrays."""
  process = trained.process

  def ode(params, x, key):
    res = lk.ode_bits_per_dim(
        process, trained.denoise_fn(params=params), x, key,
        num_samples=ls.dequant_samples, divergence=ls.divergence,
        probe=ls.probe, solver=ls.solver, rtol=ls.rtol, atol=ls.atol,
        t_eps=t_eps, max_steps=ls.max_steps)
    return dict(bpd=res.bpd, nfe=res.samples.nfe, ok=res.samples.ok)

  def chain(params, x, key):
    x0 = x.astype(jnp.float32) / 127.5 - 1.0
    res = lk.chain_bound(process, trained.denoise_fn(params=params), x0, key,
                         variance=ls.chain_variance,
                         num_terms=ls.chain_terms or None)
    scale = 1.0 / (x0[0].size * math.log(2.0))
    return dict(bpd=res.bpd, prior_bpd=res.prior * scale,
                diffusion_bpd=res.diffusion * scale,
                decoder_bpd=res.decoder * scale,
                nfe=jnp.asarray(ls.chain_terms + 1 if ls.chain_terms
                                else len(process.schedule.betas), jnp.int32),
                ok=jnp.bool_(True))

  return ode if method == "ode" else chain


def _load_images(s, ls) -> np.ndarray:
  """The first num_images images of the split, uint8 [N, H, W, C]."""
  x = np.asarray(data_lib.config_split(s.data, ls.data_split,
                                   ls.num_images).images)
  if x.dtype != np.uint8:
    raise ValueError(f"--mode likelihood needs 8-bit images; {s.data.name} "
                     f"gave {x.dtype}.")
  return x


def _progress_bar(total: int, desc: str):
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)
  except ImportError:
    return None


def _pad(a: np.ndarray, size: int) -> np.ndarray:
  """Pads the leading axis to `size` by repeating the last row."""
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def _stats(per_image: Dict[str, list], nfe: list, batch_ok: list,
           num_rows: list) -> Dict[str, Any]:
  """Means, the standard error over the scored images (those of failed
  solves left out) and the solver's counts, per batch."""
  bpd, ok = np.asarray(per_image["bpd"]), np.asarray(per_image["ok"], bool)
  good = bpd[ok]
  n = len(good)
  out = {"bpd_mean": float(good.mean()) if n else None,
         "bpd_stderr": (float(good.std(ddof=1) / math.sqrt(n)) if n > 1
                        else None),
         "num_images_scored": n,
         "num_failed_solves": batch_ok.count(False),
         "failed_images": [int(i) for i in np.flatnonzero(~ok)],
         "nfe_per_image_mean": float(np.average(nfe, weights=num_rows)),
         "nfe_per_batch": nfe}
  for k in ("prior_bpd", "diffusion_bpd", "decoder_bpd"):
    if k in per_image:
      out[f"{k}_mean"] = float(np.mean(np.asarray(per_image[k])[ok]))
  return out


def _header(s, ls, method, trained, t_eps, n, n_split) -> Dict[str, Any]:
  process = trained.process
  return {
      "mode": "likelihood", "method": method,
      "checkpoint_step": trained.step, "data": s.data.name,
      "split": ls.data_split, "num_images": n,
      "options": dataclasses.asdict(ls),
      "t_eps": (None if method == "chain" else
                float(process.t_min if t_eps is None else t_eps)),
      "process": _process_name(process),
      "conditioning": ("null class (unconditional log p(x))"
                       if s.training.conditional else "none"),
      "devices": n_split,
      "conventions": {
          "units": UNITS[method], "data_range": [-1.0, 1.0],
          "num_bins": 256,
          "dequantization": ("uniform, q(u|x) = 1" if method == "ode"
                             else "none"),
          "nfe": ("vector-field evaluations per solve (one denoiser call "
                  "plus its divergence pass, for the whole batch): 6 per "
                  "attempted step + 1" if method == "ode" else
                  "denoiser calls per image (T, or chain_terms + 1 with "
                  "L_0's)")},
  }


def _baseline(s, x: np.ndarray) -> Tuple[Dict[str, Any], np.ndarray]:
  """The per-pixel categorical fitted on the training split, scored on the
  same images (what the model's bits/dim is read against): its summary and
  per-image bits/dim."""
  train = np.asarray(data_lib.config_split(s.data, "train").images)
  bpd = lk.pixel_categorical_bits_per_dim(
      lk.pixel_categorical_log_probs(train, alpha=1.0), x)
  return {"name": "per-pixel independent categorical (Laplace alpha = 1), "
                  "fitted on the train split",
          "train_images": len(train), "bpd_mean": float(bpd.mean()),
          "bpd_stderr": (float(bpd.std(ddof=1) / math.sqrt(len(bpd)))
                         if len(bpd) > 1 else None)}, bpd


def _compile(fn, params, x, key, mesh):
  jit_kwargs = {}
  if mesh is not None:
    rows, same = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    jit_kwargs = dict(in_shardings=(same, rows, same))
  return jax.jit(fn, **jit_kwargs).lower(params, x, key).compile()


def run(config, workdir: str) -> Dict[str, Any]:
  """Scores the images; returns the contents of metrics.json."""
  s = settings_lib.from_config(config)
  ls = s.likelihood.validate()
  process = config_lib.build_process(s)
  method = resolve_method(ls.method, process)
  t_eps = check_options(ls, method, process)
  trained = trained_lib.restore(s, workdir, use_ema=ls.use_ema)
  x = _load_images(s, ls)
  n = len(x)
  n_dev = jax.local_device_count() if jax.process_count() == 1 else 1
  bs = -(-min(ls.batch_size, n) // n_dev) * n_dev
  mesh = trained_lib.sampling_mesh(bs)
  params = trained.spread_params(bs)
  n_split = mesh.size if mesh is not None else 1
  out_path = os.path.join(ls.out_dir or os.path.join(workdir, "likelihood"),
                          "metrics.json")
  header = _header(s, ls, method, trained, t_eps, n, n_split)
  header["options"]["batch_size_used"] = bs
  header["baseline"], base_bpd = _baseline(s, x)
  print(f"jaxdiff: likelihood ({method}): {n} {s.data.name} {ls.data_split} "
        f"images, checkpoint step {trained.step}, batches of {bs} split over "
        f"{n_split} device(s).", flush=True)

  t_start = time.time()
  key = jax.random.key(ls.seed)
  compiled = _compile(_batch_fn(ls, method, trained, t_eps), params,
                      jnp.asarray(_pad(x[:1], bs)), key, mesh)
  compile_s = time.time() - t_start
  per_image: Dict[str, list] = {}
  nfe, batch_ok, rows, seconds = [], [], [], []
  bar = _progress_bar(n, f"likelihood ({method})")
  result = dict(header)
  for i, lo in enumerate(range(0, n, bs)):
    xb = x[lo:lo + bs]
    t0 = time.time()
    out = jax.device_get(compiled(params, jnp.asarray(_pad(xb, bs)),
                                  jax.random.fold_in(key, i)))
    seconds.append(time.time() - t0)
    batch_ok.append(bool(out.pop("ok")))
    nfe.append(int(out.pop("nfe")))
    rows.append(len(xb))
    per_image.setdefault("ok", []).extend([batch_ok[-1]] * len(xb))
    for k, v in out.items():
      per_image.setdefault(k, []).extend(float(b) for b in v[:len(xb)])
    done, wall = lo + len(xb), sum(seconds)
    result = dict(header, **_stats(per_image, nfe, batch_ok, rows),
                  num_images_done=done, complete=done == n,
                  bpd=per_image["bpd"], compile_time_s=compile_s,
                  first_batch_time_s=seconds[0], wall_time_s=wall,
                  time_per_image_s=wall / done,
                  total_time_s=time.time() - t_start)
    if distributed.is_main():  # each host scores every image (no mesh)
      files.write_json(out_path, result, indent=1)
    if bar is not None:
      bar.update(len(xb))
  if bar is not None:
    bar.close()
  _compare(result, base_bpd, out_path)
  _print_summary(result, out_path)
  return result


def _compare(result: Dict[str, Any], base_bpd: np.ndarray,
             out_path: str) -> None:
  """Adds the share of images the model scores below the baseline and
  writes bpd_histogram.png (both per image) beside metrics.json."""
  bpd = np.asarray(result["bpd"], np.float64)
  ok = np.isfinite(bpd) & np.asarray(
      [i not in set(result["failed_images"]) for i in range(len(bpd))])
  result["baseline"]["fraction_model_below"] = (
      float(np.mean(bpd[ok] < base_bpd[ok])) if ok.any() else None)
  if not distributed.is_main():
    return
  files.write_json(out_path, result, indent=1)
  viz.histograms_figure(
      os.path.join(os.path.dirname(out_path), "bpd_histogram.png"),
      {f"model ({result['method']})": bpd[ok],
       "per-pixel categorical": base_bpd[ok]},
      xlabel="bits/dim per image",
      title=f"{result['data']} {result['split']}: {int(ok.sum())} images")


def _print_summary(r: Dict[str, Any], path: str) -> None:
  mean, se = r["bpd_mean"], r["bpd_stderr"]
  text = "n/a" if mean is None else f"{mean:.4f}"
  if se is not None:
    text += f" +- {se:.4f}"
  failed = (f", {r['num_failed_solves']} failed solve(s) (images "
            f"{r['failed_images'][:8]} left out)"
            if r["num_failed_solves"] else "")
  print(f"jaxdiff: likelihood ({r['method']}) at step {r['checkpoint_step']}:"
        f" {text} bits/dim on {r['num_images_scored']} images, NFE "
        f"{r['nfe_per_image_mean']:.0f}/image, {r['time_per_image_s']:.3f} "
        f"s/image (+{r['compile_time_s']:.1f} s compile){failed}; per-pixel "
        f"categorical baseline {r['baseline']['bpd_mean']:.4f} -> {path}",
        flush=True)
