"""benchmarks/parameterizations.py on runs trained two steps with the
velocity parameterization on the rectified flow and with v on VP: it restores
each run with its own config, scores sampler points and writes the JSON and
plots (the embedded OrganAMNIST subset: no data files needed)."""
import json
import os
import sys

import numpy as np
import pytest

from configs import organamnist
from configs import organamnist_flow
from jaxdiff import train as train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import parameterizations  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = pytest.mark.slow


def _tiny(config):
  c = config.get_config("tiny")
  c.data.name = "organamnist_small"
  c.model.name = "cnn"
  c.model.kwargs = dict(hidden=(8, 8), kernel_size=7, last_kernel_size=3,
                        time_embeddings=16)
  c.training.num_train_steps = 2
  c.training.checkpoint_every = 2
  c.training.sample_every = 0
  c.eval.classifier_epochs = 1
  c.eval.classifier_limit = 64
  return c


def test_benchmark_scores_each_run_with_its_own_parameterization(tmp_path):
  runs = {}
  for name, config in [("flow", _tiny(organamnist_flow)),
                       ("v", _tiny(organamnist))]:
    if name == "v":
      config.model.prediction = "v"
    runs[name] = str(tmp_path / name)
    train_lib.train_and_evaluate(config, runs[name])
  out = str(tmp_path / "res.json")
  args = [a for n, w in runs.items() for a in ("--run", f"{n}={w}")]
  parameterizations.main(args + [
      "--samplers", "dpm_solver_pp,heun", "--nfe", "5", "--reference",
      "ddpm:6", "--num", "8", "--batch", "8", "--mse_images", "8",
      "--cache", str(tmp_path / "cache"), "--out", out])
  res = json.loads(open(out).read())
  assert set(res["runs"]) == {"flow", "v"}
  assert res["runs"]["flow"]["prediction"] == "velocity"
  assert res["runs"]["flow"]["sde"] == "flow"
  assert res["runs"]["v"]["prediction"] == "v"
  for run in res["runs"].values():
    assert set(run["quality"]) == {"dpm_solver_pp@5", "heun@5", "ddpm@6"}
    assert run["quality"]["heun@5"]["nfe"] == 5      # 3 grid points x 2 - 1
    assert run["quality"]["dpm_solver_pp@5"]["nfe"] == 5
    assert run["quality"]["dpm_solver_pp@5"]["grid"] == "logsnr"
    for point in run["quality"].values():
      assert np.isfinite(point["fd"]) and point["seconds_per_image"] > 0
    assert len(run["x0_mse"]) == len(res["levels"])
    assert np.all(np.isfinite(run["x0_mse"]))
  assert os.path.exists(out.replace(".json", "_fd.png"))
  assert os.path.exists(out.replace(".json", "_x0_mse.png"))
  merged = str(tmp_path / "merged.json")
  parameterizations.main(["--merge", out, "--out", merged])
  assert json.loads(open(merged).read())["runs"] == res["runs"]
  assert os.path.exists(merged.replace(".json", "_fd.png"))


def test_restore_takes_a_shipped_model_with_its_stored_config(tmp_path):
  trained = parameterizations.restore("pretrained:mnist_cond_cpu", clip=True)
  s = trained.settings
  assert s.init_from == "pretrained:mnist_cond_cpu"
  assert s.data.name == "mnist" and s.training.conditional
  assert trained.step > 0
  assert s.sampling.grid == "default" and s.sampling.clip_denoised
  with pytest.raises(SystemExit, match="pretrained:NAME"):
    parameterizations.restore(str(tmp_path))
