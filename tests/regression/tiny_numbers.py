"""The numbers the tiny configs give, from fixed seeds, through `launch.py`.

    python tests/regression/tiny_numbers.py OUT.json [--data_dir DIR]

Runs train, sample, denoise (every method) and classify on the tiny configs
as a user would (subprocesses on one CPU device) and writes what they
produced: the logged losses, sample statistics, denoising metrics and the
classifier's predictions. `tests/test_regression.py` compares a fresh run
with `tests/regression/tiny_numbers.json`, recorded before the application
layer was redesigned.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import launch_helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

# (name, config, extra flags). All run on one device: results do not depend
# on the machine's core count.
RUNS = (
    ("organamnist", "configs/organamnist.py:tiny",
     ["--config.data.name=organamnist_small",
      "--config.denoise.methods=tweedie,dps,dps_matched,matched,"
      "posterior_mean"]),
    ("mnist_cond", "configs/mnist_cond.py:tiny", []),
    ("mnist_ddgm", "configs/mnist_ddgm.py:tiny", []),
)
MODES = {"organamnist": ("train", "sample", "denoise"),
         "mnist_cond": ("train", "sample", "classify"),
         "mnist_ddgm": ("train", "sample")}


def _env(data_dir):
  env = dict(os.environ)
  env.update(PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
  # The tests' compiler flags (no device count), recorded and compared alike.
  env["XLA_FLAGS"] = launch_helpers.xla_flags()
  if data_dir:
    env["JAXDIFF_DATA_DIR"] = data_dir
  return env


def _run(workdir, config, flags, mode, data_dir):
  cmd = [sys.executable, str(REPO / "launch.py"), "--config", config,
         "--workdir", str(workdir), "--mode", mode,
         "--config.cpu_devices=0", *flags]
  proc = subprocess.run(cmd, cwd=REPO, env=_env(data_dir), text=True,
                        capture_output=True, timeout=900, check=False)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def _train_numbers(workdir):
  records = [json.loads(l) for l in
             open(workdir / "metrics.jsonl", encoding="utf-8") if l.strip()]
  return [{k: r[k] for k in ("step", "loss") if k in r}
          for r in records if "loss" in r]


def _sample_numbers(workdir):
  (npz,) = sorted(workdir.glob("samples_*.npz"))
  images = np.load(npz)["images"].astype(np.float64)
  return {"file": npz.name, "mean": float(images.mean()),
          "std": float(images.std()),
          "first": images.reshape(len(images), -1)[:, :16].tolist()}


def _denoise_numbers(workdir):
  metrics = json.load(open(workdir / "denoise" / "metrics.json",
                           encoding="utf-8"))
  return {method: {k: result[k] for k in ("psnr", "ssim")}
          for method, result in metrics["results"].items()}


def _classify_numbers(workdir):
  path = workdir / "classify" / "classify.json"
  result = json.load(open(path, encoding="utf-8"))
  return {"accuracy": result["accuracy"],
          "confusion_matrix": result["confusion_matrix"],
          "timing_accuracy": [r["accuracy"] for r in result["timing"]],
          # One noise level; the Tweedie and noisy PSNRs (the Gaussian
          # filter's are classical and checked in test_classifier.py).
          "denoise": {k: v for k, v in result["denoise"][0].items()
                      if k in ("psnr_label", "psnr_noisy", "psnr_null", "t")}}


def collect_one(name, data_dir=None):
  """{mode: numbers} of the run `name` of RUNS."""
  (config, flags), = [(c, f) for n, c, f in RUNS if n == name]
  numbers = {}
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp) / name
    for mode in MODES[name]:
      _run(workdir, config, flags, mode, data_dir)
      numbers[mode] = globals()[f"_{mode}_numbers"](workdir)
  return numbers


def collect(data_dir=None):
  return {name: collect_one(name, data_dir) for name, _, _ in RUNS}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("out")
  parser.add_argument("--data_dir", default=os.environ.get(
      "JAXDIFF_TEST_DATA_DIR", str(REPO.parent / "shared" / "data")))
  args = parser.parse_args()
  numbers = collect(args.data_dir)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(numbers, f, indent=1)


if __name__ == "__main__":
  main()
