"""Sampler speed (and consistency) against the number of network evaluations.

For every sampler and NFE it measures the compile time, the median wall time
of one batch after compilation, images/s, the time of ONE bare jitted network
forward at the same batch, and the integrator's overhead

    overhead % = (sampler time / (forward time x NFE) - 1) x 100,

i.e. what the `lax.scan` integrator adds on top of the network calls. One
sampler is also driven by a Python loop of jitted single steps, to show what
the scan buys. With a checkpoint (or --quality) each sampler's samples are
compared with a 1000-step ancestral (ddpm) reference drawn from the same
initial noise: PSNR to the reference, a consistency figure (how close to the
converged reverse process), not a sample-quality metric.

    python benchmarks/sampler_speed.py --quick           # tiny U-Net, CPU
    python benchmarks/sampler_speed.py --config configs/organamnist.py \\
        --batch 64 --samplers ddpm,dpm_solver_pp --nfe 10,20
    python benchmarks/sampler_speed.py --config configs/organamnist.py \\
        --checkpoint runs/organ --nfe 10,20,50,100,250,1000
    python benchmarks/sampler_speed.py --quick --config.sampling.eta=0.5

`--config path.py[:variant]` and `--config.key=value` overrides are parsed
as launch.py parses them (`jaxdiff.config.parse_config_args`); without
`--config` they apply to the default config (configs/organamnist.py, its
:tiny variant with --quick). The benchmark takes the network, the forward
process and the samplers' options (config.sampling: eta, snr,
clip_denoised, ...) from it; the JSON records the overrides.

Writes --out (JSON), a plot next to it (time and PSNR against NFE) and prints
a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import denoiser as denoiser_lib
from jaxdiff import metrics
from jaxdiff import samplers as samplers_lib
from jaxdiff import sde as sde_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

Array = jax.Array

DEFAULT_CONFIG = "configs/organamnist.py"
QUICK_CONFIG = "configs/organamnist.py:tiny"
REFERENCE = ("ddpm", 1000)  # sampler and steps of the consistency reference


# ------------------------------------------------------------------ set-up


def load_config(spec: str, overrides: Sequence[str] = ()):
  """'path/to/config.py[:variant]' (relative to the repository if need be)
  with `--config.key=value` overrides, parsed as launch.py parses them."""
  from jaxdiff import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.load_config_file(spec, root=ROOT, overrides=overrides)


def build(config):
  """(model, sde, parameterization) from the config."""
  from jaxdiff import config as config_lib  # pylint: disable=g-import-not-at-top
  model = config_lib.build_model(config)
  sde = config_lib.build_process(config)
  sde_lib.check_gaussian(sde, "sampler_speed (it benchmarks the Gaussian "
                         "samplers)")
  return model, sde, config_lib.build_parameterization(config)


def init_params(model, key, image_shape):
  x = jnp.zeros((1, *image_shape), jnp.float32)
  return model.init({"params": key}, x, jnp.zeros((1,)))["params"]


def restore_checkpoint(config, directory: str, use_ema: bool = True):
  """(params, step) from `<workdir>/checkpoints/<step>/state` (orbax)."""
  directory = os.path.abspath(directory)
  workdir = (os.path.dirname(directory)
             if os.path.basename(directory) == "checkpoints" else directory)
  from jaxdiff import trained as trained_lib  # pylint: disable=g-import-not-at-top
  trained = trained_lib.restore(config, workdir, use_ema=use_ema)
  return trained.params, trained.step


def steps_for_nfe(stepper: samplers_lib.Stepper, sde, nfe: int, grid: str):
  """(steps, ts, actual NFE) of the grid closest to `nfe` evaluations
  (`samplers.steps_for_nfe`)."""
  steps = samplers_lib.steps_for_nfe(stepper, sde, nfe, grid=grid)
  ts = samplers_lib.time_grid(
      sde, steps, kind=stepper.grid if grid == "default" else grid)
  return steps, ts, samplers_lib.nfe(stepper, ts)


# ----------------------------------------------------------------- timing


def timed(fn: Callable[[], Any], repeats: int) -> Dict[str, Any]:
  """Median wall and process-CPU seconds of `repeats` calls of fn.

  CPU time (all threads of this process) is reported next to wall time: on
  a machine shared with other jobs it measures the work done, whereas wall
  time also counts the time slices given to the other jobs.
  """
  wall, cpu = [], []
  for _ in range(repeats):
    w0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    wall.append(time.perf_counter() - w0)
    cpu.append(time.process_time() - c0)
  return dict(wall=statistics.median(wall), cpu=statistics.median(cpu),
              wall_all=wall, cpu_all=cpu)


def make_sampler_fn(name: str, sde, param, apply_fn, ts,
                    options: Dict[str, Any]):
  """(params, x_init, key) -> samples: jitted scan sampler over ts."""
  def run(params, x_init, key):
    denoise_fn = denoiser_lib.model_denoiser(apply_fn, params, sde, param)
    stepper = samplers_lib.make_sampler(name, sde, denoise_fn, **options)
    return samplers_lib.integrate(stepper, x_init, ts, key, sde=sde,
                                  denoise_fn=denoise_fn)
  return jax.jit(run)


def integrator_only_time(name: str, sde, ts, options: Dict[str, Any],
                         x_init: Array, key: Array, repeats: int):
  """Wall/CPU time of the sampler with a free network (eps = w x, w traced,
  read as a noise prediction).

  Everything but the network (step math, RNG, time broadcasting, the loop)
  at the same shape and grid: a direct, load-robust measure of the overhead.
  """
  def run(w, x_init, key):
    denoise_fn = denoiser_lib.eps_denoiser(sde, lambda x, t: w * x)
    stepper = samplers_lib.make_sampler(name, sde, denoise_fn, **options)
    return samplers_lib.integrate(stepper, x_init, ts, key, sde=sde,
                                  denoise_fn=denoise_fn)
  w = jnp.float32(0.1)
  compiled = jax.jit(run).lower(w, x_init, key).compile()
  jax.block_until_ready(compiled(w, x_init, key))
  return timed(lambda: compiled(w, x_init, key), max(repeats, 5))


def python_loop_sampler(name: str, sde, param, apply_fn, params, ts,
                        options: Dict[str, Any]):
  """The same sampler driven step by step from Python (jitted steps)."""
  denoise_fn = denoiser_lib.model_denoiser(apply_fn, params, sde, param)
  stepper = samplers_lib.make_sampler(name, sde, denoise_fn, **options)
  step = jax.jit(lambda state, t, s, key: stepper.step(
      state, t, s, samplers_lib.Noise(key, draw=stepper.draw)))
  init = jax.jit(stepper.init)
  final = float(ts[-1]) == 0.0
  grid = jnp.asarray(ts[:-1] if final else ts)

  @jax.jit
  def denoise(x, t):
    return denoise_fn(x, jnp.full(x.shape[:1], t)).x0

  def run(x_init, key):
    state = init(x_init)
    for i in range(grid.shape[0] - 1):
      state = step(state, grid[i], grid[i + 1], jax.random.fold_in(key, i))
    x = state["x"]
    return denoise(x, grid[-1]) if final else x
  return run


# -------------------------------------------------------------------- main


def parse_args(argv: Optional[Sequence[str]] = None):
  """(the options, the config with its --config.key=value overrides)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              allow_abbrev=False)
  p.add_argument("--config", default=None, metavar="PATH[:VARIANT]",
                 help=f"config file (default {DEFAULT_CONFIG}; --quick: "
                      f"{QUICK_CONFIG}); --config.KEY=VALUE overrides its "
                      "keys, as in launch.py")
  p.add_argument("--batch", type=int, default=None, help="default 64 (quick 8)")
  p.add_argument("--nfe", default=None,
                 help="comma list (default 10,20,50,100,250,1000; quick 10,20)")
  p.add_argument("--samplers", default="all", help="'all' or a comma list")
  p.add_argument("--grid", default="uniform",
                 help=f"time grid: {', '.join(samplers_lib.GRIDS.names())} "
                      "or 'default' (each sampler's own)")
  p.add_argument("--repeats", type=int, default=None,
                 help="timed calls per point (default 3; quick 2)")
  p.add_argument("--warmup", type=int, default=1,
                 help="untimed calls after compilation (0: the PSNR, if any, "
                      "comes from the first timed call)")
  p.add_argument("--checkpoint", default=None,
                 help="workdir (or its checkpoints/) to restore; enables the "
                      "PSNR-vs-reference consistency figure")
  p.add_argument("--quality", action="store_true",
                 help="compute the consistency PSNR even without a "
                      "checkpoint (random weights: exercises the code only)")
  p.add_argument("--loop_sampler", default="ddpm",
                 help="sampler also driven by a Python loop ('' to skip)")
  p.add_argument("--loop_nfe", default=None,
                 help="NFEs for the Python-loop comparison (default: the two "
                      "smallest of --nfe)")
  p.add_argument("--out", default="benchmarks/results/sampler_speed.json")
  p.add_argument("--plot", default=None,
                 help="PNG path (default: --out with .png)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true",
                 help="tiny config, --nfe 10,20 --batch 8 --repeats 2: a CPU "
                      "smoke run of a few minutes")
  args, args.config_overrides = p.parse_known_args(argv)
  quick = args.quick
  args.config = args.config or (QUICK_CONFIG if quick else DEFAULT_CONFIG)
  args.batch = args.batch or (8 if quick else 64)
  args.nfe = [int(n) for n in
              (args.nfe or ("10,20" if quick else "10,20,50,100,250,1000")
               ).split(",")]
  args.repeats = args.repeats or (2 if quick else 3)
  args.loop_nfe = ([int(n) for n in args.loop_nfe.split(",")] if args.loop_nfe
                   else sorted(args.nfe)[:2])
  if args.batch < 1 or args.repeats < 1 or min(args.nfe) < 1:
    p.error("--batch, --repeats and --nfe must be positive.")
  if args.warmup < 0:
    p.error("--warmup must be >= 0.")
  try:
    config = load_config(args.config, args.config_overrides)
  except (ValueError, FileNotFoundError) as e:
    p.error(str(e))
  return args, config


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  args, config = parse_args(argv)
  model, sde, param = build(config)
  shape = (args.batch, config.data.image_size, config.data.image_size,
           config.data.channels)
  free = denoiser_lib.eps_denoiser(sde, lambda x, t: x)  # never called
  if args.samplers == "all":
    # Every registered sampler that runs on this process (others, e.g. the
    # gamma-process 'ddgm', refuse a Gaussian SDE with a ValueError).
    names = []
    for name in samplers_lib.SAMPLERS.names():
      try:
        samplers_lib.make_sampler(name, sde, free)
        names.append(name)
      except ValueError as e:
        print(f"  skipping {name}: {str(e).splitlines()[0][:80]}")
  else:
    names = args.samplers.split(",")
    for name in names:  # unknown or unfit names fail before any work
      samplers_lib.make_sampler(name, sde, free)

  key = jax.random.key(args.seed)
  init_key, noise_key, sample_key = jax.random.split(key, 3)
  step = None
  if args.checkpoint:
    params, step = restore_checkpoint(config, args.checkpoint)
  else:
    params = init_params(model, init_key, shape[1:])
  num_params = int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
  quality = bool(args.checkpoint) or args.quality

  def apply_fn(params, x, t, y=None):
    return model.apply({"params": params}, x, t, y)

  try:  # eta for ddim, snr for pc, from config.sampling
    from jaxdiff.config import sampler_options  # pylint: disable=g-import-not-at-top
    options = {n: sampler_options(config, n) for n in names}
  except (ImportError, AttributeError, KeyError):
    options = {n: {} for n in names}

  x_init = sde.prior_sample(noise_key, shape)
  print(f"sampler_speed: {' '.join([args.config, *args.config_overrides])}, "
        f"{config.model.name} ({num_params / 1e6:.2f}M params), batch "
        f"{args.batch}, "
        f"{type(sde).__name__}, device {jax.devices()[0].device_kind}",
        flush=True)

  # One bare network forward at this batch (the unit of NFE). It is timed
  # again next to every sampler point, so that a change of machine load
  # between points does not show up as sampler overhead.
  forward = jax.jit(apply_fn)
  t_vec = jnp.full((args.batch,), 0.5)
  t0 = time.perf_counter()
  jax.block_until_ready(forward(params, x_init, t_vec))
  fwd_compile = time.perf_counter() - t0
  fwd_repeats = max(5, args.repeats)
  time_forward = lambda: timed(lambda: forward(params, x_init, t_vec),
                               fwd_repeats)
  fwd0 = time_forward()
  print(f"  forward: {fwd0['wall'] * 1e3:.1f} ms wall, "
        f"{fwd0['cpu'] * 1e3:.1f} ms cpu (median of {fwd_repeats}), "
        f"compile {fwd_compile:.1f} s", flush=True)

  reference = None
  if quality:
    ref_name, ref_steps = REFERENCE
    ref_ts = samplers_lib.time_grid(sde, ref_steps, kind="uniform")
    ref_fn = make_sampler_fn(ref_name, sde, param, apply_fn, ref_ts,
                             options.get(ref_name, {}))
    t0 = time.perf_counter()
    reference = jax.block_until_ready(ref_fn(params, x_init, sample_key))
    print(f"  reference: {ref_name} x {ref_steps} steps in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)

  rows, compiled_fns = [], {}
  for name in names:
    stepper = samplers_lib.make_sampler(name, sde, free, **options[name])
    for target in args.nfe:
      steps, ts, nfe = steps_for_nfe(stepper, sde, target, args.grid)
      fn = make_sampler_fn(name, sde, param, apply_fn, ts, options[name])
      t0 = time.perf_counter()
      compiled = fn.lower(params, x_init, sample_key).compile()
      compile_s = time.perf_counter() - t0
      compiled_fns[name, nfe] = compiled
      outs = [compiled(params, x_init, sample_key)
              for _ in range(args.warmup)]
      jax.block_until_ready(outs)
      fwd = time_forward()

      def call(compiled=compiled, outs=outs):
        outs.append(compiled(params, x_init, sample_key))
        return outs[-1]

      t = timed(call, args.repeats)
      out = outs[-1]
      row = dict(sampler=name, nfe_target=target, nfe=nfe, steps=steps,
                 grid=(stepper.grid if args.grid == "default"
                       else args.grid),
                 compile_s=compile_s, time_s=t["wall"],
                 times_s=t["wall_all"], cpu_s=t["cpu"],
                 images_per_s=args.batch / t["wall"], forward_s=fwd["wall"],
                 forward_cpu_s=fwd["cpu"],
                 overhead_pct=(t["wall"] / (fwd["wall"] * nfe) - 1) * 100,
                 overhead_cpu_pct=(t["cpu"] / (fwd["cpu"] * nfe) - 1) * 100)
      bare = integrator_only_time(name, sde, ts, options[name], x_init,
                                  sample_key, args.repeats)
      row.update(integrator_only_s=bare["wall"],
                 integrator_only_cpu_s=bare["cpu"],
                 integrator_only_pct=bare["cpu"] / (fwd["cpu"] * nfe) * 100)
      if reference is not None:
        row["psnr_vs_ref"] = float(jnp.mean(metrics.psnr(
            jnp.clip(out, -1, 1), jnp.clip(reference, -1, 1))))
      rows.append(row)
      print(f"  {name:>15s} nfe {nfe:5d}: {t['wall']:8.3f} s, overhead "
            f"{row['overhead_pct']:+6.1f}% wall, "
            f"{row['overhead_cpu_pct']:+6.1f}% cpu, integrator alone "
            f"{row['integrator_only_pct']:.2f}%" +
            (f", psnr {row['psnr_vs_ref']:.1f} dB" if reference is not None
             else ""), flush=True)

  loop_rows = []
  if args.loop_sampler:
    name = args.loop_sampler
    opts = options.get(name, {})
    stepper = samplers_lib.make_sampler(name, sde, free, **opts)
    for target in args.loop_nfe:
      steps, ts, nfe = steps_for_nfe(stepper, sde, target, args.grid)
      loop = python_loop_sampler(name, sde, param, apply_fn, params, ts, opts)
      t0 = time.perf_counter()
      jax.block_until_ready(loop(x_init, sample_key))  # compiles the step
      loop_first = time.perf_counter() - t0
      fwd = time_forward()
      loop_t = timed(lambda: loop(x_init, sample_key), args.repeats)
      fn = compiled_fns.get((name, nfe))
      if fn is None:
        fn = make_sampler_fn(name, sde, param, apply_fn, ts, opts)
        jax.block_until_ready(fn(params, x_init, sample_key))
      scan_t = timed(lambda: fn(params, x_init, sample_key), args.repeats)
      loop_rows.append(dict(
          sampler=name, nfe=nfe, steps=steps, scan_s=scan_t["wall"],
          loop_s=loop_t["wall"], scan_cpu_s=scan_t["cpu"],
          loop_cpu_s=loop_t["cpu"], loop_first_call_s=loop_first,
          forward_s=fwd["wall"], forward_cpu_s=fwd["cpu"],
          loop_over_scan=loop_t["wall"] / scan_t["wall"],
          scan_overhead_pct=(scan_t["wall"] / (fwd["wall"] * nfe) - 1) * 100,
          loop_overhead_pct=(loop_t["wall"] / (fwd["wall"] * nfe) - 1) * 100,
          scan_overhead_cpu_pct=(scan_t["cpu"] / (fwd["cpu"] * nfe) - 1) * 100,
          loop_overhead_cpu_pct=(loop_t["cpu"] / (fwd["cpu"] * nfe) - 1) * 100))
      print(f"  python loop {name} nfe {nfe}: {loop_t['wall']:.3f} s vs scan "
            f"{scan_t['wall']:.3f} s", flush=True)

  result = dict(
      config=args.config, config_overrides=args.config_overrides,
      model=config.model.name, num_params=num_params,
      image_shape=list(shape[1:]), batch=args.batch, sde=type(sde).__name__,
      checkpoint=args.checkpoint, checkpoint_step=step,
      weights="checkpoint" if args.checkpoint else "random",
      reference=f"{REFERENCE[0]} {REFERENCE[1]} steps" if quality else None,
      device=jax.devices()[0].device_kind, platform=jax.default_backend(),
      host=platform.node(), cpu_count=os.cpu_count(), jax=jax.__version__,
      repeats=args.repeats, forward_s=fwd0["wall"], forward_cpu_s=fwd0["cpu"],
      forward_compile_s=fwd_compile, results=rows, python_loop=loop_rows)
  out = args.out if os.path.isabs(args.out) else os.path.join(ROOT, args.out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  plot = args.plot or os.path.splitext(out)[0] + ".png"
  write_plot(plot, rows, title=f"{os.path.basename(args.config)}, batch "
             f"{args.batch}, {result['device']}")
  print_table(result)
  print(f"wrote {out} and {plot}")
  return result


def write_plot(path: str, rows: List[Dict[str, Any]], title: str) -> None:
  """Time per batch and PSNR-to-reference against NFE, one line per sampler."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  has_q = any("psnr_vs_ref" in r for r in rows)
  fig, axes = plt.subplots(1, 2 if has_q else 1,
                           figsize=(11 if has_q else 6, 4.2), squeeze=False)
  for name in dict.fromkeys(r["sampler"] for r in rows):
    rs = sorted((r for r in rows if r["sampler"] == name),
                key=lambda r: r["nfe"])
    nfes = [r["nfe"] for r in rs]
    axes[0, 0].plot(nfes, [r["time_s"] for r in rs], "o-", ms=4, label=name)
    if has_q:
      axes[0, 1].plot(nfes, [r["psnr_vs_ref"] for r in rs], "o-", ms=4,
                      label=name)
  axes[0, 0].set(xscale="log", yscale="log", xlabel="NFE",
                 ylabel="seconds per batch")
  if has_q:
    axes[0, 1].set(xscale="log", xlabel="NFE",
                   ylabel=f"PSNR to {REFERENCE[0]}-{REFERENCE[1]} (dB)")
  for ax in axes[0]:
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def print_table(result: Dict[str, Any]) -> None:
  rows = result["results"]
  has_q = any("psnr_vs_ref" in r for r in rows)
  print(f"\nbatch {result['batch']}, {result['device']}; overhead = time / "
        "(NFE x forward) - 1, wall and process-CPU time; integ. = the sampler "
        "with a free network (eps = w x), CPU time / (NFE x forward)")
  head = (f"{'sampler':>15s} {'NFE':>5s} {'steps':>5s} {'compile s':>9s} "
          f"{'time s':>8s} {'img/s':>8s} {'fwd ms':>7s} {'overhead':>8s} "
          f"{'cpu ovh':>8s} {'integ.':>7s}")
  print(head + (f" {'PSNR dB':>7s}" if has_q else ""))
  for r in rows:
    line = (f"{r['sampler']:>15s} {r['nfe']:5d} {r['steps']:5d} "
            f"{r['compile_s']:9.1f} {r['time_s']:8.3f} "
            f"{r['images_per_s']:8.1f} {r['forward_s'] * 1e3:7.1f} "
            f"{r['overhead_pct']:+7.1f}% {r['overhead_cpu_pct']:+7.1f}% "
            f"{r['integrator_only_pct']:6.2f}%")
    print(line + (f" {r['psnr_vs_ref']:7.1f}" if has_q else ""))
  for r in result["python_loop"]:
    print(f"python loop {r['sampler']} NFE {r['nfe']}: loop {r['loop_s']:.3f} "
          f"s ({r['loop_overhead_pct']:+.1f}% wall, "
          f"{r['loop_overhead_cpu_pct']:+.1f}% cpu) vs scan {r['scan_s']:.3f} s "
          f"({r['scan_overhead_pct']:+.1f}% wall, "
          f"{r['scan_overhead_cpu_pct']:+.1f}% cpu): loop/scan = "
          f"{r['loop_over_scan']:.2f}")


if __name__ == "__main__":
  main()
