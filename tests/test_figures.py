"""Tests for jaxdiff.figures (the arrays of each figure) and `--mode viz`
(jaxdiff/modes/viz.py: which figures, their files, the skip notes).

The forward frames are checked against the closed-form marginals computed
here independently of the library, the one-step denoising column against an
oracle network, the files against their geometry; every figure is made once
from a checkpoint trained 2 steps.
"""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from configs import mnist_ddgm
from configs import mnist_ddpm
from configs import organamnist
from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import denoiser
from jaxdiff import figures
from jaxdiff import inverse
from jaxdiff import run as run_lib
from jaxdiff import settings as settings_lib
from jaxdiff import train as train_lib
from jaxdiff import trained as trained_lib
from jaxdiff import viz
from jaxdiff.modes import viz as viz_mode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_PX = 1.2 * 300  # one forward-strip frame: 1.2 in at 300 dpi


def _tiny_config() -> ml_collections.ConfigDict:
  """organamnist:tiny on the embedded subset, with the coursework CNN: the
  figures do not depend on the network, and the CNN compiles in a fraction
  of the U-Net's time."""
  c = organamnist.get_config("tiny")
  c.data.name = "organamnist_small"
  c.model.name = "cnn"
  c.model.kwargs = dict(hidden=(8, 8), kernel_size=7, last_kernel_size=3,
                        time_embeddings=16)
  c.denoise.methods = "tweedie,dps"
  c.training.num_train_steps = 2
  c.training.checkpoint_every = 2
  c.training.log_every = 1
  c.training.sample_every = 0
  return c


def _with_viz(config, **values) -> settings_lib.Settings:
  s = settings_lib.from_config(config)
  return dataclasses.replace(s, viz=dataclasses.replace(s.viz, **values))


@pytest.fixture(name="config", scope="module")
def fixture_config():
  return _tiny_config()


@pytest.fixture(name="run", scope="module")
def fixture_run(config, tmp_path_factory):
  """A workdir trained 2 steps with every figure made by the mode."""
  workdir = str(tmp_path_factory.mktemp("viz_run"))
  train_lib.train_and_evaluate(config, workdir)
  trained = trained_lib.restore(config, workdir)
  paths = viz_mode.make_figures(config, workdir, trained=trained)
  return dict(workdir=workdir, trained=trained, paths=paths)


def _image(split="train"):
  ds = data_lib.load("organamnist_small", split, limit=1)
  return ds.images[0].astype(np.float32) / 127.5 - 1.0  # [H, W, C]


def _cosine_abar(t):
  """alphabar(t) of the continuous cosine VP-SDE, alphabar(1) = 1e-4."""
  s = 0.008
  c0 = math.cos(math.pi / 2 * s / (1 + s))
  t_max = (1 + s) * 2 / math.pi * math.acos(math.sqrt(1e-4) * c0) - s
  return (np.cos(np.pi / 2 * (np.asarray(t, np.float64) * t_max + s) /
                 (1 + s)) / c0)**2


# ---------------------------------------------------------- forward process


def test_forward_frames_discrete_chain_closed_form():
  """DDPM chain: frame i is sqrt(abar_i) x0 + sqrt(1 - abar_i) eps."""
  process = config_lib.build_process(mnist_ddpm.get_config())
  ts = figures.forward_times(process, 11)
  steps = np.arange(0, 1001, 100)  # x_0, x_100, ..., x_T
  np.testing.assert_allclose(ts * 1000, steps, atol=1e-3)
  assert figures.time_labels(process, ts) == list(steps)
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
  process = config_lib.build_process(config)
  ts = figures.forward_times(process, 11)
  np.testing.assert_allclose(ts, np.arange(11) / 10, atol=1e-6)
  assert figures.time_labels(process, ts[:3]) == [0.0, 0.1, 0.2]
  x0 = _image()
  frames = figures.forward_frames(process, x0, ts, jax.random.key(2))
  # t = 0 is clean up to float32 rounding of int_beta(0) (sigma ~ 2e-4),
  # identical once quantised for display.
  np.testing.assert_allclose(frames[0], x0, atol=2e-3)
  np.testing.assert_array_equal(viz.to_uint8(frames[0]), viz.to_uint8(x0))
  abar = _cosine_abar(ts)
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


def test_process_names():
  s = settings_lib.from_config(mnist_ddpm.get_config())
  assert figures.process_name(s.diffusion) == "VP-SDE, linear, T = 1000"
  s = settings_lib.from_config(organamnist.get_config())
  assert figures.process_name(s.diffusion) == "VP-SDE, cosine"
  s = settings_lib.from_config(mnist_ddgm.get_config())
  assert figures.process_name(s.diffusion).startswith("gamma (DDGM), ")


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
  t, abar = curves["cosine, continuous"]
  np.testing.assert_allclose(abar, _cosine_abar(t), rtol=1e-3)


@pytest.mark.slow
def test_plot_schedules_standalone(tmp_path, run):
  path = figures.plot_schedules(str(tmp_path / "s" / "schedules.png"))
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


def test_grid_kind_is_the_samplers_own_for_default(config):
  """config.sampling.grid 'default': the trajectory's grid is the one
  `samplers.sample` runs, the sampler's own (heun: Karras's)."""
  process = config_lib.build_process(config)
  assert figures.grid_kind(process, "heun", "default", 8) == "karras"
  assert figures.grid_kind(process, "dpm_solver_pp", "default", 8) == "logsnr"
  assert figures.grid_kind(process, "ddpm", "default", 8) == "uniform"
  assert figures.grid_kind(process, "heun", "quadratic", 8) == "quadratic"
  assert figures.grid_kind(process, "edm", "default", 8,
                           dict(s_churn=10.0)) == "karras"


@pytest.mark.slow
def test_reverse_trajectory_and_gif(run):
  """The mode's reverse.gif is the trajectory of key fold_in(key(seed), 3):
  8 uniform steps from t = 1 to 1e-3, then t = 0, saved one by one."""
  traj, ts = figures.reverse_trajectory(
      run["trained"], jax.random.fold_in(jax.random.key(0), 3), num=16,
      frames=60)
  assert traj.shape == (9, 16, 28, 28, 1)
  expected = np.linspace(1.0, 1e-3, 8)
  np.testing.assert_allclose(ts, np.concatenate([expected, [0.0]]),
                             rtol=1e-5, atol=1e-6)
  # The first frame is the prior draw (unit variance), not an image.
  assert abs(float(np.var(traj[0])) - 1.0) < 0.15
  # One GIF frame per trajectory frame, but PIL merges identical
  # consecutive frames: count the distinct consecutive uint8 grids.
  q = viz.to_uint8(traj)
  distinct = 1 + sum(int(np.any(q[i] != q[i - 1])) for i in range(1, 9))
  path = os.path.join(run["workdir"], "figures", "reverse.gif")
  with Image.open(path) as im:
    assert im.n_frames == distinct
    assert im.size == ((4 * 30 + 2) * 4,) * 2  # 4x4 grid of 28 px, scale 4
    first = np.asarray(im.convert("L"))
  grid = np.repeat(np.repeat(viz.make_grid(q[0]), 4, 0), 4, 1)[..., 0]
  np.testing.assert_array_equal(first, grid)
  w, h = _size(run, "reverse_strip.png")
  assert w > 4 * h


@pytest.mark.slow
def test_reverse_dps_files(run):
  # organamnist:tiny denoises with 4 DPS steps: 4 frames and the final
  # denoised one, 4 images each (one 2x2 grid).
  with Image.open(os.path.join(run["workdir"], "figures",
                               "reverse_dps.gif")) as im:
    assert 2 <= im.n_frames <= 5
    assert im.size == ((2 * 30 + 2) * 4,) * 2
  w, h = _size(run, "reverse_dps_strip.png")
  assert w > 3 * h


# ----------------------------------------------------------- noise estimates


def test_hist_times():
  chain = config_lib.build_process(mnist_ddpm.get_config())
  np.testing.assert_allclose(
      figures.hist_times(chain, [1e-4, 0.1, 0.5, 1.0]) * 1000,
      [1, 100, 500, 1000], atol=1e-3)  # trained steps i >= 1
  continuous = config_lib.build_process(_tiny_config())
  np.testing.assert_allclose(figures.hist_times(continuous, [0.25]), [0.25])
  with pytest.raises(ValueError, match="hist_times"):
    figures.hist_times(continuous, [0.0, 0.5])


def test_noise_panels_mse_and_reference():
  process = config_lib.build_process(mnist_ddpm.get_config())
  true = np.ones((2, 3, 3, 1), np.float32)
  pairs = [(true + 0.5, true), (true, true)]
  panels = figures.noise_panels(process, np.asarray([0.1, 0.5]), pairs)
  assert list(panels) == ["t = 100  (MSE 0.250)", "t = 500  (MSE 0.000)"]
  pairs = [(true, np.tile([-2.0, 2.0], 100))]  # std exactly 2
  ((name, draws),) = figures.gaussian_reference(
      pairs, jax.random.key(1)).items()
  assert name == "Gaussian, std 2.00"
  assert abs(float(np.std(draws)) - 2.0) < 0.02


@pytest.mark.slow
def test_noise_histograms_png(run):
  w, h = _size(run, "noise_histograms.png")
  assert w > 2.5 * h > 800  # three panels in a row


# ------------------------------------------------------------------ denoising


def _oracle(process, noise):
  """A stand-in for `Trained` whose network returns the true noise."""
  return types.SimpleNamespace(
      process=process, params=(),
      denoise_fn=lambda labels=None, params=None: denoiser.eps_denoiser(
          process, lambda x, t: noise))


def test_one_step_column_with_oracle_noise_recovers_clean(config):
  """y = x + 0.3 n unclipped and eps_hat = n: the one-step estimate at the
  matched time is x, and the metrics follow PSNR = 10 log10(4 / MSE)."""
  process = config_lib.build_process(config)
  key = jax.random.key(3)
  x = jnp.clip(jax.random.normal(key, (4, 12, 12, 1)) * 0.4, -0.7, 0.7)
  problem = inverse.InverseProblem(
      inverse.make_operator("denoise", (12, 12, 1)), sigma=0.3,
      noise_model="gaussian", clip=False)
  y = problem.measure(jax.random.key(5), x)
  noise = (y - x) / 0.3
  columns, t = figures.denoising_columns(
      _oracle(process, noise), problem, y, [], None, [])
  assert list(columns) == ["noisy", "Tweedie (1 step)"]
  assert math.sqrt((1 - _cosine_abar(t)) / _cosine_abar(t)) == pytest.approx(
      0.3, rel=1e-4)
  np.testing.assert_allclose(columns["Tweedie (1 step)"], x, atol=1e-4)
  scores = figures.column_metrics(columns, np.asarray(x))
  mse = np.mean((np.asarray(y) - np.asarray(x))**2, axis=(1, 2, 3))
  np.testing.assert_allclose(scores["noisy"]["psnr"], 10 * np.log10(4 / mse),
                             rtol=1e-4)
  assert np.all(scores["Tweedie (1 step)"]["psnr"] > 60)
  np.testing.assert_allclose(scores["Tweedie (1 step)"]["ssim"], 1.0,
                             atol=1e-4)


@pytest.mark.slow
def test_denoise_comparison_png(run):
  w, h = _size(run, "denoise_comparison.png")
  # 6 rows of noisy / Tweedie / dps / clean cells of ~1.6 x 1.85 in at
  # 150 dpi.
  assert abs(w - 4 * 1.6 * 150) < 0.2 * 4 * 1.6 * 150
  assert h > 6 * 1.6 * 150


# ----------------------------------------------------------------------- mode


def _size(run, name):
  with Image.open(os.path.join(run["workdir"], "figures", name)) as im:
    return im.size


def test_viz_mode_in_table():
  assert run_lib.mode_fn("viz") is viz_mode.run


@pytest.mark.slow
def test_all_files_written(run):
  names = sorted(os.listdir(os.path.join(run["workdir"], "figures")))
  assert names == sorted([
      "denoise_comparison.png", "forward_strip.png", "loss.png",
      "noise_histograms.png", "reverse.gif", "reverse_strip.png",
      "reverse_dps.gif", "reverse_dps_strip.png", "samples.png",
      "schedules.png"])
  assert sorted(os.path.basename(p) for p in run["paths"]) == names


@pytest.mark.slow
@pytest.mark.parametrize("num_frames", [5, 11])
def test_forward_strip_png_dpi_and_width(config, run, num_frames):
  if num_frames == 11:  # the one the mode wrote
    path = os.path.join(run["workdir"], "figures", "forward_strip.png")
  else:
    (path,) = viz_mode.forward_strip(viz_mode.Job(
        _with_viz(config, forward_frames=5), run["workdir"] + "/n5"))
  with Image.open(path) as im:
    dpi = im.info["dpi"]
    w, h = im.size
  assert dpi[0] == pytest.approx(300, abs=0.5)
  assert dpi[1] == pytest.approx(300, abs=0.5)
  assert abs(w - num_frames * STEP_PX) < 0.05 * num_frames * STEP_PX
  assert h < 2.5 * STEP_PX


@pytest.mark.slow
def test_loss_and_samples_png(run):
  w, h = _size(run, "loss.png")
  assert w > 300 and h > 200
  w, h = _size(run, "samples.png")
  # 8 samples in a 3x3 grid of 28 px cells at scale 4, plus a title.
  assert w >= (3 * 30 + 2) * 4 and h > (3 * 30 + 2) * 4


def test_without_checkpoint_skips_with_note(config, tmp_path, capsys):
  paths = viz_mode.make_figures(config, str(tmp_path))
  out = capsys.readouterr().out
  assert sorted(os.path.basename(p) for p in paths) == [
      "forward_strip.png", "schedules.png"]
  for name in ("reverse", "reverse_dps", "noise_histograms", "samples",
               "denoise_comparison", "loss"):
    assert f"skipping {name}" in out
  assert "train first" in out


def test_gaussian_only_figures_skip_a_gamma_process(tmp_path):
  job = viz_mode.Job(mnist_ddgm.get_config(), str(tmp_path))
  os.makedirs(tmp_path / "checkpoints" / "2")
  for name in ("denoise_comparison", "reverse_dps"):
    assert "not Gaussian" in job.skip_reason(name)
  assert job.skip_reason("reverse") is None


def test_figures_selection_and_keys(config, tmp_path):
  s = _with_viz(config, figures="schedules")
  assert viz_mode.make_figures(s, str(tmp_path)) == [
      os.path.join(str(tmp_path), "figures", "schedules.png")]
  with pytest.raises(ValueError, match="choose from .*forward_strip"):
    viz_mode.selected(_with_viz(config, figures="schedules,bogus").viz)
  # viz.seed -1 is the config's seed; the keys fold in a salt per figure.
  job = viz_mode.Job(dataclasses.replace(s, seed=7), str(tmp_path))
  assert job.viz.seed == 7
  np.testing.assert_array_equal(
      jax.random.key_data(job.key(3)),
      jax.random.key_data(jax.random.fold_in(jax.random.key(7), 3)))


@pytest.mark.slow
def test_launch_viz_without_checkpoint(tmp_path):
  """The command line: `--mode viz` on an empty workdir makes the figures
  that need no checkpoint and notes the others."""
  out = subprocess.run(
      [sys.executable, "launch.py", "--config",
       "configs/organamnist.py:tiny", "--config.data.name=organamnist_small",
       "--config.viz.figures=forward_strip,samples", "--workdir",
       str(tmp_path), "--mode", "viz"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
  assert "skipping samples: no checkpoint" in out.stdout
  assert os.path.isfile(tmp_path / "figures" / "forward_strip.png")
  assert not os.path.exists(tmp_path / "figures" / "samples.png")
