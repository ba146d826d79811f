"""Tests for jaxdiff.train: exact resume, non-finite guard, the loop's hooks,
smoke runs."""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib
import io
import json
import math
import os
import pathlib
import re
import shutil
import signal
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image
from flax.linen import dot_product_attention as nn_dot_product_attention

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import organamnist
from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import settings as settings_lib
from jaxdiff import train
from jaxdiff import trained as trained_lib
from jaxdiff import viz
from jaxdiff.train import hooks as hooks_lib
from jaxdiff.train import loop as loop_lib
# pylint: enable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module", autouse=True)
def fixture_compile_cache():
  """JAX's persistent compilation cache: the tiny runs compile once."""
  path = os.environ.get("JAXDIFF_TEST_JIT_CACHE") or os.path.join(
      tempfile.gettempdir(), "jaxdiff_test_jit_cache")
  old = jax.config.jax_compilation_cache_dir
  if old is None:
    jax.config.update("jax_compilation_cache_dir", path)
  yield
  jax.config.update("jax_compilation_cache_dir", old)


@pytest.fixture(name="real_data_dir", scope="module")
def fixture_real_data_dir():
  """The real data sets: $JAXDIFF_TEST_DATA_DIR, else <repo>/../shared/data."""
  path = os.environ.get("JAXDIFF_TEST_DATA_DIR") or str(
      REPO.parent / "shared" / "data")
  return path if os.path.isdir(path) else None


def _tiny(**training):
  """configs/organamnist.py:tiny on the embedded subset, no sampling."""
  c = organamnist.get_config("tiny")
  c.data.name = "organamnist_small"
  c.training.sample_every = 0
  c.training.log_every = 1
  c.training.checkpoint_every = 2
  c.training.keep_checkpoints = 10
  for k, v in training.items():
    c.training[k] = v
  return c


def _train(config, workdir):
  """train_and_evaluate with its stdout captured: (state, stdout)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    state = train.train_and_evaluate(config, str(workdir))
  return state, out.getvalue()


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _np(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _assert_close(a, b, rtol=1e-6, atol=1e-7):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.fixture(scope="module", name="full_run")
def fixture_full_run(tmp_path_factory):
  """4 uninterrupted steps of the tiny OrganAMNIST config."""
  workdir = tmp_path_factory.mktemp("full")
  state, stdout = _train(_tiny(num_train_steps=4), workdir)
  return dict(workdir=str(workdir), params=_np(state.params),
              ema=_np(state.ema_params), stdout=stdout,
              metrics=_metrics(workdir))


# ------------------------------------------------------------ exact resume


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted(full_run, tmp_path):
  _train(_tiny(num_train_steps=2), tmp_path)
  with ckpt_lib.Checkpointer(tmp_path / "checkpoints") as ckpt:
    assert ckpt.all_steps() == [2]
  state, stdout = _train(_tiny(num_train_steps=4), tmp_path)
  assert "resumed from step 2" in stdout
  assert int(state.step) == 4
  _assert_close(_np(state.params), full_run["params"])
  _assert_close(_np(state.ema_params), full_run["ema"])
  # Steps 3 and 4 saw the same batches and noise: same losses.
  resumed = {r["step"]: r["loss"] for r in _metrics(tmp_path)}
  full = {r["step"]: r["loss"] for r in full_run["metrics"]}
  assert sorted(resumed) == [1, 2, 3, 4]
  for s in (3, 4):
    assert resumed[s] == pytest.approx(full[s], rel=1e-6)


def test_draw_batch_covers_each_epoch_once():
  n, b = 40, 8
  images = jnp.zeros((n, 2, 2, 1), jnp.uint8)
  labels = jnp.arange(n, dtype=jnp.int32)  # label i <=> image i
  key = jax.random.key(3)
  draw = jax.jit(lambda s: train.draw_batch(images, labels, key, s,
                                            batch_size=b, random_flip=False))
  epochs = [np.concatenate([np.asarray(draw(s)[1]) for s in range(e * 5,
                                                                   e * 5 + 5)])
            for e in range(2)]
  for idx in epochs:
    assert sorted(idx.tolist()) == list(range(n))
  assert not np.array_equal(epochs[0], epochs[1])
  np.testing.assert_array_equal(np.asarray(draw(7)[1]), epochs[1][16:24])


# --------------------------------------------------------- non-finite guard


def _step_setup(tx):
  config = _tiny()
  process = config_lib.build_process(config)
  params = {"w": jnp.full((1, 1, 1, 1), 0.5, jnp.float32)}
  state = train.TrainState(step=jnp.asarray(5, jnp.int32), params=params,
                           ema_params=params, opt_state=tx.init(params),
                           nonfinite=jnp.asarray(2, jnp.int32))
  x0 = jnp.linspace(-1.0, 1.0, 4 * 3 * 3).reshape(4, 3, 3, 1)
  return process, state, x0


def _run_step(apply_fn, tx, process, state, x0):
  step = jax.jit(lambda s: train.train_step(
      s, x0, None, jax.random.key(0), apply_fn=apply_fn, tx=tx,
      process=process, ema_decay=0.9, loss_kwargs={}))
  return step(state)


def _linear(params, x, t, y=None, *, train=False, rngs=None):
  del t, y, train, rngs
  return x * params["w"]


def _nan_net(params, x, t, y=None, *, train=False, rngs=None):
  return _linear(params, x, t) * jnp.nan


def _inf_update() -> optax.GradientTransformation:
  return optax.GradientTransformation(
      lambda p: optax.EmptyState(),
      lambda g, s, p=None: (jax.tree.map(
          lambda x: jnp.full_like(x, jnp.inf), g), s))


@pytest.mark.parametrize("apply_fn,tx", [
    (_nan_net, optax.adam(1e-3)),    # NaN loss and gradients
    (_linear, _inf_update()),        # finite loss, infinite parameters
], ids=["nan_loss", "inf_update"])
def test_nonfinite_step_is_skipped(apply_fn, tx):
  process, state, x0 = _step_setup(tx)
  new, metrics = _run_step(apply_fn, tx, process, state, x0)
  _assert_close(_np(new.params), _np(state.params), rtol=0, atol=0)
  _assert_close(_np(new.ema_params), _np(state.ema_params), rtol=0, atol=0)
  _assert_close(_np(new.opt_state), _np(state.opt_state), rtol=0, atol=0)
  assert int(new.step) == 6 and int(new.nonfinite) == 3
  assert float(metrics["skipped"]) == 1.0


def test_finite_step_updates_and_resets_count():
  tx = optax.sgd(0.1)
  process, state, x0 = _step_setup(tx)
  new, metrics = _run_step(_linear, tx, process, state, x0)
  assert int(new.nonfinite) == 0 and float(metrics["skipped"]) == 0.0
  # SGD: w' = w - lr * dloss/dw. At step 5 the EMA's warm-up decay is
  # min(0.9, 6 / 15) = 0.4: the EMA moves 60% of the way.
  w, w_new = float(state.params["w"][0, 0, 0, 0]), float(
      new.params["w"][0, 0, 0, 0])
  assert w_new != w
  assert float(new.ema_params["w"][0, 0, 0, 0]) == pytest.approx(
      0.4 * w + 0.6 * w_new, rel=1e-6)


def test_ema_decay_warms_up_to_its_target():
  steps = jnp.arange(0, 20000)
  decay = train.ema_decay_at(steps, 0.999)
  assert float(decay[0]) == pytest.approx(0.1)
  assert float(decay[-1]) == pytest.approx(0.999)
  assert bool(jnp.all(jnp.diff(decay) >= 0))
  # The initialisation's weight in the average after 800 steps: the
  # product of the decays, under 1% (0.999^800 = 0.45 without warm-up).
  assert float(jnp.prod(decay[:800])) < 1e-2


@pytest.mark.slow
def test_nonfinite_run_stops_and_keeps_last_good_checkpoint(full_run,
                                                             tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(full_run["workdir"], workdir)
  config = _tiny(num_train_steps=20, max_nonfinite=3, checkpoint_every=1,
                 lambda_freq=float("nan"), resume_with_changes=True)
  with pytest.raises(train.TrainingError) as e:
    _train(config, workdir)
  msg = str(e.value)
  assert "3 non-finite (NaN/Inf) steps in a row before step 7" in msg
  assert "last good checkpoint is step 4" in msg
  assert "config.training.lr" in msg
  with ckpt_lib.Checkpointer(workdir / "checkpoints") as ckpt:
    assert ckpt.latest_step() == 4
  restored = trained_lib.restore(_tiny(), str(workdir), use_ema=False)
  assert restored.step == 4
  _assert_close(_np(restored.params), full_run["params"], rtol=0, atol=0)
  skipped = [r for r in _metrics(workdir) if r["step"] > 4]
  assert [r["step"] for r in skipped] == [5, 6]
  assert all(r["skipped"] == 1.0 and math.isnan(r["loss"]) for r in skipped)


def test_stop_flag_turns_sigint_into_a_request():
  before = signal.getsignal(signal.SIGINT)
  with loop_lib.StopFlag() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested
    with pytest.raises(KeyboardInterrupt):  # A second Ctrl-C interrupts.
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before


# -------------------------------------------------------- loop and hooks


class _Recorder(hooks_lib.Hook):
  """A hook that notes (step, record) of every call."""

  def __init__(self, every, *, at_end=False, needs_record=True):
    self.every, self.at_end, self.needs_record = every, at_end, needs_record
    self.calls = []

  def __call__(self, step, state, record):
    self.calls.append((step, record))


class _FakeState:
  def __init__(self, step):
    self.step = step


def _fake_dispatch(state, n):
  """n steps: the metrics are the step numbers' mean as the loss."""
  steps = np.arange(state.step + 1, state.step + n + 1)
  return _FakeState(state.step + n), dict(loss=jnp.float32(steps.mean()),
                                          nonfinite=jnp.int32(0))


class _NoStop:
  requested = False


def _reaches_multiple(step, n, every):
  """Whether the steps step-n+1..step include a multiple of `every`."""
  return bool(every) and any(m % every == 0 for m in range(step - n + 1,
                                                           step + 1))


@pytest.mark.parametrize("per_dispatch", [1, 3, 4])
def test_hooks_fire_at_their_periods(per_dispatch):
  start, total = 2, 17
  hooks = [_Recorder(4), _Recorder(3, at_end=True), _Recorder(0),
           _Recorder(5, needs_record=False)]
  state, step = loop_lib.run_loop(
      _FakeState(start), _fake_dispatch, hooks, total=total,
      per_dispatch=per_dispatch, max_nonfinite=1, stop=_NoStop(), ckpt=None)
  assert step == state.step == total
  ends = list(range(start + per_dispatch, total, per_dispatch)) + [total]
  for hook in hooks:
    want = [s for i, s in enumerate(ends)
            if _reaches_multiple(s, s - ([start] + ends)[i], hook.every)
            or (hook.at_end and s == total)]
    assert [s for s, _ in hook.calls] == want, hook.every
  # A record is the mean loss over every step since the previous record
  # (the steps' mean here), made whenever a hook due needs one.
  summarised = sorted({s for h in hooks[:2] for s, _ in h.calls})
  for prev, s in zip([start] + summarised, summarised):
    for hook in hooks[:2]:
      for got_step, record in hook.calls:
        if got_step == s:
          want = np.mean(np.arange(prev + 1, s + 1))
          assert record["loss"] == pytest.approx(want), (s, per_dispatch)
  # The hook that needs no record gets one only when another hook asked.
  for s, record in hooks[3].calls:
    assert (record is None) == (s not in summarised)


def test_loop_stops_on_request_and_raises_after_nonfinite_steps():
  hook = _Recorder(1)

  class Stop:
    requested = False

  def dispatch(state, n):
    Stop.requested = state.step + n >= 3  # A signal during step 3.
    return _fake_dispatch(state, n)

  state, step = loop_lib.run_loop(
      _FakeState(0), dispatch, [hook], total=10, per_dispatch=1,
      max_nonfinite=1, stop=Stop, ckpt=None)
  assert step == state.step == 3 and [s for s, _ in hook.calls] == [1, 2, 3]

  class Ckpt:
    directory = "/ckpts"
    latest_step = staticmethod(lambda: 2)

  def bad(state, n):
    state, metrics = _fake_dispatch(state, n)
    return state, dict(metrics, nonfinite=jnp.int32(max(state.step - 2, 0)))

  with pytest.raises(train.TrainingError, match=(
      r"2 non-finite \(NaN/Inf\) steps in a row before step 4; .* last good "
      r"checkpoint is step 2 in /ckpts")):
    loop_lib.run_loop(_FakeState(0), bad, [_Recorder(2)], total=10,
                      per_dispatch=1, max_nonfinite=2, stop=_NoStop(),
                      ckpt=Ckpt)


# ------------------------------------------------------------- logging


_LINE = re.compile(r"^jaxdiff: step (\d+)/4 \| loss ([0-9.]+) \| ([0-9.]+) "
                   r"s/step \| (\d+) img/s$", re.M)


@pytest.mark.slow
def test_step_time_log_line(full_run):
  out = full_run["stdout"]
  assert re.search(r"^jaxdiff: compiled and ran the first 1 step\(s\) in "
                   r"[0-9.]+ s\.$", out, re.M), out
  assert re.search(r"^jaxdiff: step 1/4 \| loss [0-9.]+$", out, re.M), out
  lines = _LINE.findall(out)
  assert [int(s) for s, *_ in lines] == [2, 3, 4], out
  records = {r["step"]: r for r in full_run["metrics"]}
  for s, loss, s_per_step, img_s in lines:
    rec = records[int(s)]
    assert float(loss) == pytest.approx(rec["loss"], abs=5e-5)
    assert float(s_per_step) == pytest.approx(rec["s_per_step"], abs=5e-5)
    # 16 images per step (the tiny batch).
    assert int(img_s) == pytest.approx(16 / rec["s_per_step"], abs=1)


# ------------------------------------------------------ smoke per config


def _tiny_configs():
  out = []
  for path in sorted(glob.glob(str(REPO / "configs" / "*.py"))):
    name = os.path.basename(path)[:-3]
    if name.startswith("_") or name == "base":
      continue
    module = importlib.import_module(f"configs.{name}")
    try:
      module.get_config("tiny")
    except (TypeError, ValueError):
      continue
    out.append(name)
  return out


def _grid_size(num, h, w, scale=4, pad=2):
  """viz.save_grid's documented size: ceil(sqrt(N)) columns, 2 px padding."""
  ncol = math.ceil(math.sqrt(num))
  nrow = math.ceil(num / ncol)
  return ((ncol * (w + pad) + pad) * scale, (nrow * (h + pad) + pad) * scale)


@pytest.mark.slow
@pytest.mark.parametrize("name", _tiny_configs())
def test_smoke_train_and_sample(name, tmp_path, real_data_dir, monkeypatch):
  config = importlib.import_module(f"configs.{name}").get_config("tiny")
  dc = config.data
  if real_data_dir:
    dc.data_dir = real_data_dir
  elif (dc.image_size, dc.channels) == (28, 1):
    dc.name, dc.num_classes = "organamnist_small", 11
  else:
    pytest.skip(f"no real data for {name}; set JAXDIFF_TEST_DATA_DIR")
  config.training.num_train_steps = 2
  config.training.steps_per_dispatch = 1
  config.training.log_every = 1
  config.training.sample_every = 1
  config.training.checkpoint_every = 2
  curves = []
  real_loss_curves = viz.loss_curves
  monkeypatch.setattr(viz, "loss_curves", lambda path, records, **kw: (
      curves.append(len(records)), real_loss_curves(path, records, **kw))[1])
  state, _ = _train(config, tmp_path)

  assert int(state.step) == 2
  records = _metrics(tmp_path)
  assert [r["step"] for r in records] == [1, 2]
  for r in records:  # eps-MSE of an untrained net: E|eps|^2 = 1 and more.
    assert 0.5 < r["mse"] < 10 and r["skipped"] == 0.0
  # A grid per sample time, of the size save_grid documents.
  sc = config.sampling
  for s in (1, 2):
    with Image.open(tmp_path / "samples" / f"step_{s:07d}.png") as img:
      assert img.size == _grid_size(sc.num_samples, dc.image_size,
                                    dc.image_size)
  # loss.png is redrawn at every sample time, then at the end.
  assert curves[:2] == [1, 2] and os.path.isfile(tmp_path / "loss.png")
  # The checkpoint restores to the same parameters.
  restored = trained_lib.restore(config, str(tmp_path))
  assert restored.step == 2
  _assert_close(_np(restored.params), _np(state.ema_params), rtol=0, atol=0)


def test_organamnist_unet_has_6_6m_parameters():
  config = organamnist.get_config()
  model = config_lib.build_model(config)
  s = config_lib.typed(config)
  shapes = train.abstract_state(model, train.make_optimizer(s.training),
                                s.data.image_shape)
  n = sum(math.prod(p.shape) for p in jax.tree.leaves(shapes.params))
  assert 6.2e6 <= n <= 7.0e6, n


def test_load_config_file_with_variant_and_root(tmp_path, monkeypatch):
  repo = pathlib.Path(__file__).resolve().parents[1]
  monkeypatch.chdir(tmp_path)  # the relative path only exists under repo
  c = config_lib.load_config_file("configs/organamnist.py:tiny",
                                  root=str(repo))
  assert c.training.num_train_steps == 4
  full = config_lib.load_config_file(str(repo / "configs/organamnist.py"))
  assert full.training.num_train_steps == 50_000
  with pytest.raises(FileNotFoundError, match="No config file"):
    config_lib.load_config_file("configs/organamnist.py")


def test_lr_schedule_warmup_constant_then_cosine():
  tc = settings_lib.TrainingSettings(
      lr=1e-3, warmup_steps=10, num_train_steps=110, lr_decay="cosine",
      lr_decay_start=50, lr_end_factor=0.1)
  lr = train.lr_schedule(tc)
  np.testing.assert_allclose(float(lr(0)), 0.0)
  np.testing.assert_allclose(float(lr(5)), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(lr(30)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(lr(50)), 1e-3, rtol=1e-6)
  # Half-way through the decay: lr * (alpha + (1 - alpha) / 2).
  np.testing.assert_allclose(float(lr(80)), 1e-3 * 0.55, rtol=1e-5)
  np.testing.assert_allclose(float(lr(110)), 1e-4, rtol=1e-5)
  replace = lambda **kw: train.lr_schedule(dataclasses.replace(tc, **kw))
  np.testing.assert_allclose(float(replace(lr_decay="none")(100)), 1e-3)
  with pytest.raises(ValueError, match="lr_decay"):
    replace(lr_decay="linear")
  with pytest.raises(ValueError, match="lr_decay_start"):
    replace(lr_decay_start=200)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist_ddpm", "organamnist"])
def test_bfloat16_compute_keeps_float32_params(name):
  config = importlib.import_module(f"configs.{name}").get_config("tiny")
  config.model.dtype = "bfloat16"
  model = config_lib.build_model(config)
  assert model.dtype == jnp.bfloat16
  x = jnp.ones((2, 28, 28, 1))
  t = jnp.full((2,), 0.5)
  params = model.init(jax.random.PRNGKey(0), x, t)
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  out = model.apply(params, x, t)
  assert out.dtype == jnp.float32 and out.shape == x.shape
  # The same weights in float32 give nearly the same output.
  config.model.dtype = "float32"
  ref = config_lib.build_model(config).apply(params, x, t)
  err = float(jnp.max(jnp.abs(out - ref)) / (jnp.max(jnp.abs(ref)) + 1e-6))
  assert err < 0.1, err


def test_unknown_model_dtype_is_a_clear_error():
  config = importlib.import_module("configs.mnist_ddpm").get_config("tiny")
  config.model.dtype = "float16"
  with pytest.raises(ValueError, match="Unknown config.model.dtype 'float16'"):
    config_lib.build_model(config)


@pytest.mark.slow
def test_remat_unet_has_the_same_params_and_gradients():
  config = organamnist.get_config("tiny")
  plain = config_lib.build_model(config)
  config.model.remat = True
  remat = config_lib.build_model(config)
  assert remat.remat and not plain.remat
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 28, 28, 1))
  t = jnp.array([0.3, 0.7])
  params = plain.init(jax.random.PRNGKey(0), x, t)
  assert (jax.tree.structure(remat.init(jax.random.PRNGKey(0), x, t))
          == jax.tree.structure(params))
  rngs = {"dropout": jax.random.PRNGKey(2)}

  def grads(model):
    return jax.grad(lambda p: jnp.sum(model.apply(
        p, x, t, train=True, rngs=rngs) ** 2))(params)
  for a, b in zip(jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(remat))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_remat_on_the_cnn_is_a_clear_error():
  config = importlib.import_module("configs.mnist_ddpm").get_config("tiny")
  config.model.remat = True
  with pytest.raises(ValueError, match="needs the unet"):
    config_lib.build_model(config)


def test_unet_attention_equals_flax_dot_product_attention():
  from jaxdiff.models import unet  # pylint: disable=import-outside-toplevel
  q, k, v = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 49, 4, 8))
  want = nn_dot_product_attention(q, k, v)
  got = unet.attention(q, k, v, dtype=jnp.float32, dropout_rate=0.0,
                       deterministic=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  grad = lambda f: jax.grad(lambda q: jnp.sum(jnp.sin(f(q, k, v))))(q)
  np.testing.assert_allclose(grad(unet.attention),
                             grad(nn_dot_product_attention),
                             rtol=1e-4, atol=1e-6)
