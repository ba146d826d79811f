"""Tests for jaxdiff.figures: every figure from a checkpoint trained 2 steps.

The forward frames are checked against the closed-form marginals computed
here independently of the library; the files against their geometry.
"""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from configs import mnist_ddpm
from configs import organamnist
from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import figures
from jaxdiff import run as run_lib
from jaxdiff import train as train_lib
from jaxdiff import viz

STEP_PX = 1.2 * 300  # one forward-strip frame: 1.2 in at 300 dpi
HAVE_INVERSE = figures.inverse_module() is not None


def _tiny_config() -> ml_collections.ConfigDict:
  """organamnist:tiny on the embedded subset, with the coursework CNN: the
  figures do not depend on the network, and the CNN compiles in a fraction
  of the U-Net's time."""
  c = organamnist.get_config("tiny")
  c.data.name = "organamnist_small"
  c.model.name = "cnn"
  c.model.kwargs = dict(hidden=(8, 8), kernel_size=7, last_kernel_size=3,
                        time_embeddings=16)
  if "denoise" in c:
    c.denoise.methods = "tweedie,dps"
  c.training.num_train_steps = 2
  c.training.checkpoint_every = 2
  c.training.log_every = 1
  c.training.sample_every = 0
  return c


def _with_viz(config, **settings) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  c.viz = figures.viz_config()
  c.viz.update(settings)
  c.lock()
  return c


@pytest.fixture(name="config", scope="module")
def fixture_config():
  return _tiny_config()


@pytest.fixture(name="run", scope="module")
def fixture_run(config, tmp_path_factory):
  """A workdir trained 2 steps, its restored network and all its figures."""
  workdir = str(tmp_path_factory.mktemp("viz_run"))
  train_lib.train_and_evaluate(config, workdir)
  restored = figures.restore(config, workdir)
  # The mode, all but the reverse process; that one from a trajectory kept
  # here (sampling it again would cost another compilation).
  others = [n for n in figures.FIGURES.names() if n != "reverse"]
  figures.viz_mode(_with_viz(config, figures=",".join(others)), workdir)
  trajectory = figures.reverse_trajectory(
      config, restored, jax.random.key(0), num=16, frames=60)
  figures.reverse_process(config, workdir, restored=restored,
                          trajectory=trajectory)
  return dict(workdir=workdir, restored=restored, trajectory=trajectory)


def _image(split="train"):
  ds = data_lib.load("organamnist_small", split, limit=1)
  return ds.images[0].astype(np.float32) / 127.5 - 1.0  # [H, W, C]


# ---------------------------------------------------------- forward process


def test_forward_frames_discrete_chain_closed_form():
  """DDPM chain: frame i is sqrt(abar_i) x0 + sqrt(1 - abar_i) eps."""
  process = config_lib.build_process(mnist_ddpm.get_config())
  ts = figures.forward_times(process, 11)
  steps = np.arange(0, 1001, 100)  # x_0, x_100, ..., x_T
  np.testing.assert_allclose(ts * 1000, steps, atol=1e-3)
  x0 = _image()
  frames = figures.forward_frames(process, x0, ts, jax.random.key(1))
  assert frames.shape == (11, 28, 28, 1)
  np.testing.assert_allclose(frames[0], x0, atol=1e-6)  # t = 0 is clean.
  abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))  # abar_1..abar_T
  a = abar[steps[1:] - 1]
  eps = [(f - math.sqrt(ai) * x0) / math.sqrt(1 - ai)
         for f, ai in zip(frames[1:], a)]
  for e in eps:  # One shared standard normal draw.
    np.testing.assert_allclose(e, eps[-1], atol=2e-3)
  assert abs(float(np.mean(eps[-1]))) < 4 / 28
  assert abs(float(np.std(eps[-1])) - 1.0) < 0.1
  # abar_T = 4e-5: the last frame has the prior's unit variance.
  assert a[-1] < 5e-5
  assert abs(float(np.var(frames[-1])) - 1.0) < 0.15


def test_forward_frames_continuous_cosine_closed_form(config):
  """Cosine VP-SDE: alphabar(t) = cos^2(pi/2 (t t_max + s)/(1 + s)) / c0^2
  with t_max such that alphabar(1) = 1e-4."""
  process = config_lib.build_process(config)
  ts = figures.forward_times(process, 11)
  np.testing.assert_allclose(ts, np.arange(11) / 10, atol=1e-6)
  x0 = _image()
  frames = figures.forward_frames(process, x0, ts, jax.random.key(2))
  # t = 0 is clean up to float32 rounding of int_beta(0) (sigma ~ 2e-4),
  # identical once quantised for display.
  np.testing.assert_allclose(frames[0], x0, atol=2e-3)
  np.testing.assert_array_equal(viz.to_uint8(frames[0]), viz.to_uint8(x0))
  s = 0.008
  c0 = math.cos(math.pi / 2 * s / (1 + s))
  t_max = (1 + s) * 2 / math.pi * math.acos(math.sqrt(1e-4) * c0) - s
  tt = ts.astype(np.float64)
  abar = (np.cos(np.pi / 2 * (tt * t_max + s) / (1 + s)) / c0)**2
  assert abar[-1] == pytest.approx(1e-4, rel=1e-6)
  for f, ab in zip(frames[1:], abar[1:]):
    e = (f - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
    assert abs(float(np.mean(e))) < 4 / 28
    assert abs(float(np.std(e)) - 1.0) < 0.1
  assert abs(float(np.var(frames[-1])) - 1.0) < 0.15
  # Late frames approach the prior variance from the data's side.
  variances = np.var(frames, axis=(1, 2, 3))
  assert abs(variances[-1] - 1.0) < abs(variances[5] - 1.0)


def test_forward_times_rejects_one_frame():
  process = config_lib.build_process(mnist_ddpm.get_config())
  with pytest.raises(ValueError, match="forward_frames"):
    figures.forward_times(process, 1)


@pytest.mark.parametrize("num_frames", [5, 11])
def test_forward_strip_png_dpi_and_width(config, run, num_frames):
  if num_frames == 11:  # the one the mode wrote
    path = os.path.join(run["workdir"], "figures", "forward_strip.png")
  else:
    path = figures.forward_strip(config, run["workdir"] + "/n5",
                                 num_frames=num_frames)
  with Image.open(path) as im:
    dpi = im.info["dpi"]
    w, h = im.size
  assert dpi[0] == pytest.approx(300, abs=0.5)
  assert dpi[1] == pytest.approx(300, abs=0.5)
  assert abs(w - num_frames * STEP_PX) < 0.05 * num_frames * STEP_PX
  assert h < 2.5 * STEP_PX


# ------------------------------------------------------------------ schedules


def test_schedule_curves_closed_forms():
  curves = figures.schedule_curves(1000)
  t, abar = curves["linear, T = 1000"]
  np.testing.assert_allclose(t, np.arange(1, 1001) / 1000)
  np.testing.assert_allclose(
      abar, np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-10)
  t, abar = curves["linear, continuous"]  # int beta = 0.1 t + 9.95 t^2
  np.testing.assert_allclose(abar, np.exp(-(0.1 * t + 9.95 * t**2)),
                             rtol=1e-4)
  t, abar = curves["cosine, T = 1000"]
  f = np.cos((np.arange(1001) / 1000 + 0.008) / 1.008 * np.pi / 2)**2
  np.testing.assert_allclose(abar[:-1], (f / f[0])[1:-1], rtol=1e-8)


def test_plot_schedules_standalone(tmp_path, run):
  path = figures.plot_schedules(tmp_path / "s" / "schedules.png")
  for p in (path, os.path.join(run["workdir"], "figures", "schedules.png")):
    with Image.open(p) as im:
      w, h = im.size
    assert w > 2 * h > 600  # two panels side by side


# ----------------------------------------------------------- reverse process


def test_saved_times():
  ts = np.concatenate([np.linspace(1.0, 0.1, 10), [0.0]])
  # 9 transitions saved every 4: the 1 left over runs first, then 2 chunks.
  np.testing.assert_allclose(figures.saved_times(ts, 4),
                             [1.0, 0.5, 0.1, 0.0], atol=1e-6)
  np.testing.assert_allclose(figures.saved_times(ts[:-1], 9), [1.0, 0.1],
                             atol=1e-6)


def test_trajectory_every_frame_count():
  # 999 transitions + final denoise, ~60 frames: every 18 -> 1 + 55 + 1.
  k = figures.trajectory_every(999, 60, True)
  assert k == 18 and 1 + 999 // k + 1 == 57
  assert figures.trajectory_every(7, 60, True) == 1


def test_reverse_trajectory_shape_and_times(config, run):
  traj, ts = run["trajectory"]
  # 8 uniform steps from t = 1 to 1e-3, then t = 0: 7 transitions saved
  # one by one, plus the start and the denoised end.
  assert traj.shape == (9, 16, 28, 28, 1)
  expected = np.linspace(1.0, 1e-3, 8)
  np.testing.assert_allclose(ts, np.concatenate([expected, [0.0]]),
                             rtol=1e-5, atol=1e-6)
  # The first frame is the prior draw (unit variance), not an image.
  assert abs(float(np.var(traj[0])) - 1.0) < 0.15


def test_reverse_gif_frames(config, run):
  path = os.path.join(run["workdir"], "figures", "reverse.gif")
  traj, _ = run["trajectory"]
  # One GIF frame per trajectory frame, but PIL merges identical
  # consecutive frames: count the distinct consecutive uint8 grids.
  q = viz.to_uint8(traj)
  distinct = 1 + sum(int(np.any(q[i] != q[i - 1])) for i in range(1, 9))
  with Image.open(path) as im:
    assert im.n_frames == distinct
    assert im.size == ((4 * 30 + 2) * 4,) * 2  # 4x4 grid of 28 px, scale 4
  with Image.open(os.path.join(run["workdir"], "figures",
                               "reverse_strip.png")) as im:
    w, h = im.size
  assert w > 4 * h


# ---------------------------------------------------------- other pictures


def _size(run, name):
  with Image.open(os.path.join(run["workdir"], "figures", name)) as im:
    return im.size


def test_noise_histograms_png(run):
  w, h = _size(run, "noise_histograms.png")
  assert w > 2.5 * h > 800  # three panels in a row


def test_loss_and_samples_png(config, run):
  w, h = _size(run, "loss.png")
  assert w > 300 and h > 200
  w, h = _size(run, "samples.png")
  # 8 samples in a 3x3 grid of 28 px cells at scale 4, plus a title.
  assert w >= (3 * 30 + 2) * 4 and h > (3 * 30 + 2) * 4


def test_denoise_comparison_png(run):
  w, h = _size(run, "denoise_comparison.png")
  # 6 rows of noisy / Tweedie / (dps) / clean cells of ~1.6 x 1.85 in at
  # 150 dpi: 3 or 4 columns.
  ncol = 4 if HAVE_INVERSE else 3
  assert abs(w - ncol * 1.6 * 150) < 0.2 * ncol * 1.6 * 150
  assert h > 6 * 1.6 * 150


@pytest.mark.skipif(not HAVE_INVERSE, reason="jaxdiff.inverse not installed")
def test_reverse_dps_files(run):
  # organamnist:tiny denoises with 4 DPS steps: 4 frames and the final
  # denoised one, 4 images each (one 2x2 grid).
  with Image.open(os.path.join(run["workdir"], "figures",
                               "reverse_dps.gif")) as im:
    assert 2 <= im.n_frames <= 5
    assert im.size == ((2 * 30 + 2) * 4,) * 2
  w, h = _size(run, "reverse_dps_strip.png")
  assert w > 3 * h


def test_protocol_noise_is_per_image():
  """Image i's noise is normal(fold_in(key(seed), i)), as in the benchmark."""
  x = np.zeros((3, 4, 4, 1), np.float32)
  y = figures.protocol_noisy(x, 0.3, noise_seed=5)
  for i in range(3):
    n = jax.random.normal(jax.random.fold_in(jax.random.key(5), i),
                          (4, 4, 1))
    np.testing.assert_allclose(y[i], np.clip(0.3 * np.asarray(n), -1, 1),
                               atol=1e-6)


def test_matched_time_cosine(config):
  process = config_lib.build_process(config)
  t = figures.matched_time(process, 0.3)
  s = 0.008
  c0 = math.cos(math.pi / 2 * s / (1 + s))
  t_max = (1 + s) * 2 / math.pi * math.acos(math.sqrt(1e-4) * c0) - s
  abar = (math.cos(math.pi / 2 * (t * t_max + s) / (1 + s)) / c0)**2
  assert math.sqrt((1 - abar) / abar) == pytest.approx(0.3, rel=1e-4)


def test_matched_time_discrete_chain():
  process = config_lib.build_process(mnist_ddpm.get_config())
  t = figures.matched_time(process, 0.3)
  abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
  i = int(np.argmin(np.abs(np.sqrt((1 - abar) / abar) - 0.3))) + 1
  assert t == pytest.approx(i / 1000)


def test_tweedie_with_oracle_noise_recovers_clean(config):
  """With eps_hat = the true noise, y = x + 0.3 n gives back x exactly."""
  process = config_lib.build_process(config)
  key = jax.random.key(3)
  x = jnp.clip(jax.random.normal(key, (4, 8, 8, 1)) * 0.4, -1, 1)
  n = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
  t = figures.matched_time(process, 0.3)
  x_hat = figures.tweedie_denoise(process, lambda x_t, tb: n, x + 0.3 * n, t)
  np.testing.assert_allclose(x_hat, x, atol=1e-4)


# ----------------------------------------------------------------------- mode


def test_viz_mode_is_registered():
  assert run_lib.MODES.get("viz") is figures.viz_mode


def test_all_files_written(run):
  names = sorted(os.listdir(os.path.join(run["workdir"], "figures")))
  expected = ["denoise_comparison.png", "forward_strip.png", "loss.png",
              "noise_histograms.png", "reverse.gif", "reverse_strip.png",
              "samples.png", "schedules.png"]
  if HAVE_INVERSE:
    expected += ["reverse_dps.gif", "reverse_dps_strip.png"]
  assert names == sorted(expected)


def test_without_checkpoint_skips_with_note(config, tmp_path, capsys):
  paths = figures.make_figures(config, str(tmp_path))
  out = capsys.readouterr().out
  assert sorted(os.path.basename(p) for p in paths) == [
      "forward_strip.png", "schedules.png"]
  for name in ("reverse", "reverse_dps", "noise_histograms", "samples",
               "denoise_comparison", "loss"):
    assert f"skipping {name}" in out
  assert "train first" in out


def test_figures_selection(config, tmp_path):
  c = _with_viz(config, figures="schedules")
  assert figures.make_figures(c, str(tmp_path)) == [
      os.path.join(str(tmp_path), "figures", "schedules.png")]
  with pytest.raises(ValueError, match="choose from .*forward_strip"):
    figures.selected(_with_viz(config, figures="schedules,bogus"))
