"""Tests for benchmarks/compare_pytorch.py: the PyTorch mirrors are the same
models (parameter counts, outputs with copied weights, loss and gradients)."""
from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdiff import config as config_lib
from jaxdiff import losses
from jaxdiff import train as train_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "compare_pytorch.py"


@pytest.fixture(name="bench", scope="module")
def fixture_bench():
  """The benchmark module (skips the test without PyTorch)."""
  pytest.importorskip("torch")
  spec = importlib.util.spec_from_file_location("compare_pytorch", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _flax_params(config, seed=0):
  """The Flax model and random parameters of its shapes (no Flax init: XLA
  would compile it). Every leaf is random, so the U-Net's zero-initialised
  output layers do not make the outputs trivially equal."""
  model = config_lib.build_model(config)
  shape = config_lib.typed(config).data.image_shape
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *shape)), jnp.zeros((1,)))["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    z = rng.normal(size=leaf.shape).astype(np.float32)
    if name == "scale":
      return jnp.asarray(1.0 + 0.1 * z)
    if name == "kernel":  # about unit gain: std 1/sqrt(fan-in)
      return jnp.asarray(z / np.sqrt(np.prod(leaf.shape[:-1])))
    return jnp.asarray(0.1 * z)

  return model, jax.tree_util.tree_map_with_path(draw, shapes)


def _nchw(x):
  import torch  # pylint: disable=g-import-not-at-top
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(
      0, 3, 1, 2)))


@pytest.mark.parametrize("spec, expected", [
    ("configs/mnist_ddpm.py", 291_217),
    ("configs/organamnist.py", None),
    ("configs/organamnist.py:cpu", None),
    ("configs/mnist_ddpm.py:tiny", None),
    ("configs/organamnist.py:tiny", None),
])
def test_parameter_counts_equal(bench, spec, expected):
  config = bench.load_config(spec)
  model = config_lib.build_model(config)
  shape = config_lib.typed(config).data.image_shape
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *shape)), jnp.zeros((1,)))["params"])
  n_flax = train_lib.count_params(shapes)
  n_torch = bench.count_torch_params(bench.build_torch_model(config))
  assert n_torch == n_flax
  if expected is not None:
    assert n_flax == expected
  if spec == "configs/organamnist.py":
    assert 6.75e6 < n_flax < 6.85e6  # the 6.80M-parameter U-Net


# The full configs' topologies; the U-Net narrowed to ch=8 and 2 heads (the
# same levels, blocks, attention at 14 and 7, skips and resamplings as
# configs/organamnist.py) to keep the test fast.
NARROW_UNET = dict(ch=8, num_heads=2)


@pytest.mark.parametrize("spec, overrides", [
    ("configs/mnist_ddpm.py", {}),
    ("configs/organamnist.py", NARROW_UNET),
])
def test_forward_outputs_agree_with_copied_weights(bench, spec, overrides):
  import torch  # pylint: disable=g-import-not-at-top
  config = bench.load_config(spec)
  config.model.kwargs.update(overrides)
  model, params = _flax_params(config)
  torch_model = bench.build_torch_model(config).eval()
  bench.load_flax_params(torch_model, params)
  rng = np.random.default_rng(0)
  shape = config_lib.typed(config).data.image_shape
  x = rng.normal(size=(2, *shape)).astype(np.float32)
  t = np.array([0.1, 0.7], np.float32)
  want = jax.jit(model.apply)({"params": params}, jnp.asarray(x),
                              jnp.asarray(t))
  with torch.no_grad():
    got = torch_model(_nchw(x), torch.from_numpy(t)).numpy()
  want = np.asarray(want).transpose(0, 3, 1, 2)
  assert np.std(want) > 0.05  # not a trivially zero output
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("change, message", [
    (dict(ch=16), "does not fit"),                       # other shapes
    (dict(attn_resolutions=()), "without a torch counterpart"),  # fewer layers
])
def test_load_flax_params_rejects_another_model(bench, change, message):
  config = bench.load_config("configs/organamnist.py:tiny")
  _, params = _flax_params(config)
  for key, value in change.items():
    config.model.kwargs[key] = value
  with pytest.raises(ValueError, match=message):
    bench.load_flax_params(bench.build_torch_model(config), params)


@pytest.mark.parametrize("spec", ["configs/mnist_ddpm.py",
                                  "configs/organamnist.py"])
def test_torch_process_matches_jaxdiff(bench, spec):
  import torch  # pylint: disable=g-import-not-at-top
  config = bench.load_config(spec)
  process = config_lib.build_process(config)
  mirror = bench.TorchVP(process)
  t = np.array([0.001, 0.0015, 0.25, 0.5, 0.999, 1.0], np.float32)
  tt = torch.from_numpy(t)
  np.testing.assert_allclose(mirror.alpha(tt).numpy(),
                             np.asarray(process.alpha(jnp.asarray(t))),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mirror.sigma(tt).numpy(),
                             np.asarray(process.sigma(jnp.asarray(t))),
                             rtol=1e-5, atol=1e-6)
  times = mirror.sample_time(1000, torch.Generator().manual_seed(0)).numpy()
  assert times.min() >= (1.0 / process.num_steps if process.num_steps
                         else process.t_min)
  assert times.max() <= 1.0
  if process.num_steps:  # the DDPM chain trains on the grid i / T
    np.testing.assert_allclose(times * process.num_steps,
                               np.round(times * process.num_steps), atol=1e-3)


class _FixedDraws:
  """A jaxdiff process whose training draws (t, eps) are given."""

  def __init__(self, process, t, eps):
    self.process, self.t, self.eps = process, t, eps

  def sample_time(self, key, batch):
    del key, batch
    return self.t

  def perturb(self, key, x0, t):
    del key
    mean, std = self.process.marginal_prob(x0, t)
    return mean + std * self.eps, self.eps

  def __getattr__(self, name):
    return getattr(self.process, name)


@pytest.mark.parametrize("spec, overrides", [
    ("configs/mnist_ddpm.py:tiny", {}),
    ("configs/organamnist.py:tiny", {}),
])
def test_training_loss_and_gradient_agree(bench, spec, overrides):
  """The same (t, eps) and weights give the same loss and gradient norm
  (organamnist adds the FFT term, lambda_freq = 0.1)."""
  import torch  # pylint: disable=g-import-not-at-top
  config = bench.load_config(spec)
  config.model.kwargs.update(overrides)
  model, params = _flax_params(config)
  process = config_lib.build_process(config)
  rng = np.random.default_rng(1)
  shape = (3, *config_lib.typed(config).data.image_shape)
  x0 = rng.uniform(-1, 1, shape).astype(np.float32)
  eps = rng.normal(size=shape).astype(np.float32)
  t = np.array([0.05, 0.5, 0.95], np.float32)
  tc = config.training
  apply_fn = train_lib.make_apply_fn(model)

  def loss_fn(p):
    return losses.diffusion_loss(
        apply_fn, p, _FixedDraws(process, jnp.asarray(t), jnp.asarray(eps)),
        jnp.asarray(x0), jax.random.key(0), lambda_freq=tc.lambda_freq,
        freq_weighting=tc.freq_weighting, train=False)[0]

  want_loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  want_norm = float(optax.tree.norm(grads))

  torch_model = bench.build_torch_model(config).eval()  # dropout off
  bench.load_flax_params(torch_model, params)
  trainer = bench.TorchTrainer(torch_model, bench.TorchVP(process), tc, seed=0)
  loss = trainer.loss(_nchw(x0), t=torch.from_numpy(t), eps=_nchw(eps))
  loss.backward()
  got_norm = float(torch.nn.utils.get_total_norm(
      [p.grad for p in torch_model.parameters()]))
  np.testing.assert_allclose(loss.item(), float(want_loss), rtol=1e-4)
  np.testing.assert_allclose(got_norm, want_norm, rtol=1e-3)


def test_without_torch_prints_one_line_and_exits_2():
  code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = "
          f"[{str(SCRIPT)!r}, '--quick']; runpy.run_path({str(SCRIPT)!r}, "
          "run_name='__main__')")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, cwd=REPO, timeout=120, check=False)
  assert proc.returncode == 2
  assert "PyTorch is not installed: pip install -e '.[torch]'" in proc.stderr
  assert proc.stdout == ""


def test_alternate_runs_turns_and_leaves_out_each_first_call():
  """The timing harness needs no PyTorch: load it without the fixture."""
  spec = importlib.util.spec_from_file_location("compare_pytorch_t", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  calls = []
  out = module.alternate(lambda: calls.append("j"), lambda: calls.append("t"),
                         warmup=1, repeats=2, block=3)
  # Warm-up pair, then turns of 3 with the order flipped every repeat.
  assert "".join(calls) == "jt" + "jjjttt" + "tttjjj"
  for name in ("jax", "torch"):
    assert len(out[name]["walls"]) == 4  # 2 turns x (3 - the first)
    assert len(out[name]["first_walls"]) == 2
  single = module.alternate(lambda: None, lambda: None, warmup=0, repeats=3)
  assert len(single["jax"]["walls"]) == 3 and single["jax"]["first_walls"] == []


def test_config_overrides_apply_to_every_model(bench):
  args, configs = bench.parse_args([
      "--quick", "--models", "cnn,unet", "--config.training.lambda_freq=0.5",
      "--config.seed=4"])
  assert list(configs) == ["cnn", "unet"]
  for config in configs.values():
    assert config.training.lambda_freq == 0.5 and config.seed == 4
  assert configs["unet"].model.kwargs.ch == 8  # the :tiny variant's
  assert args.config_overrides == ["--config.training.lambda_freq=0.5",
                                   "--config.seed=4"]


@pytest.mark.parametrize("argv, message", [
    (["--quick", "--config", "configs/cifar10.py"], "pass only --config.key"),
    (["--quick", "--models", "cnn,unet", "--config.model.kwargs.hidden=(4,4)"],
     "Unknown config key --config.model.kwargs.hidden"),  # not the U-Net's
])
def test_config_errors(bench, capsys, argv, message):
  with pytest.raises(SystemExit):
    bench.parse_args(argv)
  assert message in capsys.readouterr().err


def _num_params(config):
  model = config_lib.build_model(config)
  shape = config_lib.typed(config).data.image_shape
  return train_lib.count_params(jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *shape)), jnp.zeros((1,)))["params"]))


@pytest.mark.slow
def test_both_models_are_built_from_the_overridden_config(bench):
  """A narrower CNN by an override: the JAX and PyTorch parameter counts
  (checked equal inside) are those of the overridden network."""
  narrow = ["--config.model.kwargs.hidden=(4,4)"]
  want = _num_params(bench.load_config("configs/mnist_ddpm.py:tiny", narrow))
  assert want < _num_params(bench.load_config("configs/mnist_ddpm.py:tiny"))
  result = bench.main(["--quick", "--models", "cnn", "--repeats", "1",
                       "--warmup", "0", *narrow])
  assert result["config_overrides"] == narrow
  assert {r["task"] for r in result["rows"]} == {"train", "sample"}
  for r in result["rows"]:
    assert r["num_params"] == r["num_params_torch"] == want
