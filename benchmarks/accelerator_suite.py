"""Accelerator suite: jaxdiff's throughput on whatever device JAX sees, in
one command and one JSON.

Sections (each row: one measurement; a row that did not run says why in
"skipped", one that failed says so in "error"):

* **peaks**: a large bf16 and fp32 matmul measured in this run, and the
  chip's dense datasheet peaks (`DATASHEET`, by device_kind; CPU: measured
  only).
* **train**: `jaxdiff.train.make_train_fn` (through
  `train_throughput.bench_config`) for the coursework CNN
  (configs/mnist_ddpm.py), the OrganAMNIST U-Net (configs/organamnist.py) and
  the CIFAR-10 U-Net (configs/cifar10.py) at batch 128, fp32 and bf16
  compute (`config.model.dtype`), 1 and 10 steps per dispatch: compile s,
  step time, img/s, TFLOP/s from XLA's cost analysis, MFU against the
  datasheet and against the measured matmul, peak memory.
* **attention**: the OrganAMNIST U-Net's train step with each attention
  implementation available here (`config.model.kwargs.attention`: matmul,
  xla, cudnn).
* **sampling**: `jaxdiff.trained.make_sample_fn` for the OrganAMNIST U-Net,
  1000-step ancestral (ddpm) and 20-step dpm_solver_pp at batch 256 and
  1024: img/s, TFLOP/s (forward FLOPs x network evaluations).
* **torch**: the PyTorch twins of `compare_pytorch.py` (CNN and OrganAMNIST
  U-Net, one train step and one DDPM step) on the same device, eager and
  `torch.compile`, fp32 and bf16 autocast, alternated with jaxdiff's step
  (`compare_pytorch.bench_model`). Skipped, with the reason, without PyTorch.

    python benchmarks/accelerator_suite.py --quick         # CPU, tiny shapes
    python benchmarks/accelerator_suite.py --max_seconds 420  # a GPU/TPU run
    bash benchmarks/accelerator_suite.sh .whl 420          # on a device machine
    python benchmarks/accelerator_suite.py --quick \\
        --config.training.lambda_freq=0.0                  # overrides

The networks are named (`--models`, `--torch_models`; `MODELS`), each with
its config file; `--config.key=value` overrides are parsed as launch.py
parses them (`jaxdiff.config.parse_config_args`) and apply to every config
the suite builds (each checked against its own keys before anything runs).
The suite's own settings are set after them and win: `model.dtype` (the
row's dtype), the attention implementation, the train batch (`--batch`).
There is no `--config` file argument. The JSON records the overrides.

The JSON (default benchmarks/results/accelerator_<platform>_<date>.json) is
rewritten after every row, so an interrupted run keeps what finished; with
`--max_seconds` the rows left when the budget is spent are recorded as
skipped, and `--resume` a later run measures only those.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):
  if _path not in sys.path:
    sys.path.insert(0, _path)

# JAX pre-allocates 75% of a GPU by default; the PyTorch twins share it.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import compare_pytorch as cp
import train_throughput as tt
from jaxdiff import config as config_lib
from jaxdiff import denoiser as denoiser_lib
from jaxdiff import files
from jaxdiff import samplers as samplers_lib
from jaxdiff import train as train_lib
from jaxdiff import trained as trained_lib
from jaxdiff.models import unet as unet_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

# In the order they run (the budget skips from the end).
SECTIONS = ("train", "torch", "sampling", "attention")
MODELS = {"cnn": "configs/mnist_ddpm.py", "organamnist": "configs/organamnist.py",
          "cifar10": "configs/cifar10.py"}
TORCH_MODELS = {"cnn": "cnn", "organamnist": "unet"}  # compare_pytorch names
DTYPES = {"float32": "fp32", "bfloat16": "bf16"}
SAMPLERS = (("ddpm", 1000), ("dpm_solver_pp", 20))

# Dense (no sparsity) datasheet TFLOP/s by device_kind substring, first match:
# bf16 on tensor cores / the MXU, TF32 tensor cores, fp32 vector units. On a
# TPU, fp32 matmuls run as bf16 passes at JAX's default precision.
DATASHEET = (
    ("H200 NVL", dict(bfloat16=836.0, tf32=418.0, float32=60.0)),
    ("H200", dict(bfloat16=989.0, tf32=494.0, float32=67.0)),      # SXM
    ("H100 PCIe", dict(bfloat16=756.0, tf32=378.0, float32=51.0)),
    ("H100", dict(bfloat16=989.0, tf32=494.0, float32=67.0)),      # SXM
    ("A100", dict(bfloat16=312.0, tf32=156.0, float32=19.5)),
    ("L4", dict(bfloat16=121.0, tf32=60.0, float32=30.3)),
    ("TPU v6 lite", dict(bfloat16=918.0)),                          # v6e
    ("TPU v5 lite", dict(bfloat16=197.0)),                          # v5e
    ("TPU v5", dict(bfloat16=459.0)),                               # v5p
    ("TPU v4", dict(bfloat16=275.0)),
)


# ----------------------------------------------------------- the run's log


class Suite:
  """The result JSON, rewritten after every row, and the time budget."""

  def __init__(self, args, result: Dict[str, Any], kept: Dict[str, Dict]):
    self.args, self.result, self.kept = args, result, kept
    self.t0 = time.perf_counter()
    self._inits: Dict[str, Callable[[], Any]] = {}

  def init_fn(self, name: str) -> Callable[[], Any]:
    """() -> a fresh replicated TrainState of network `name` (the train step
    donates it), the same for all its rows: parameters are fp32 whatever the
    compute dtype or attention implementation."""
    if name not in self._inits:
      _, config = model_config(self.args, name, "float32")
      s = config_lib.typed(config)
      host = random_state(config_lib.build_model(s),
                          train_lib.make_optimizer(s.training.validate()),
                          s.data.image_shape, s.seed)
      replicated = NamedSharding(train_lib.make_mesh(), P())
      self._inits[name] = lambda: jax.device_put(host, replicated)
    return self._inits[name]

  def elapsed(self) -> float:
    return time.perf_counter() - self.t0

  def write(self) -> None:
    self.result["elapsed_s"] = round(self.elapsed(), 1)
    files.write_json(self.args.out, self.result, indent=1)

  def rows(self, section: str, keys: Sequence[str],
           measure: Callable[[], List[Dict[str, Any]]],
           skip: Optional[str] = None) -> List[Dict[str, Any]]:
    """Appends the rows `keys` of `section`: kept from --resume, skipped
    (`skip`, or the budget is spent), else `measure()` (one dict per key;
    an exception becomes an error row for each key)."""
    budget = self.args.max_seconds
    if all(k in self.kept for k in keys):
      rows = [dict(self.kept[k], resumed=True) for k in keys]
    elif skip or (budget and self.elapsed() > budget):
      reason = skip or (f"budget: --max_seconds {budget:g} spent "
                        f"({self.elapsed():.0f} s)")
      rows = [dict(skipped=reason) for _ in keys]
    else:
      try:
        rows = measure()
      except Exception as e:  # pylint: disable=broad-except
        lines = traceback.format_exc().strip().splitlines()
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        rows = [dict(error=error, traceback=lines[-6:]) for _ in keys]
    for key, row in zip(keys, rows):
      row["key"] = key
      self.result["sections"][section].append(row)
      print(f"[{self.elapsed():6.0f} s] {key}: {summary(row)}", flush=True)
    self.write()
    return rows


def random_state(model, tx, image_shape, seed: int):
  """A TrainState in host memory without compiling `init_state` (for a
  U-Net, XLA takes about as long for it as for the train step): the shapes
  of `train.abstract_state`, parameters drawn at about unit gain (kernels
  N(0, 1/fan-in), norm scales 1, biases 0: the speed is what matters), EMA
  = parameters, and AdamW's state, the step and the non-finite count 0, as
  `init_state` makes them."""
  shapes = train_lib.abstract_state(model, tx, image_shape)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = getattr(path[-1], "key", "")
    if name == "kernel" or name == "embedding":
      fan_in = np.prod(leaf.shape[:-1]) if name == "kernel" else 1
      return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(
          leaf.dtype)
    return np.full(leaf.shape, name == "scale", leaf.dtype)

  params = jax.tree_util.tree_map_with_path(draw, shapes.params)
  zeros = lambda tree: jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), tree)
  return shapes.replace(step=np.zeros((), np.int32), params=params,
                        ema_params=params, opt_state=zeros(shapes.opt_state),
                        nonfinite=np.zeros((), np.int32))


def summary(row: Dict[str, Any]) -> str:
  """One progress line of a row."""
  if "skipped" in row or "error" in row:
    return ("skipped: " + row["skipped"]) if "skipped" in row else (
        "ERROR " + row["error"])
  parts = [f"{k} {row[k]:.4g}" for k in (
      "step_ms", "images_per_s", "tflops_per_s", "mfu", "compile_s",
      "jax_ms", "torch_ms", "torch_over_jax", "torch_first_call_s")
           if isinstance(row.get(k), (int, float))]
  return ", ".join(parts)


# ------------------------------------------------------ device and peaks


def versions() -> Dict[str, Any]:
  """Python, the packages that matter and PyTorch's CUDA/cuDNN if any."""
  out = dict(python=platform.python_version())
  for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin",
               "libtpu", "flax", "optax", "orbax-checkpoint", "numpy",
               "ml_collections", "torch"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  if cp.torch is not None:
    out["torch_cuda"] = cp.torch.version.cuda
    if cp.torch.backends.cudnn.is_available():
      out["torch_cudnn"] = cp.torch.backends.cudnn.version()
  return out


def device_info() -> Dict[str, Any]:
  device = jax.devices()[0]
  try:
    env = jax.print_environment_info(return_string=True)
  except Exception:  # pylint: disable=broad-except
    env = None
  return dict(platform=jax.default_backend(), device_kind=device.device_kind,
              num_devices=jax.device_count(), host=platform.node(),
              cpu_count=os.cpu_count(),
              matmul_precision=str(jax.config.values.get(
                  "jax_default_matmul_precision")),
              xla_mem_fraction=os.environ.get(
                  "XLA_PYTHON_CLIENT_MEM_FRACTION"),
              # Set: a program compiled twice in the run (the PyTorch
              # section's JAX steps, eager vs compile) loads from the cache.
              jax_compilation_cache_dir=jax.config.values.get(
                  "jax_compilation_cache_dir"),
              environment=env.splitlines() if env else None)


def datasheet(device_kind: str) -> Optional[Dict[str, Any]]:
  for name, peaks in DATASHEET:
    if name.lower() in device_kind.lower():
      return dict(match=name, tflops=peaks)
  return None


def measure_peaks(args, info) -> Dict[str, Any]:
  """bf16 and fp32 matmul TFLOP/s measured now, the datasheet's, and the
  peak each compute dtype's MFU is taken against."""
  matmul = {}
  for dtype in DTYPES:
    m = tt.matmul_peak(args.matmul_n, 1, args.repeats, jnp.dtype(dtype))
    matmul[dtype] = dict(n=m["n"], tflops_per_s=m["gflops_per_s"] / 1e3,
                         wall_s=m["wall_s"])
    print(f"  {dtype} matmul {m['n']}^2: {m['gflops_per_s'] / 1e3:.3f} "
          "TFLOP/s", flush=True)
  sheet = datasheet(info["device_kind"])
  basis = {}
  if sheet:
    peaks = sheet["tflops"]
    basis["bfloat16"] = ("bfloat16", peaks["bfloat16"])
    fp32 = peaks.get("float32")
    if fp32 is None:  # TPU: fp32 matmuls are bf16 passes
      basis["float32"] = ("bfloat16", peaks["bfloat16"])
    elif matmul["float32"]["tflops_per_s"] > 1.1 * fp32 and "tf32" in peaks:
      basis["float32"] = ("tf32", peaks["tf32"])  # XLA ran fp32 as TF32
    else:
      basis["float32"] = ("float32", fp32)
  return dict(matmul=matmul, datasheet=sheet,
              mfu_basis={k: dict(peak=p, tflops=v) for k, (p, v) in
                         basis.items()})


def efficiency(flops: Optional[float], seconds: float, dtype: str,
               peaks: Dict[str, Any]) -> Dict[str, Any]:
  """TFLOP/s, MFU (datasheet) and the share of the measured matmul."""
  if not flops:
    return dict(tflops_per_s=None, mfu=None, pct_of_matmul=None)
  tflops = flops / seconds / 1e12
  basis = peaks["mfu_basis"].get(dtype)
  return dict(tflops_per_s=tflops,
              mfu=tflops / basis["tflops"] if basis else None,
              mfu_peak=basis["peak"] if basis else None,
              pct_of_matmul=100 * tflops
              / peaks["matmul"][dtype]["tflops_per_s"])


# --------------------------------------------------------------- training


def model_spec(args, name: str) -> str:
  return MODELS[name] + (":tiny" if args.quick else "")


def model_config(args, name: str, dtype: str, attention: str = "matmul"):
  """(spec, config) of network `name`: its config file with the run's
  --config overrides, then the row's compute dtype and attention."""
  spec = model_spec(args, name)
  config = tt.load_config(spec, args.config_overrides)
  config.model.dtype = dtype
  if attention != "matmul":
    with config.unlocked():  # A key the config's kwargs may lack.
      config.model.kwargs.attention = attention
  return spec, config


def measure_train(suite: Suite, peaks, name: str, dtype: str,
                  ks: Sequence[int], attention: str = "matmul"
                  ) -> List[Dict[str, Any]]:
  """One row per steps-per-dispatch k of `bench_config`."""
  args = suite.args
  spec, config = model_config(args, name, dtype, attention)
  ns = argparse.Namespace(batch=args.batch, peak_n=args.side_matmul_n,
                          steps_per_dispatch=",".join(map(str, ks)),
                          warmup=1, repeats=args.repeats)
  res = tt.bench_config(spec, ns, config, suite.init_fn(name))
  rows = []
  for r in res["runs"]:
    rows.append(dict(
        model=name, config=spec, num_params=res["num_params"],
        batch=res["batch"], dtype=dtype, attention=attention,
        steps_per_dispatch=r["steps_per_dispatch"], compile_s=r["compile_s"],
        step_ms=1e3 * r["step_s"], images_per_s=r["images_per_s"],
        flops_per_step=r.get("flops_per_step"),
        flops_source=r.get("flops_source"),
        **efficiency(r.get("flops_per_step"), r["step_s"], dtype, peaks),
        memory=r["memory"], xla_memory=r["xla_memory"],
        call_walls=r["call_walls"]))
  return rows


def train_section(suite: Suite, peaks) -> None:
  ks = suite.args.ks
  for name in suite.args.models:
    for dtype in suite.args.dtypes:
      keys = [f"train/{name}/{dtype}/k{k}" for k in ks]
      suite.rows("train", keys, lambda: measure_train(
          suite, peaks, name, dtype, ks))  # pylint: disable=cell-var-from-loop


def attention_section(suite: Suite, peaks) -> None:
  """The OrganAMNIST U-Net's step with each attention implementation (k =
  the largest steps per dispatch); matmul's rows come from the train
  section."""
  k = max(suite.args.ks)
  train_rows = {r["key"]: r for r in suite.result["sections"]["train"]}
  for impl in suite.args.attention:
    for dtype in suite.args.dtypes:
      key = f"attention/organamnist/{impl}/{dtype}/k{k}"
      source = train_rows.get(f"train/organamnist/{dtype}/k{k}")
      if impl == "matmul" and source is not None:
        suite.rows("attention", [key], lambda: [dict(  # pylint: disable=cell-var-from-loop
            {f: v for f, v in source.items() if f != "key"},
            from_row=source["key"])])
        continue
      skip = None
      if impl == "cudnn" and jax.default_backend() != "gpu":
        skip = f"cudnn: needs an NVIDIA GPU (JAX runs on {jax.default_backend()})"
      suite.rows("attention", [key], lambda: measure_train(  # pylint: disable=cell-var-from-loop
          suite, peaks, "organamnist", dtype, [k], impl), skip=skip)


# --------------------------------------------------------------- sampling


def measure_sampling(suite: Suite, peaks, method: str, steps: int,
                     batch: int, dtype: str) -> List[Dict[str, Any]]:
  """img/s of `make_sample_fn` (random weights), its TFLOP/s from the
  forward's FLOPs x network evaluations."""
  args = suite.args
  spec, config = model_config(args, "organamnist", dtype)
  s = config_lib.typed(config)
  model, process = config_lib.build_model(s), config_lib.build_process(s)
  shape = s.data.image_shape
  params = suite.init_fn("organamnist")().params
  apply_fn = train_lib.make_apply_fn(model)
  fwd_flops = tt.xla_flops(jax.jit(apply_fn).lower(
      params, jax.ShapeDtypeStruct((batch, *shape), jnp.float32),
      jax.ShapeDtypeStruct((batch,), jnp.float32)))
  stepper = samplers_lib.make_sampler(
      method, process, denoiser_lib.eps_denoiser(process, lambda x, t: x),
      steps=steps,
      **config_lib.sampler_options(s.sampling, method))
  grid = s.sampling.grid if s.sampling.grid not in ("", "default") else (
      stepper.grid)
  nfe = samplers_lib.nfe(stepper, samplers_lib.time_grid(process, steps,
                                                         kind=grid))
  sample_fn = trained_lib.make_sample_fn(s, apply_fn, process, method=method,
                                         steps=steps, batch_size=batch)
  key = jax.random.key(1)
  t0 = time.perf_counter()
  compiled = sample_fn.lower(params, key).compile()
  compile_s = time.perf_counter() - t0
  t = tt.timed_calls(lambda: compiled(params, key), 0, args.sample_repeats)
  flops = fwd_flops * nfe if fwd_flops else None
  return [dict(model="organamnist", config=spec, sampler=method, steps=steps,
               nfe=nfe, grid=grid, batch=batch, dtype=dtype,
               compile_s=compile_s, batch_s=t["wall"],
               images_per_s=batch / t["wall"], forward_flops=fwd_flops,
               **efficiency(flops, t["wall"], dtype, peaks),
               memory=tt.peak_memory(), walls=t["walls"])]


def sampling_section(suite: Suite, peaks) -> None:
  a = suite.args
  for dtype in a.sample_dtypes:
    for method, steps in a.samplers:
      for batch in a.sample_batches:
        key = f"sampling/organamnist/{method}{steps}/b{batch}/{dtype}"
        suite.rows("sampling", [key], lambda: measure_sampling(  # pylint: disable=cell-var-from-loop
            suite, peaks, method, steps, batch, dtype))


# ----------------------------------------------------------------- PyTorch


def torch_device() -> tuple:
  """(PyTorch's device next to JAX's, None) or (None, why not)."""
  if cp.torch is None:
    return None, "PyTorch is not importable here: " + cp.NO_TORCH
  platform_ = jax.default_backend()
  if platform_ == "gpu":
    if cp.torch.cuda.is_available():
      return "cuda", None
    return None, "PyTorch sees no CUDA device next to JAX's GPU"
  if platform_ == "cpu":
    return "cpu", None
  return None, f"PyTorch has no device next to JAX's {platform_}"


def measure_torch(args, peaks, name: str, dtype: str, mode: str, device: str
                  ) -> List[Dict[str, Any]]:
  """compare_pytorch.bench_model: (train, sample) rows, JAX and PyTorch
  alternated; FLOPs of jaxdiff's train step from the train section."""
  ns = argparse.Namespace(
      quick=args.quick, batch=args.batch, bf16=dtype == "bfloat16",
      seed=0, warmup=1, repeats=args.repeats, block=args.block,
      device=device, torch_compile=args.torch_compile_mode
      if mode == "compile" else "", config_overrides=args.config_overrides)
  cuda = device == "cuda"
  if cuda:
    cp.torch.cuda.reset_peak_memory_stats()
  rows = cp.bench_model(TORCH_MODELS[name], ns)
  train_row = args.train_flops.get((name, dtype))
  out = []
  for r in rows:
    flops = train_row if r["task"] == "train" else None
    out.append(dict(
        model=name, config=r["config"], task=r["task"], dtype=dtype,
        mode=mode, batch=r["batch"], num_params=r["num_params"],
        jax_ms=1e3 * r["jax_s"], torch_ms=1e3 * r["torch_s"],
        torch_over_jax=r["ratio"], jax_images_per_s=r["batch"] / r["jax_s"],
        torch_images_per_s=r["batch"] / r["torch_s"],
        jax_compile_s=r["jax_compile_s"],
        torch_first_call_s=r["torch_first_call_s"],
        jax=efficiency(flops, r["jax_s"], dtype, peaks),
        torch=efficiency(flops, r["torch_s"], dtype, peaks),
        torch_peak_bytes=(cp.torch.cuda.max_memory_allocated()
                          if cuda else None),
        jax_memory=tt.peak_memory(), jax_walls=r["jax_walls"],
        torch_walls=r["torch_walls"]))
  return out


def torch_section(suite: Suite, peaks) -> None:
  a = suite.args
  device, why = torch_device()
  a.train_flops = {(r["model"], r["dtype"]): r.get("flops_per_step")
                   for r in suite.result["sections"]["train"]
                   if r.get("steps_per_dispatch") == 1}
  for mode in ("eager", "compile"):  # eager everywhere first: compiling is slow
    for name in a.torch_models:
      for dtype in a.dtypes:
        keys = [f"torch/{name}/{dtype}/{mode}/{task}"
                for task in ("train", "sample")]
        skip = why
        if not skip and mode not in a.torch_modes:
          skip = (f"--torch_modes {','.join(a.torch_modes)}"
                  + (" (--quick: torch.compile's CPU build takes minutes)"
                     if a.quick else ""))
        suite.rows("torch", keys, lambda: measure_torch(  # pylint: disable=cell-var-from-loop
            a, peaks, name, dtype, mode, device), skip=skip)


# ------------------------------------------------------------------ output


def _cell(value, spec: str) -> str:
  return format(value, spec) if isinstance(value, (int, float)) else "-"


def print_table(result: Dict[str, Any]) -> None:
  """The measured rows, one line each (README-ready)."""
  d, peaks = result["device"], result.get("peaks", {})
  mm = {k: _cell(v["tflops_per_s"], ".3g")
        for k, v in peaks.get("matmul", {}).items()}
  print(f"\n{d['device_kind']} ({d['platform']}); matmul TFLOP/s {mm}; "
        f"datasheet {(peaks.get('datasheet') or {}).get('tflops')}")
  columns = dict(
      train=("model", "dtype", "attention", "steps_per_dispatch", "step_ms",
             "images_per_s", "tflops_per_s", "mfu", "pct_of_matmul",
             "compile_s"),
      torch=("model", "task", "dtype", "mode", "jax_ms", "torch_ms",
             "torch_over_jax", "torch_first_call_s", "jax_compile_s"),
      sampling=("sampler", "steps", "batch", "dtype", "images_per_s",
                "tflops_per_s", "mfu", "pct_of_matmul", "compile_s"),
      attention=("attention", "dtype", "step_ms", "images_per_s",
                 "tflops_per_s", "mfu", "compile_s"))
  for section, names in columns.items():
    rows = [r for r in result["sections"][section]
            if "skipped" not in r and "error" not in r]
    if not rows:
      continue
    print(f"\n{section}\n" + " | ".join(names))
    for r in rows:
      print(" | ".join(_cell(r.get(n), ".4g") if not isinstance(
          r.get(n), str) else r[n] for n in names))
  left = [r["key"] for rows in result["sections"].values() for r in rows
          if "skipped" in r or "error" in r]
  print(f"\nnot measured ({len(left)}): {', '.join(left) or 'none'}")


# -------------------------------------------------------------------- main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      allow_abbrev=False,
      epilog="--config.KEY=VALUE overrides (as in launch.py) apply to every "
      "config the suite builds.")
  p.add_argument("--quick", action="store_true",
                 help="the configs' :tiny variants at batch 8, sampling 4 "
                 "steps at batch 8 and 16: a CPU smoke run of about a minute")
  p.add_argument("--out", default=None, help="JSON path (default "
                 "benchmarks/results/accelerator_<platform>_<date>.json)")
  p.add_argument("--out_dir", default=None,
                 help="folder of the default file name (instead of --out)")
  p.add_argument("--max_seconds", type=float, default=0,
                 help="rows not started by then are recorded as skipped "
                 "(0: no budget)")
  p.add_argument("--resume", default=None,
                 help="a JSON of an earlier run: its measured rows are kept, "
                 "only the others run")
  p.add_argument("--sections", default=",".join(SECTIONS),
                 help=f"comma list of {', '.join(SECTIONS)}")
  p.add_argument("--models", default=",".join(MODELS),
                 help="networks of the train section")
  p.add_argument("--dtypes", default=",".join(DTYPES),
                 help="compute dtypes of the train, attention and torch rows")
  p.add_argument("--attention", default=",".join(unet_lib.ATTENTION),
                 help="attention implementations timed")
  p.add_argument("--torch_models", default=",".join(TORCH_MODELS),
                 help="networks with a PyTorch twin")
  p.add_argument("--batch", type=int, default=None,
                 help="train batch (default 128; --quick 8)")
  p.add_argument("--steps_per_dispatch", default="1,10")
  p.add_argument("--repeats", type=int, default=None,
                 help="timed calls per row (default 5; --quick 2)")
  p.add_argument("--block", type=int, default=None,
                 help="calls per framework turn in the PyTorch alternation "
                 "(default 3; --quick 1)")
  p.add_argument("--sample_batches", default=None,
                 help="default 256,1024 (--quick 8,16)")
  p.add_argument("--sample_steps", default=None,
                 help="ddpm,dpm_solver_pp steps (default 1000,20; --quick 4,4)")
  p.add_argument("--sample_dtypes", default="float32,bfloat16")
  p.add_argument("--sample_repeats", type=int, default=1,
                 help="timed sampling calls after the compilation (default "
                 "1: a 1000-step batch is seconds of work)")
  p.add_argument("--torch_modes", default="eager,compile",
                 help="eager, compile (--quick on a CPU: eager)")
  p.add_argument("--torch_compile_mode", default="default",
                 help="torch.compile mode: default, reduce-overhead, "
                 "max-autotune")
  p.add_argument("--matmul_n", type=int, default=None,
                 help="size of the peak matmuls (default 8192 on an "
                 "accelerator, 2048 on a CPU, 256 with --quick)")
  args, config_overrides = p.parse_known_args(argv)
  args.config_overrides = config_overrides
  return _resolve(p, args)


def _resolve(p: argparse.ArgumentParser, a: argparse.Namespace
             ) -> argparse.Namespace:
  """Defaults that depend on --quick and the platform; lists parsed and
  checked (p.error names a bad value)."""
  on_cpu = jax.default_backend() == "cpu"
  a.batch = a.batch or (8 if a.quick else 128)
  a.repeats = a.repeats or (2 if a.quick else 5)
  a.block = a.block or (1 if a.quick else 3)
  a.ks = [int(k) for k in a.steps_per_dispatch.split(",")]
  a.sample_batches = [int(b) for b in (
      a.sample_batches or ("8,16" if a.quick else "256,1024")).split(",")]
  steps = [int(s) for s in (a.sample_steps or (
      "4,4" if a.quick else "1000,20")).split(",")]
  a.samplers = [(m, n) for (m, _), n in zip(SAMPLERS, steps)]
  lists = dict(sample_dtypes=DTYPES, dtypes=DTYPES, sections=SECTIONS,
               models=MODELS, attention=unet_lib.ATTENTION,
               torch_models=TORCH_MODELS)
  for flag, allowed in lists.items():
    values = [v for v in getattr(a, flag).split(",") if v]
    bad = [v for v in values if v not in allowed]
    if bad:
      p.error(f"--{flag}: unknown {bad}; use some of {', '.join(allowed)}.")
    setattr(a, flag, values)
  if a.quick and on_cpu and a.torch_modes == p.get_default("torch_modes"):
    a.torch_modes = "eager"
  a.torch_modes = [m for m in a.torch_modes.split(",") if m]
  a.matmul_n = a.matmul_n or (256 if a.quick else 2048 if on_cpu else 8192)
  a.side_matmul_n = min(a.matmul_n, 1024)  # bench_config's per-config check
  if min(a.ks) < 1 or a.batch < 1:
    p.error("--batch and --steps_per_dispatch must be positive.")
  names = {*a.models, "organamnist", *a.torch_models}  # + sampling, attention
  try:  # Every config and override checked before anything is measured.
    for name in sorted(names):
      tt.load_config(model_spec(a, name), a.config_overrides)
  except (ValueError, FileNotFoundError) as e:
    p.error(str(e))
  if a.out is None:
    name = (f"accelerator_{jax.default_backend()}_"
            f"{datetime.date.today().isoformat()}"
            f"{'_quick' if a.quick else ''}.json")
    a.out = os.path.join(a.out_dir or os.path.join(ROOT, "benchmarks",
                                                   "results"), name)
  return a


def kept_rows(path: Optional[str]) -> Dict[str, Dict[str, Any]]:
  """The measured rows (no 'skipped', no 'error') of an earlier JSON."""
  if not path:
    return {}
  import json  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    old = json.load(f)
  return {r["key"]: {k: v for k, v in r.items() if k not in ("key",
                                                             "resumed")}
          for rows in old.get("sections", {}).values() for r in rows
          if "skipped" not in r and "error" not in r}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  args = parse_args(argv)
  info = device_info()
  result = dict(
      suite="benchmarks/accelerator_suite.py", quick=args.quick,
      argv=list(sys.argv[1:] if argv is None else argv),
      config_overrides=args.config_overrides,
      started=datetime.datetime.now().isoformat(timespec="seconds"),
      device=info, versions=versions(), complete=False,
      sections={s: [] for s in SECTIONS})
  suite = Suite(args, result, kept_rows(args.resume))

  print(f"accelerator suite: {info['device_kind']} ({info['platform']}, "
        f"{info['num_devices']} device(s)), writing {args.out}", flush=True)
  runners = dict(train=train_section, attention=attention_section,
                 sampling=sampling_section, torch=torch_section)
  try:
    result["peaks"] = peaks = measure_peaks(args, info)
    suite.write()
    for name in SECTIONS:
      if name in args.sections:
        runners[name](suite, peaks)
      else:
        suite.rows(name, [name], list, skip="not in --sections")
    result["complete"] = True
  except KeyboardInterrupt:
    result["interrupted"] = f"after {suite.elapsed():.0f} s"
    print("interrupted: the JSON keeps the rows that finished", flush=True)
  result["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
  result["final_memory"] = tt.peak_memory()
  suite.write()
  print_table(result)
  print(f"wrote {args.out} ({suite.elapsed():.0f} s)", flush=True)
  return result


if __name__ == "__main__":
  sys.exit(130 if main().get("interrupted") else 0)
