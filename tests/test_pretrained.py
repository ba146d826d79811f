"""jaxdiff.pretrained: export/read round trip, SHA-256 check, config.init_from
in the modes (trained.restore) and in training (the fresh state)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import pretrained
from jaxdiff import run as run_lib
from jaxdiff import trained as trained_lib
from jaxdiff.train import loop
from jaxdiff.train import state as state_lib

TINY = "configs/organamnist.py:tiny"


def _tiny():
  return config_lib.load_config_file(TINY)


def _params(config, seed=3):
  s = config_lib.typed(config)
  model = config_lib.build_model(s)
  return state_lib.init_state(model, state_lib.make_optimizer(s.training),
                              jax.random.key(seed), s.data.image_shape).params


@pytest.fixture
def shipped(tmp_path, monkeypatch):
  """A tiny model exported and registered as 'tiny_test' in tmp_path."""
  config = _tiny()
  params = _params(config)
  monkeypatch.setattr(pretrained, "ASSET_DIR", str(tmp_path))
  digest = pretrained.export(config, params, str(tmp_path / "tiny_test.npz"),
                             meta=dict(step=7))
  monkeypatch.setitem(pretrained.MODELS, "tiny_test",
                      pretrained.Entry(digest, TINY, "a test model"))
  return config, params, tmp_path / "tiny_test.npz"


def _max_diff(a, b):
  fa = traverse_util.flatten_dict(a, sep="/")
  fb = traverse_util.flatten_dict(b, sep="/")
  assert set(fa) == set(fb)
  return max(float(jnp.max(jnp.abs(fa[k] - fb[k]))) for k in fa)


def test_round_trip_float16_and_config(shipped):
  config, params, _ = shipped
  model, loaded, loaded_config = pretrained.load("tiny_test")
  # float16 keeps 11 significant bits: relative error <= 2^-11.
  flat = traverse_util.flatten_dict(params, sep="/")
  scale = max(float(jnp.max(jnp.abs(v))) for v in flat.values())
  assert 0 < _max_diff(params, loaded) <= scale * 2.0 ** -11
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(loaded))
  assert config_lib.to_json(loaded_config) == config_lib.to_json(config)
  x = jnp.zeros((2, 28, 28, 1))
  out = model.apply({"params": loaded}, x, jnp.full((2,), 0.5))
  assert out.shape == x.shape


def test_float32_export_is_exact(tmp_path):
  config = _tiny()
  params = _params(config)
  path = str(tmp_path / "m.npz")
  pretrained.export(config, params, path, dtype="float32")
  loaded, _, _ = pretrained.read(path)
  assert _max_diff(params, loaded) == 0.0


def test_altered_file_fails_its_sha256(shipped):
  _, _, path = shipped
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(ckpt_lib.CheckpointError, match="SHA-256"):
    pretrained.load("tiny_test")
  os.remove(path)
  with pytest.raises(ckpt_lib.CheckpointError, match="missing"):
    pretrained.load("tiny_test")


def test_unknown_names_and_specs():
  with pytest.raises(ValueError, match="Unknown pretrained model"):
    pretrained.entry("no_such_model")
  with pytest.raises(ValueError, match="pretrained:NAME"):
    pretrained.parse("organamnist_cpu")
  assert pretrained.parse("") is None
  assert pretrained.parse("pretrained:abc") == "abc"


def test_restore_uses_the_shipped_weights(shipped):
  config, params, _ = shipped
  config.init_from = "pretrained:tiny_test"
  t = trained_lib.restore(config, "/nonexistent/workdir")
  assert t.step == 7
  assert _max_diff(params, t.params) < 1e-3
  eps, x0 = t.denoise(jnp.zeros((2, 28, 28, 1)), 0.5)
  assert eps.shape == x0.shape == (2, 28, 28, 1)


def test_another_network_is_refused_naming_the_key(shipped):
  config, _, _ = shipped
  config.init_from = "pretrained:tiny_test"
  config.model.prediction = "v"
  with pytest.raises(ValueError, match="model.prediction.*configs/organamnist"):
    trained_lib.restore(config, "")
  config.model.prediction = "eps"
  config.model.kwargs.ch = 16
  with pytest.raises(ValueError, match="model.kwargs"):
    trained_lib.restore(config, "")


def test_modes_write_into_a_new_workdir(shipped, tmp_path):
  config, _, _ = shipped
  config.init_from = "pretrained:tiny_test"
  out = tmp_path / "new" / "run"
  run_lib.check_workdir(config, str(out), "sample")
  assert out.is_dir()


def test_training_starts_from_the_shipped_weights(shipped):
  config, params, _ = shipped
  config.init_from = "pretrained:tiny_test"
  s = config_lib.typed(config)
  model = config_lib.build_model(s)
  tx = state_lib.make_optimizer(s.training)
  mesh = state_lib.make_mesh(jax.devices()[:1])
  replicated = NamedSharding(mesh, P())
  target = state_lib.abstract_state(model, tx, s.data.image_shape, replicated)
  state = loop._init_fn(s, model, tx, target, replicated)()
  assert _max_diff(params, state.params) < 1e-3
  assert _max_diff(state.params, state.ema_params) == 0.0
  assert int(state.step) == 0


def test_from_json_restores_every_key():
  config = _tiny()
  config.model.prediction = "v"
  again = config_lib.from_json(config_lib.to_json(config))
  assert config_lib.to_json(again) == config_lib.to_json(config)
  assert config_lib.typed(again).model.kwargs == \
      config_lib.typed(config).model.kwargs


def test_from_json_reads_keys_older_versions_wrote():
  old = config_lib.from_json({"classify": {"denoise_sigma": 0.3}})
  assert old.classify.denoise_sigmas == "0.3"
  assert "denoise_sigma" not in old.classify
  assert config_lib.from_json({"classify": {"denoise_sigma": 0.0}}
                              ).classify.denoise_sigmas == ""
  assert config_lib.typed(old).classify.denoise_sigma_list == [0.3]


def test_demo_mode_writes_its_pictures_and_numbers(shipped, tmp_path):
  config, _, _ = shipped
  config.init_from = "pretrained:tiny_test"
  config.data.name = "organamnist_small"
  config.data.limit = 0
  config.denoise.num_images = 3
  config.denoise.num_posterior = 2
  config.sampling.num_samples = 4
  config.sampling.batch_size = 4
  config.training.num_train_steps = 2
  config.training.checkpoint_every = 1
  from jaxdiff.modes import demo  # pylint: disable=g-import-not-at-top
  out = tmp_path / "demo"
  run_lib.check_workdir(config, str(out), "demo")
  summary = demo.run(config, str(out))
  for name in ("denoise.png", "denoise.json", "samples.png",
               "train/loss.png", "train/metrics.jsonl"):
    assert (out / name).is_file(), name
  assert set(summary) == {"noisy", "Tweedie (1 step)", "one sample",
                          "mean of 2"}
  # The noisy column scores the protocol's sigma = 0.3 (about 17 dB).
  assert 15.0 < summary["noisy"]["psnr"] < 19.0
  steps = [json.loads(l)["step"] for l in
           (out / "train/metrics.jsonl").read_text().splitlines()]
  assert max(steps) == 2
  # TensorBoard: both pictures and the PSNR of each column.
  from test_tensorboard import images, read_events, scalars  # pylint: disable=g-import-not-at-top
  events = read_events(out / "tensorboard" / "demo")
  assert set(images(events)) == {"denoise", "samples"}
  assert list(scalars(events)["psnr/noisy"].values()) == pytest.approx(
      [summary["noisy"]["psnr"]])


def test_check_psnr_of_float16_weights_is_the_float32_one(shipped):
  config, params, _ = shipped
  config.data.name = "organamnist_small"
  images = pretrained.check_images(config, num=8)
  _, loaded, _ = pretrained.load("tiny_test")
  full = pretrained.check(config, params, images)
  stored = pretrained.check(config, loaded, images)
  assert np.isfinite(full) and abs(full - stored) < 0.05


@pytest.mark.parametrize("name", sorted(pretrained.MODELS))
def test_shipped_model_reproduces_its_recorded_check(name, real_data_dir):
  """Each shipped file loads (SHA-256 checked) and reproduces the Tweedie
  PSNR `export` recorded; its float16 weights score within 0.05 dB of the
  float32 ones they were cast from."""
  e = pretrained.entry(name)
  params, config_json, meta = pretrained.read(e.path(name), e.sha256)
  config = config_lib.from_json(config_json)
  rec = meta["check_psnr"]
  images = pretrained.check_images(config, real_data_dir, rec["images"])
  assert pretrained.check(config, params, images) == pytest.approx(
      rec["stored"], abs=0.01)
  assert abs(rec["stored"] - rec["float32"]) <= 0.05
