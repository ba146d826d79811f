"""benchmarks/accelerator_suite.py --quick on the CPU: one JSON with every
section measured (PyTorch's rows skipped, with the reason, when it is not
installed), TFLOP/s from XLA's cost analysis in the train rows, and the time
budget and --resume that let a device session split the run.

The full --quick matrix (3 networks x 2 dtypes x 2 steps per dispatch, 3
attention implementations, 8 sampling points) compiles about 20 programs,
minutes on a 2-core CPU; this test runs one point of each section (the CNN's
train step at 1 and 2 steps per dispatch, the tiny U-Net with XLA's
attention, two sampling points), which exercises every code path but the
loops over the matrix. A --config.key=value override (the sampling grid)
applies to every config the suite builds."""
import importlib.util
import json
import math
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "accelerator_suite.py"
SMALL = ["--quick", "--models", "cnn", "--dtypes", "float32",
         "--steps_per_dispatch", "1,2", "--attention", "xla,cudnn",
         "--sample_batches", "8", "--sample_dtypes", "bfloat16",
         "--torch_models", "cnn"]
GRID = "--config.sampling.grid=quadratic"  # organamnist.py's is uniform


@pytest.fixture(name="suite", scope="module")
def fixture_suite():
  spec = importlib.util.spec_from_file_location("accelerator_suite", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(name="run", scope="module")
def fixture_run(suite, tmp_path_factory):
  out = tmp_path_factory.mktemp("suite") / "quick.json"
  result = suite.main(SMALL + [GRID, "--out", str(out)])
  return out, result


def _number(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


def test_quick_run_fills_every_section(run):
  out, result = run
  data = json.loads(out.read_text())
  assert data["complete"] and data == json.loads(json.dumps(result))
  assert data["config_overrides"] == [GRID]
  assert data["device"]["platform"] == "cpu" and data["versions"]["jax"]
  for dtype in ("float32", "bfloat16"):
    assert data["peaks"]["matmul"][dtype]["tflops_per_s"] > 0
  assert data["peaks"]["datasheet"] is None  # a CPU: measured only
  sections = data["sections"]
  assert set(sections) == {"train", "attention", "sampling", "torch"}
  errors = [r for rows in sections.values() for r in rows if "error" in r]
  assert not errors, errors

  train = sections["train"]
  assert [r["key"] for r in train] == ["train/cnn/float32/k1",
                                       "train/cnn/float32/k2"]
  for r in train:
    assert r["tflops_per_s"] > 0 and r["pct_of_matmul"] > 0
    for key in ("step_ms", "images_per_s", "compile_s", "flops_per_step"):
      assert _number(r[key]) and r[key] > 0, (key, r)
    assert r["memory"]["bytes"] > 0

  xla, cudnn = sections["attention"]
  assert xla["attention"] == "xla" and xla["tflops_per_s"] > 0
  assert xla["model"] == "organamnist" and xla["steps_per_dispatch"] == 2
  assert "needs an NVIDIA GPU" in cudnn["skipped"]

  sampling = sections["sampling"]
  assert {(r["sampler"], r["steps"]) for r in sampling} == {
      ("ddpm", 4), ("dpm_solver_pp", 4)}
  for r in sampling:
    assert r["images_per_s"] > 0 and r["tflops_per_s"] > 0
    assert r["nfe"] >= 4 and r["dtype"] == "bfloat16" and r["batch"] == 8
    assert r["grid"] == "quadratic"  # the override

  torch_rows = sections["torch"]
  assert len(torch_rows) == 4  # cnn x fp32 x (eager, compile) x 2 tasks
  for r in torch_rows:
    if "skipped" in r:
      assert "PyTorch" in r["skipped"] or "torch_modes" in r["skipped"]
    else:
      assert r["torch_ms"] > 0 and r["jax_ms"] > 0


def test_budget_skips_rows_and_resume_keeps_measured_ones(suite, run,
                                                          tmp_path):
  first, _ = run
  out = tmp_path / "again.json"
  result = suite.main(SMALL + [
      GRID, "--out", str(out), "--sections", "train,torch", "--resume",
      str(first), "--max_seconds", "1e-6"])
  train = result["sections"]["train"]
  assert all(r["resumed"] and r["tflops_per_s"] > 0 for r in train)
  # With PyTorch the first run measured the eager rows: kept; the others
  # are skipped as in the first run (no PyTorch; --quick runs no
  # torch.compile) or for the budget.
  for r in result["sections"]["torch"]:
    assert r.get("resumed") or any(
        why in r["skipped"] for why in ("budget", "PyTorch", "torch_modes")), r
  assert result["sections"]["sampling"] == [
      dict(key="sampling", skipped="not in --sections")]
  assert json.loads(out.read_text())["complete"]


def test_config_overrides_reach_every_config_and_are_checked(suite, capsys):
  args = suite.parse_args(["--quick", "--config.training.ema_decay=0.5"])
  for name in suite.MODELS:
    spec, config = suite.model_config(args, name, "bfloat16", "xla")
    assert spec == suite.MODELS[name] + ":tiny"
    assert config.training.ema_decay == 0.5  # the override
    assert config.model.dtype == "bfloat16"  # the row's own, after it
  for argv, message in [
      (["--config.model.kwargs.hidden=(4,4)"],  # the CNN's key only
       "Unknown config key --config.model.kwargs.hidden"),
      (["--config", "configs/cifar10.py"], "pass only --config.key")]:
    with pytest.raises(SystemExit):
      suite.parse_args(["--quick", *argv])
    assert message in capsys.readouterr().err
