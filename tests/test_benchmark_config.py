"""The benchmarks' `--config path.py[:variant]` and `--config.key=value`
arguments: `jaxdiff.config.parse_config_args` (launch.py's parser,
ml_collections' config_flags) and the scripts that take one config
(sampler_speed.py) or several (train_throughput.py). compare_pytorch.py,
accelerator_suite.py and chaos.py are tested in their own files."""
import importlib.util
import json
import pathlib
import sys

import pytest

from jaxdiff import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = "configs/organamnist.py:tiny"


def _script(name):
  """A benchmark module, loaded from its file (registered, as the suite
  imports train_throughput)."""
  spec = importlib.util.spec_from_file_location(
      f"_bench_{name}", REPO / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


@pytest.fixture(name="sampler_speed", scope="module")
def fixture_sampler_speed():
  return _script("sampler_speed")


@pytest.fixture(name="train_throughput", scope="module")
def fixture_train_throughput():
  return _script("train_throughput")


# ------------------------------------------------------- parse_config_args


def test_overrides_are_parsed_as_launch_py_parses_them():
  c = config_lib.parse_config_args([
      "--config", TINY, "--config.training.batch_size", "32",
      "--config.model.kwargs.ch_mult=(1,2,2)", "--config.training.conditional",
      "--config.sampling.eta=0.5"])
  assert c.training.batch_size == 32 and c.training.conditional
  assert tuple(c.model.kwargs.ch_mult) == (1, 2, 2)
  assert c.sampling.eta == 0.5
  assert c.is_locked  # as launch.py's lock_config=True
  assert c.model.kwargs.ch == 8  # untouched keys: the :tiny variant's


def test_overrides_apply_to_the_default_and_a_relative_path_to_root(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # configs/ exists only under the repository
  c = config_lib.parse_config_args(["--noconfig.training.conditional",
                                    "--config.training.batch_size=3"],
                                   default="configs/mnist_ddpm.py:tiny",
                                   root=str(REPO))
  assert c.model.name == "cnn" and c.training.batch_size == 3
  c = config_lib.load_config_file("configs/cifar10.py:tiny", root=str(REPO),
                                  overrides=["--config.seed=7"])
  assert c.seed == 7 and c.data.name == "cifar10"
  with pytest.raises(FileNotFoundError, match="No config file"):
    config_lib.parse_config_args(["--config", TINY])


@pytest.mark.parametrize("args, message", [
    (["--config", TINY, "--config.training.batchsize=3"],
     r"Unknown config key --config.training.batchsize \(did you mean "
     "'batch_size'\\?\\)"),
    (["--config", TINY, "--config.training.batch_size=x"],
     "--config.training.batch_size=x: invalid literal for int"),
    (["--config", "configs/organamnist.py:bogus"],
     "flag --config=.*organamnist.py:bogus: ValueError: Unknown variant "
     "'bogus'"),
    (["--config.training.batch_size=3", "--config", TINY],
     "before a value for --config"),
    (["--config", TINY, "--batch", "8"], "unrecognized arguments: --batch 8"),
    (["--config.seed=1"], "No config: give --config"),
])
def test_errors_are_one_line_saying_what_is_wrong(args, message):
  with pytest.raises(ValueError, match=message) as info:
    config_lib.parse_config_args(args, root=str(REPO))
  assert "\n" not in str(info.value)


def test_load_config_file_takes_overrides_only():
  with pytest.raises(ValueError, match="pass only --config.key=value"):
    config_lib.load_config_file(TINY, root=str(REPO),
                                overrides=["--config", "configs/cifar10.py"])


# ----------------------------------------------------------- sampler_speed


def test_sampler_speed_takes_config_and_overrides(sampler_speed):
  args, config = sampler_speed.parse_args([
      "--config", TINY, "--batch", "2", "--config.model.kwargs.ch=4",
      "--config.sampling.eta=0.25", "--nfe", "5"])
  assert args.config == TINY and args.batch == 2 and args.nfe == [5]
  assert config.model.kwargs.ch == 4 and config.sampling.eta == 0.25
  assert args.config_overrides == ["--config.model.kwargs.ch=4",
                                   "--config.sampling.eta=0.25"]
  # Without --config they apply to the default (--quick: the tiny one).
  args, config = sampler_speed.parse_args(["--quick",
                                           "--config.sampling.steps=3"])
  assert args.config == sampler_speed.QUICK_CONFIG
  assert config.sampling.steps == 3 and config.model.kwargs.ch == 8


def test_sampler_speed_rejects_an_unknown_key(sampler_speed, capsys):
  with pytest.raises(SystemExit) as info:
    sampler_speed.parse_args(["--quick", "--config.sampling.etaa=0.5"])
  assert info.value.code == 2
  assert "Unknown config key --config.sampling.etaa" in capsys.readouterr().err


# -------------------------------------------------------- train_throughput


def test_train_throughput_overrides_apply_to_each_config(train_throughput):
  args, configs = train_throughput.parse_args([
      "--configs", "configs/mnist_ddpm.py,configs/cifar10.py", "--quick",
      "--config.training.ema_decay=0.5", "--config.seed=3"])
  assert [spec for spec, _ in configs] == ["configs/mnist_ddpm.py:tiny",
                                           "configs/cifar10.py:tiny"]
  for _, c in configs:
    assert c.training.ema_decay == 0.5 and c.seed == 3
  assert args.steps_per_dispatch == "1,2"
  _, [(spec, c)] = train_throughput.parse_args([
      "--config", "configs/mnist_ddpm.py:tiny",
      "--config.model.kwargs.hidden=(4,4)"])
  assert spec == "configs/mnist_ddpm.py:tiny"
  assert tuple(c.model.kwargs.hidden) == (4, 4)


@pytest.mark.parametrize("argv, message", [
    (["--config", TINY, "--configs", TINY], "not both"),
    # The CNN's key is not a U-Net's: each config is checked.
    (["--configs", "configs/mnist_ddpm.py,configs/organamnist.py", "--quick",
      "--config.model.kwargs.hidden=(4,4)"],
     "Unknown config key --config.model.kwargs.hidden"),
])
def test_train_throughput_errors(train_throughput, capsys, argv, message):
  with pytest.raises(SystemExit):
    train_throughput.parse_args(argv)
  assert message in capsys.readouterr().err


@pytest.mark.slow
def test_train_throughput_records_the_overridden_config(train_throughput,
                                                         tmp_path):
  out = tmp_path / "tt.json"
  train_throughput.main([
      "--config", "configs/mnist_ddpm.py:tiny",
      "--config.training.batch_size=4", "--config.model.kwargs.hidden=(4,4)",
      "--steps_per_dispatch", "1", "--repeats", "1", "--warmup", "0",
      "--peak_n", "32", "--out", str(out)])
  result = json.loads(out.read_text())
  assert result["config_overrides"] == ["--config.training.batch_size=4",
                                        "--config.model.kwargs.hidden=(4,4)"]
  [c] = result["configs"]
  assert c["batch"] == 4 and c["model_kwargs"]["hidden"] == [4, 4]
  assert c["runs"][0]["step_s"] > 0
