"""`--mode likelihood` end to end on tiny configs, and its one-line errors.

The end-to-end cases restore a checkpoint whose parameters are all zero
(training, even initialising, the model costs tens of seconds here): the
network outputs zero, so eps = 0 and the score vanishes. The probability-flow
ODE is then dx/dt = f(t) x, whose likelihood is known in closed form
(below), which checks the mode's dequantization and +7 bits convention end
to end.
"""
import dataclasses
import inspect
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist_ddgm
from configs import mnist_ddpm
from configs import organamnist
from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import likelihood as lk
from jaxdiff import run as run_lib
from jaxdiff import settings as settings_lib
from jaxdiff.modes import likelihood as mode


def _write_zero_checkpoint(config, workdir):
  """A checkpoint at step 2 whose every parameter is zero, in train's
  format: the network outputs F = 0, as the freshly initialised one (whose
  output layer is zero) does, without its eager initialisation (20-30 s on
  two busy cores here)."""
  # pylint: disable=g-import-not-at-top
  from jaxdiff import checkpoint
  from jaxdiff import train
  # pylint: enable=g-import-not-at-top
  s = settings_lib.from_config(config)
  shapes = train.abstract_state(config_lib.build_model(s),
                                train.make_optimizer(s.training),
                                s.data.image_shape)
  state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  ckpt.save(2, state.replace(step=jnp.asarray(2, jnp.int32)),
            config_lib.to_json(config), force=True)
  ckpt.close()


def _read(workdir):
  with open(os.path.join(workdir, "likelihood", "metrics.json")) as f:
    return json.load(f)


@pytest.mark.slow
def test_ode_mode_end_to_end(tmp_path):
  config = organamnist.get_config("tiny")  # VP, continuous cosine schedule
  config.data.name = "organamnist_small"
  workdir = str(tmp_path / "run")
  _write_zero_checkpoint(config, workdir)
  config.likelihood.num_images = 4
  config.likelihood.batch_size = 4
  run_lib.main(config, workdir, "likelihood")  # the mode, by name

  r = _read(workdir)
  assert r["method"] == "ode" and r["complete"] and r["checkpoint_step"] == 2
  assert r["num_images_done"] == r["num_images_scored"] == 4
  assert len(r["bpd"]) == 4 and np.all(np.isfinite(r["bpd"]))
  np.testing.assert_allclose(r["bpd_mean"], np.mean(r["bpd"]), rtol=1e-6)
  assert r["bpd_stderr"] is not None and r["bpd_stderr"] >= 0
  assert r["nfe_per_image_mean"] > 0 and len(r["nfe_per_batch"]) == 1
  assert r["num_failed_solves"] == 0 and r["failed_images"] == []
  assert r["compile_time_s"] > 0 and r["time_per_image_s"] > 0
  assert r["options"]["divergence"] == "hutchinson"
  assert "+ 7" in r["conventions"]["units"]
  # The baseline: the per-pixel categorical of the train split, same images.
  data = settings_lib.from_config(config).data
  train = data_lib.config_split(data, "train").images
  test = data_lib.config_split(data, "test", 4).images
  base = lk.pixel_categorical_bits_per_dim(
      lk.pixel_categorical_log_probs(train), test)
  assert r["baseline"]["train_images"] == len(train)
  np.testing.assert_allclose(r["baseline"]["bpd_mean"], base.mean())
  assert 0 < r["baseline"]["bpd_mean"] < 8
  assert r["baseline"]["fraction_model_below"] == np.mean(r["bpd"] < base)
  assert os.path.getsize(os.path.join(workdir, "likelihood",
                                      "bpd_histogram.png")) > 0
  # eps = 0: x_T = (alpha_T / alpha_eps) y, log-det D log(alpha_T/alpha_eps),
  # and x_T ~ 0.01 y, so log p_y = D (log r - 1/2 log 2 pi) up to |x_T|^2/2
  # (< 1e-4 nats/dim); bits/dim = -log p_y / (D ln 2) + 7. The default
  # tolerances (1e-5) land within 2e-3 bits of it; 1e-4 was 0.07 bits off.
  process = config_lib.build_process(settings_lib.from_config(config))
  ratio = float(process.alpha(jnp.float32(process.t_max))
                / process.alpha(jnp.float32(process.t_min)))
  want = (0.5 * math.log(2 * math.pi) - math.log(ratio)) / math.log(2) + 7
  np.testing.assert_allclose(r["bpd"], want, atol=5e-3)


@pytest.mark.slow
def test_chain_mode_end_to_end(tmp_path):
  config = mnist_ddpm.get_config("tiny")  # the T = 1000 DDPM chain
  config.data.name = "organamnist_small"  # offline, 28x28x1 like MNIST
  workdir = str(tmp_path / "run")
  _write_zero_checkpoint(config, workdir)
  config.likelihood.num_images = 5  # 2 batches of 4, the second padded
  config.likelihood.batch_size = 4
  config.likelihood.chain_terms = 4
  config.likelihood.out_dir = str(tmp_path / "out")
  result = mode.run(config, workdir)

  with open(tmp_path / "out" / "metrics.json") as f:
    r = json.load(f)
  assert r == json.loads(json.dumps(result))
  assert r["method"] == "chain" and r["complete"]
  assert len(r["bpd"]) == 5 and np.all(np.isfinite(r["bpd"]))
  assert r["nfe_per_batch"] == [5, 5] and r["num_images_done"] == 5
  assert r["bpd_mean"] > 0 and r["bpd_stderr"] is not None
  assert r["nfe_per_image_mean"] == 5  # L_0 and 4 diffusion terms
  np.testing.assert_allclose(
      r["prior_bpd_mean"] + r["diffusion_bpd_mean"] + r["decoder_bpd_mean"],
      r["bpd_mean"], rtol=1e-5)
  assert "no offset" in r["conventions"]["units"]
  assert not os.path.exists(os.path.join(workdir, "likelihood"))


def _config(module, **likelihood):
  config = module.get_config("tiny")
  config.data.name = "organamnist_small"
  for k, v in likelihood.items():
    config.likelihood[k] = v
  return config


@pytest.mark.parametrize("module, options, message", [
    (organamnist, dict(method="chain"),
     r"method='chain' needs the discrete VP chain .* set "
     r"--config\.likelihood\.method=ode"),
    (mnist_ddpm, dict(method="ode"),
     r"method='ode' needs a continuous schedule.*1000-step VPSDE.* set "
     r"--config\.likelihood\.method=chain"),
    (mnist_ddpm, dict(dequant_samples=2),
     r"config\.likelihood\.dequant_samples applies to method 'ode' only"),
    (organamnist, dict(chain_terms=4),
     r"config\.likelihood\.chain_terms applies to method 'chain' only"),
    (organamnist, dict(t_eps=1.5), r"config\.likelihood\.t_eps=1\.5 must be"),
    (organamnist, dict(divergence="trace"),
     r"config\.likelihood\.divergence='trace' must be one of hutchinson"),
    (organamnist, dict(batch_size=0), r"config\.likelihood\.batch_size must"),
    (mnist_ddgm, {}, r"--mode likelihood assumes Gaussian noise"),
])
def test_bad_combinations_are_one_line_errors(tmp_path, module, options,
                                              message):
  # Refused before any checkpoint is read: the workdir does not exist.
  with pytest.raises(ValueError, match=message) as err:
    mode.run(_config(module, **options), str(tmp_path / "none"))
  assert "\n" not in str(err.value)


def test_errors_through_main_are_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as exc:
    run_lib.main(_config(organamnist, method="chain"), str(tmp_path),
                 "likelihood")
  assert exc.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("jaxdiff: error: ")
  assert "--config.likelihood.method=ode" in err[0]


def test_settings_defaults_match_the_library():
  ls = settings_lib.LikelihoodSettings().validate()
  ode = inspect.signature(lk.ode_log_likelihood).parameters
  for name in ("divergence", "probe", "solver", "rtol", "atol", "max_steps"):
    assert getattr(ls, name) == ode[name].default, name
  assert ls.chain_variance == (
      inspect.signature(lk.chain_bound).parameters["variance"].default)
  assert set(settings_lib.default_config().likelihood) == {
      f.name for f in dataclasses.fields(ls)}
