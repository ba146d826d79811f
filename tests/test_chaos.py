"""Tests for benchmarks/chaos.py: its plan and checks, and a short chaos run
(a tiny training interrupted 4 times by SIGTERM and kill -9) that must end
equal to an uninterrupted run, bit for bit."""
from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "chaos.py"


@pytest.fixture(name="chaos", scope="module")
def fixture_chaos():
  """The benchmark module (registered: its dataclass needs it)."""
  spec = importlib.util.spec_from_file_location("chaos", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules.setdefault("chaos", module)
  spec.loader.exec_module(module)
  return module


# ------------------------------------------------------------ fast: parts


def test_plan_is_a_function_of_the_seed(chaos):
  a, b = chaos.plan(20, 3), chaos.plan(20, 3)
  assert a == b
  assert a != chaos.plan(20, 4)
  assert [i.signal for i in a[:4]] == ["SIGTERM", "SIGKILL"] * 2
  kinds = {(i.signal, i.moment) for i in a}
  assert kinds == {(s, m) for s in ("SIGTERM", "SIGKILL")
                   for m in ("training", "startup")}
  assert all(0 <= i.new_steps <= 4 and 0 <= i.fraction < 1 for i in a)


def test_launch_command_carries_the_overrides(chaos):
  cmd = chaos.launch_command("/tmp/w", 12)
  assert "--config.training.num_train_steps=12" in cmd
  assert "--config.training.checkpoint_every=2" in cmd
  config = chaos.run_config(12)
  assert config.training.num_train_steps == 12
  assert config.data.name == "organamnist_small"
  assert config.cpu_devices == 0


def test_config_and_overrides_go_to_launch_py_after_the_chaos_settings(
    chaos):
  args = chaos.parse_args(["--config", "configs/organamnist.py:tiny",
                           "--steps", "6",
                           "--config.training.checkpoint_every=3",
                           "--config.model.kwargs.ch=4"])
  assert args.config_overrides == ["--config.training.checkpoint_every=3",
                                   "--config.model.kwargs.ch=4"]
  cmd = chaos.launch_command("/tmp/w", 6, args.config, args.config_overrides)
  mine, theirs = (cmd.index(f"--config.{k}") for k in (
      "training.checkpoint_every=2", "training.checkpoint_every=3"))
  assert mine < theirs  # the user's come last: they win
  config = chaos.run_config(6, args.config, args.config_overrides)
  assert config.training.checkpoint_every == 3
  assert config.model.kwargs.ch == 4 and config.training.num_train_steps == 6
  assert chaos.target_state(config).params != chaos.target_state(
      chaos.run_config(6)).params  # the narrower U-Net's state


@pytest.mark.parametrize("argv, message", [
    (["--config.training.num_train_steps=5"], "--steps"),
    (["--config.training.checkpoint_evry=3"],
     "Unknown config key --config.training.checkpoint_evry"),
])
def test_config_errors(chaos, capsys, argv, message):
  with pytest.raises(SystemExit):
    chaos.parse_args(argv)
  assert message in capsys.readouterr().err


def test_bit_differences_sees_one_flipped_bit(chaos):
  a = {"w": np.linspace(-1, 1, 7, dtype=np.float32),
       "b": np.zeros(3, np.float32), "nan": np.full(2, np.nan, np.float32)}
  assert chaos.bit_differences(a, {k: v.copy() for k, v in a.items()}) == []
  flipped = a["w"].copy()
  flipped.view(np.uint32)[3] ^= 1  # The last mantissa bit of one value.
  assert chaos.bit_differences(a, dict(a, w=flipped)) == ["['w']"]
  # -0.0 == 0.0 as numbers, but not as bits; a dtype change is a change.
  assert chaos.bit_differences(a, dict(a, b=-a["b"])) == ["['b']"]
  assert chaos.bit_differences(a, dict(a, b=a["b"].astype(np.float64))) == [
      "['b']"]
  assert chaos.bit_differences(a, {"w": a["w"]}) == ["['b']", "['nan']"]


def test_check_metrics_finds_repeats_gaps_and_torn_lines(chaos):
  ref = [{"step": s, "loss": 1.0 / s} for s in range(1, 5)]
  assert chaos.check_metrics(ref, [], ref, 4)["passed"]
  repeated = chaos.check_metrics(ref[:3] + ref[2:], [], ref, 4)
  assert not repeated["passed"] and repeated["duplicated"] == [3]
  gap = chaos.check_metrics(ref[:2] + ref[3:], [], ref, 4)
  assert not gap["passed"] and gap["missing"] == [3]
  assert not chaos.check_metrics(ref, ['{"step": 5, "lo'], ref, 4)["passed"]
  other = [dict(r, loss=r["loss"] + 1e-7) for r in ref]
  assert not chaos.check_metrics(other, [], ref, 4)["passed"]


def test_check_exit_codes(chaos):
  def attempt(sig, rc, lines=3):
    return dict(index=0, signal=sig, signalled=True, rc=rc, hung=False,
                lines_before=lines)
  good = [attempt("SIGTERM", 0), attempt("SIGKILL", -9),
          attempt("SIGTERM", -15, lines=0)]  # -15: while importing.
  assert chaos.check_exit_codes(good)["passed"]
  for bad in (attempt("SIGTERM", -15), attempt("SIGTERM", 1),
              attempt("SIGKILL", 0), attempt("SIGTERM", 2)):
    assert not chaos.check_exit_codes(good + [bad])["passed"], bad


def test_check_resumes(chaos):
  def attempt(name, resumed, logged, stopped=None):
    return dict(log=name, resumed_from=resumed, steps_logged=logged,
                stopped_at=stopped, traceback=False)
  runs = [attempt("a", None, [1, 5], stopped=5),
          attempt("killed while importing", None, None),
          attempt("b", 5, [6, 9]), attempt("c", 8, [9, 12])]
  assert chaos.check_resumes(runs)["passed"]
  lost = [runs[0], attempt("b", 4, [5, 9])]  # Not the step SIGTERM saved.
  assert not chaos.check_resumes(lost)["passed"]
  ahead = [attempt("a", None, [1, 3]), attempt("b", 6, [7, 9])]
  assert not chaos.check_resumes(ahead)["passed"]


# --------------------------------------------------- slow: a chaos run


@pytest.mark.slow
def test_short_chaos_run_equals_uninterrupted_run(chaos, tmp_path):
  result = chaos.run(interruptions=4, seed=0, steps=12, max_new_steps=2,
                     workdir=str(tmp_path / "chaos"), echo=False)
  checks = result["checks"]
  report = "\n".join(f"{k}: {c['detail']}" for k, c in checks.items())
  assert [a["signal"] for a in result["attempts"]] == [
      "SIGTERM", "SIGKILL", "SIGTERM", "SIGKILL"], report
  for name in ("interruptions", "finished", "exit_codes", "resumes",
               "bit_equal", "checkpoints", "metrics"):
    assert checks[name]["passed"], f"{name} failed:\n{report}"
  assert checks["checkpoints"]["kept"][-1] == 12
  assert result["passed"]
