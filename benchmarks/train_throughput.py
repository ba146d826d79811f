"""Training throughput: step time, images/s, FLOPs and memory per config.

For every config it builds the model, forward process and optimiser exactly
as `jaxdiff.train.train_and_evaluate` does, fills the on-device "data set"
with random uint8 images of the config's shape (N = 4 x batch, so no data
set is read), compiles `jaxdiff.train.make_train_fn` and measures

* compile time (`jit(...).lower(...).compile()`),
* step time: median of `--repeats` calls after `--warmup` warm-up calls
  (`block_until_ready`), as wall time and as process CPU time, divided by the
  steps each call runs (`steps_per_dispatch`); images/s = batch / step time,
* FLOPs per step from XLA's cost analysis of the compiled program, the
  achieved GFLOP/s and its share of the device's peak, measured in the same
  run (just before each config) with a large fp32 matmul,
* memory: the device's peak bytes in use when the backend reports it (GPU,
  TPU), else the process' max RSS; and XLA's own memory analysis of the
  compiled program (arguments, outputs and temporaries),
* the parameter count.

    python benchmarks/train_throughput.py --quick     # tiny variants, CPU
    python benchmarks/train_throughput.py --config configs/mnist_ddpm.py
    python benchmarks/train_throughput.py --config configs/organamnist.py \\
        --config.model.dtype=bfloat16 --config.training.batch_size=256
    python benchmarks/train_throughput.py \\
        --configs configs/organamnist.py,configs/cifar10.py \\
        --steps_per_dispatch 1,10                     # a GPU job

The configs: `--config path.py[:variant]` (one) or `--configs a.py,b.py:v`
(several; default mnist_ddpm, organamnist and cifar10). `--config.key=value`
overrides are parsed as launch.py parses them
(`jaxdiff.config.parse_config_args`) and apply to every config of the run,
each checked against its own keys (a key that one of them lacks is an
error); the JSON records them.

XLA's cost analysis counts the body of a loop once, whatever its trip count,
so the FLOPs of a `lax.scan` of k steps are taken from the single-step
program of the same config (see `flops_source` in the JSON).

Writes --out (JSON) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import config as config_lib
from jaxdiff import distributed
from jaxdiff import train as train_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

DEFAULT_CONFIGS = "configs/mnist_ddpm.py,configs/organamnist.py,configs/cifar10.py"
DEFAULT_OUT = "benchmarks/results/train_throughput.json"
QUICK_OUT = "benchmarks/results/train_throughput_quick.json"


# ------------------------------------------------------------------ set-up


def load_config(spec: str, overrides: Sequence[str] = ()):
  """'path/to/config.py[:variant]' (relative to the repository if need be)
  with `--config.key=value` overrides, parsed as launch.py parses them."""
  return config_lib.load_config_file(spec, root=ROOT, overrides=overrides)


def quick_spec(spec: str) -> str:
  """The ':tiny' variant of a config spec that names no variant."""
  return spec if ":" in spec else spec + ":tiny"


def parse_ints(text: str) -> List[int]:
  return [int(v) for v in text.split(",") if v.strip()]


# ----------------------------------------------------------------- timing


def timed_calls(fn: Callable[[], Any], warmup: int, repeats: int
                ) -> Dict[str, Any]:
  """Median wall and process-CPU seconds of `fn()` (blocked) over repeats."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  walls, cpus = [], []
  for _ in range(repeats):
    c0, t0 = time.process_time(), time.perf_counter()
    jax.block_until_ready(fn())
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
  return dict(wall=statistics.median(walls), cpu=statistics.median(cpus),
              walls=walls, cpus=cpus)


def xla_flops(compiled_or_lowered) -> Optional[float]:
  """'flops' of XLA's cost analysis (a dict, or a list of dicts), or None."""
  try:
    analysis = compiled_or_lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis:
    return None
  flops = analysis.get("flops")
  if flops is None or not np.isfinite(flops) or flops <= 0:
    return None
  return float(flops)


def xla_memory(compiled) -> Optional[Dict[str, int]]:
  """Argument / output / temporary bytes of a compiled program, if known."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if stats is None:
    return None
  fields = ("argument_size_in_bytes", "output_size_in_bytes",
            "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
  out = {f: int(getattr(stats, f)) for f in fields if hasattr(stats, f)}
  return out or None


def peak_memory() -> Dict[str, Any]:
  """The device's peak bytes in use, else the process' max RSS."""
  stats = None
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    return dict(kind="device_peak_bytes_in_use",
                bytes=int(stats["peak_bytes_in_use"]))
  rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  scale = 1 if sys.platform == "darwin" else 1024
  return dict(kind="process_max_rss", bytes=int(rss_kib * scale))


def matmul_peak(n: int, warmup: int, repeats: int, dtype=jnp.float32
                ) -> Dict[str, float]:
  """GFLOP/s of an [n, n] @ [n, n] matmul in `dtype` (2 n^3 FLOPs)."""
  a = jax.random.normal(jax.random.key(1), (n, n), dtype)
  b = jax.random.normal(jax.random.key(2), (n, n), dtype)
  fn = jax.jit(lambda a, b: a @ b)
  t = timed_calls(lambda: fn(a, b), max(warmup, 1), repeats)
  flops = 2.0 * n ** 3
  return dict(n=n, gflops_per_s=flops / t["wall"] / 1e9,
              gflops_per_s_cpu=flops / t["cpu"] / 1e9, wall_s=t["wall"],
              cpu_s=t["cpu"])


# ------------------------------------------------------------ benchmark


def bench_config(spec: str, args: argparse.Namespace, config=None,
                 init: Optional[Callable[[], Any]] = None) -> Dict[str, Any]:
  """Compiles and times the train function of one config (`config`, when
  given, instead of loading `spec`, which then only names it; `init`, when
  given, makes the initial replicated TrainState, e.g. a jitted function
  compiled once for several configs of the same network). Without
  `config`, `args.config_overrides` (if any) apply to the loaded spec."""
  if config is None:
    config = load_config(spec, getattr(args, "config_overrides", ()))
  if args.batch:
    config.training.batch_size = args.batch
  s = config_lib.typed(config)
  tc = s.training.validate()
  batch = tc.batch_size
  model = config_lib.build_model(s)
  process = config_lib.build_process(s)
  tx = train_lib.make_optimizer(tc)
  mesh = train_lib.make_mesh()
  n_images = 4 * batch
  train_lib.check_batch(batch, jax.device_count(), n_images)
  shape = s.data.image_shape
  replicated = NamedSharding(mesh, P())
  state = (init or jax.jit(
      lambda: train_lib.init_state(model, tx, train_lib.run_keys(s.seed)[0],
                                   shape), out_shardings=replicated))()
  num_params = train_lib.count_params(state.params)
  rng = np.random.default_rng(0)
  images = jax.device_put(
      rng.integers(0, 256, (n_images, *shape), dtype=np.uint8), replicated)
  labels = jax.device_put(
      rng.integers(0, s.data.num_classes or 10, (n_images,),
                   dtype=np.int32), replicated)
  apply_fn = train_lib.make_apply_fn(model)

  ks = (parse_ints(args.steps_per_dispatch)
        if args.steps_per_dispatch not in (None, "", "config")
        else [tc.steps_per_dispatch])
  print(f"[{spec}] {s.model.name}, {num_params:,} parameters, batch "
        f"{batch}, images {shape}, steps_per_dispatch {ks}", flush=True)
  peak = matmul_peak(args.peak_n, args.warmup, args.repeats)
  print(f"  fp32 matmul {args.peak_n}^2: {peak['gflops_per_s']:.1f} GFLOP/s "
        f"wall ({peak['gflops_per_s_cpu']:.1f} per CPU second)", flush=True)

  runs = []
  step_flops = None      # FLOPs of one train step (the k = 1 program)
  step_flops_source = None
  for k in ks:
    train_fn = train_lib.make_train_fn(s, apply_fn, tx, process, mesh,
                                       length=k)
    c0, t0 = time.process_time(), time.perf_counter()
    compiled = train_fn.lower(state, images, labels).compile()
    compile_s = time.perf_counter() - t0
    compile_cpu_s = time.process_time() - c0
    call_flops = xla_flops(compiled)
    if call_flops is not None:  # A partitioned program counts one device.
      call_flops *= mesh.size
    if k == 1 and call_flops is not None:
      step_flops, step_flops_source = call_flops, "compiled k=1 program"
    holder = {"state": state}

    def call():
      holder["state"], metrics = compiled(holder["state"], images, labels)
      return holder["state"], metrics

    t = timed_calls(call, args.warmup, args.repeats)
    state = holder["state"]  # The old buffers were donated.
    runs.append(dict(
        steps_per_dispatch=k, compile_s=compile_s, compile_cpu_s=compile_cpu_s,
        call_s=t["wall"], call_cpu_s=t["cpu"], call_walls=t["walls"],
        call_cpus=t["cpus"], step_s=t["wall"] / k, step_cpu_s=t["cpu"] / k,
        images_per_s=batch * k / t["wall"],
        images_per_cpu_s=batch * k / t["cpu"],
        xla_flops_per_call=call_flops, xla_memory=xla_memory(compiled),
        memory=peak_memory()))
    print(f"  k={k}: compile {compile_s:.1f} s, {t['wall'] / k * 1e3:.1f} ms "
          f"per step ({t['cpu'] / k * 1e3:.1f} ms CPU), "
          f"{batch * k / t['wall']:.1f} img/s", flush=True)
    del compiled, train_fn

  if step_flops is None:
    # No single-step program was compiled (or its analysis lacked 'flops'):
    # analyse the lowered single-step program (no compile).
    lowered = train_lib.make_train_fn(s, apply_fn, tx, process, mesh,
                                      length=1).lower(state, images, labels)
    step_flops = xla_flops(lowered)
    if step_flops is not None:
      step_flops_source = "lowered k=1 program (before XLA optimisation)"
  for r in runs:
    r["flops_per_step"] = step_flops
    r["flops_source"] = step_flops_source
    if step_flops is not None:
      r["gflops_per_s"] = step_flops / r["step_s"] / 1e9
      r["gflops_per_cpu_s"] = step_flops / r["step_cpu_s"] / 1e9
      r["pct_of_peak"] = 100 * r["gflops_per_s"] / peak["gflops_per_s"]
      r["pct_of_peak_cpu"] = (100 * r["gflops_per_cpu_s"]
                              / peak["gflops_per_s_cpu"])
  return dict(config=spec, model=s.model.name,
              model_kwargs=config_lib.to_json(config)["model"]["kwargs"],
              num_params=num_params, batch=batch, image_shape=list(shape),
              conditional=bool(tc.conditional), num_images=n_images,
              matmul_peak=peak, runs=runs)


# ------------------------------------------------------------------ output


def _fmt(v: Optional[float], spec: str, missing: str = "n/a") -> str:
  return missing if v is None else format(v, spec)


def print_table(result: Dict[str, Any]) -> None:
  print(f"\n{result['device']} ({result['platform']}, {result['cpu_count']} "
        f"CPUs), load average {result['loadavg_start']} at start, "
        f"{result['loadavg_end']} at end; median of {result['repeats']} "
        "calls; per-step = per call / steps_per_dispatch (k)")
  head = (f"{'config':<28} {'params':>8} {'batch':>5} {'k':>3} "
          f"{'compile s':>9} {'ms/step':>9} {'cpu ms':>9} {'img/s':>8} "
          f"{'GFLOP/st':>9} {'GFLOP/s':>8} {'peak':>7} {'%peak':>6} "
          f"{'%pk cpu':>7} {'mem MiB':>8} {'tmp MiB':>8}")
  print(head)
  print("-" * len(head))
  for c in result["configs"]:
    for r in c["runs"]:
      flops = r.get("flops_per_step")
      mem = r["memory"]
      temp = (r["xla_memory"] or {}).get("temp_size_in_bytes")
      print(f"{os.path.basename(c['config']):<28} "
            f"{c['num_params'] / 1e6:>7.2f}M {c['batch']:>5} "
            f"{r['steps_per_dispatch']:>3} {r['compile_s']:>9.1f} "
            f"{r['step_s'] * 1e3:>9.1f} {r['step_cpu_s'] * 1e3:>9.1f} "
            f"{r['images_per_s']:>8.1f} "
            f"{_fmt(flops and flops / 1e9, '9.2f'):>9} "
            f"{_fmt(r.get('gflops_per_s'), '8.1f'):>8} "
            f"{c['matmul_peak']['gflops_per_s']:>7.1f} "
            f"{_fmt(r.get('pct_of_peak'), '6.1f'):>6} "
            f"{_fmt(r.get('pct_of_peak_cpu'), '7.1f'):>7} "
            f"{mem['bytes'] / 2**20:>8.0f} "
            f"{_fmt(temp and temp / 2**20, '8.0f'):>8}")
  kinds = {r["memory"]["kind"] for c in result["configs"] for r in c["runs"]}
  print("peak = fp32 matmul GFLOP/s (wall) measured just before each config; "
        "%pk cpu = the same ratio in per-CPU-second terms; mem = "
        + ", ".join(sorted(kinds))
        + (" (cumulative over the process)" if "process_max_rss" in kinds
           else "") + "; tmp = XLA's temporary buffers of the program")


def parse_args(argv: Optional[Sequence[str]] = None):
  """(the options, [(spec, config) for each config of the run]): the
  configs with the --config.key=value overrides, checked before anything
  is timed."""
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      allow_abbrev=False)
  parser.add_argument("--config", default=None, metavar="PATH[:VARIANT]",
                      help="one config file (instead of --configs); "
                      "--config.KEY=VALUE overrides its keys (or those of "
                      "each of --configs), as in launch.py")
  parser.add_argument("--configs", default=None,
                      help="comma list of path/to/config.py[:variant] "
                      f"(default {DEFAULT_CONFIGS})")
  parser.add_argument("--batch", type=int, default=0,
                      help="global batch (default: config.training.batch_size)")
  parser.add_argument("--steps_per_dispatch", default=None,
                      help="comma list of train steps per jitted call, e.g. "
                      "1,10 (default: the config's steps_per_dispatch)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls (median; default 5, 2 with --quick)")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--peak_n", type=int, default=2048,
                      help="size of the fp32 matmul that measures the peak")
  parser.add_argument("--out", default=None,
                      help=f"JSON output (default {DEFAULT_OUT}; "
                      f"{QUICK_OUT} with --quick)")
  parser.add_argument("--cpu_devices", type=int, default=0,
                      help="split a CPU host into this many JAX devices for "
                      "the data-parallel step (the config key cpu_devices; "
                      "-1: one per usable core; 0: JAX's default)")
  parser.add_argument("--quick", action="store_true",
                      help="the configs' ':tiny' variants, 2 repeats, "
                      "steps_per_dispatch 1,2")
  args, args.config_overrides = parser.parse_known_args(argv)
  if args.config and args.configs:
    parser.error("give --config (one config) or --configs (several), not "
                 "both.")
  specs = [s.strip() for s in (args.config or args.configs
                               or DEFAULT_CONFIGS).split(",") if s.strip()]
  if args.quick:
    specs = [quick_spec(s) for s in specs]
    if args.steps_per_dispatch is None:
      args.steps_per_dispatch = "1,2"
  if args.repeats is None:
    args.repeats = 2 if args.quick else 5
  if args.repeats < 1 or args.warmup < 0:
    parser.error("--repeats must be >= 1 and --warmup >= 0.")
  args.out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
  try:
    loaded = [(spec, load_config(spec, args.config_overrides))
              for spec in specs]
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  return args, loaded


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  args, loaded = parse_args(argv)
  distributed.set_cpu_devices(args.cpu_devices)
  loadavg_start = [round(v, 2) for v in os.getloadavg()]
  t_start = time.perf_counter()
  configs = [bench_config(spec, args, config) for spec, config in loaded]
  result = dict(
      device=jax.devices()[0].device_kind, platform=jax.default_backend(),
      num_devices=jax.device_count(), host=platform.node(),
      cpu_count=os.cpu_count(), jax=jax.__version__, repeats=args.repeats,
      warmup=args.warmup, peak_n=args.peak_n, quick=args.quick,
      config_overrides=args.config_overrides,
      loadavg_start=loadavg_start,
      loadavg_end=[round(v, 2) for v in os.getloadavg()],
      total_s=time.perf_counter() - t_start, configs=configs)
  out = args.out if os.path.isabs(args.out) else os.path.join(ROOT, args.out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print_table(result)
  print(f"wrote {out} ({result['total_s']:.0f} s)")
  return result


if __name__ == "__main__":
  main()
