"""Tests for jaxdiff.viz (fast, headless)."""
import json

import numpy as np
from PIL import Image
import pytest

from jaxdiff import viz


def _rand(shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(
      np.float32)


# ----------------------------------------------------------------- to_uint8


def test_to_uint8_mapping_and_clipping():
  x = np.array([-1.0, 0.0, 1.0, -3.0, 2.5, np.nan], np.float32)
  np.testing.assert_array_equal(viz.to_uint8(x), [0, 128, 255, 0, 255, 0])
  assert viz.to_uint8(x).dtype == np.uint8
  u = np.array([[0, 7, 255]], np.uint8)
  out = viz.to_uint8(u)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, u)


# ------------------------------------------------------------------- grids


def test_make_grid_geometry_and_values():
  # 6 images of 4x4 with ncol=3, pad=2 -> 2 rows:
  # H' = 2 * (4 + 2) + 2 = 14, W' = 3 * (4 + 2) + 2 = 20.
  images = np.stack([np.full((4, 4, 1), 10 * (i + 1), np.uint8)
                     for i in range(6)])
  grid = viz.make_grid(images, ncol=3, pad=2)
  assert grid.shape == (14, 20, 1) and grid.dtype == np.uint8
  for i in range(6):
    r, c = divmod(i, 3)
    y0, x0 = 2 + 6 * r, 2 + 6 * c
    np.testing.assert_array_equal(grid[y0:y0 + 4, x0:x0 + 4], 10 * (i + 1))
  # Padding: outer border and separators are 0.
  assert np.all(grid[:2] == 0) and np.all(grid[:, :2] == 0)
  assert np.all(grid[6:8] == 0) and np.all(grid[:, 6:8] == 0)
  assert np.all(grid[-2:] == 0) and np.all(grid[:, -2:] == 0)
  assert grid[2, 2, 0] == 10 and grid[8, 14, 0] == 60 and grid[5, 19, 0] == 0


def test_make_grid_float_rgb_and_partial_row():
  images = np.ones((5, 3, 3, 3), np.float32)  # 1.0 -> 255
  grid = viz.make_grid(images, ncol=2, pad=1, pad_value=7)
  assert grid.shape == (3 * 4 + 1, 2 * 4 + 1, 3)
  assert grid[1, 1, 0] == 255 and grid[0, 0, 0] == 7
  # Last row has one image; the empty cell is padding.
  assert np.all(grid[9:12, 5:8] == 7)
  # Default ncol = ceil(sqrt(N)).
  assert viz.make_grid(images, pad=0).shape == (6, 9, 3)


@pytest.mark.parametrize("channels", [1, 3])
def test_save_grid_plain(tmp_path, channels):
  images = _rand((6, 4, 4, channels))
  path = viz.save_grid(tmp_path / "sub" / "grid.png", images, ncol=3, scale=4)
  with Image.open(path) as im:
    assert im.size == (20 * 4, 14 * 4)
    assert im.mode == ("L" if channels == 1 else "RGB")
    arr = np.asarray(im)
  grid = viz.make_grid(images, ncol=3)
  expected = np.repeat(np.repeat(grid, 4, 0), 4, 1)
  np.testing.assert_array_equal(arr.reshape(expected.shape), expected)


def test_save_grid_with_row_labels(tmp_path):
  images = _rand((6, 8, 8, 1))
  path = viz.save_grid(tmp_path / "labelled.png", images, ncol=3,
                       row_labels=["bladder", "femur-left"], title="Samples",
                       scale=4)
  with Image.open(path) as im:
    w, h = im.size
  # Grid at scale 4 is 3 * 10 + 2 = 32 -> 128 px wide, 22 -> 88 px tall;
  # the labels and title add margins.
  assert w > 128 + 40 and h > 88
  with pytest.raises(ValueError):
    viz.save_grid(tmp_path / "bad.png", images, ncol=3, row_labels=["a"])


# ------------------------------------------------------------------ strips


def test_forward_strip_dpi(tmp_path):
  frames = _rand((5, 16, 16, 1))
  path = viz.forward_strip(tmp_path / "strip.png", frames,
                           [0, 100, 250, 500, 999], title="Forward process")
  with Image.open(path) as im:
    dpi = im.info["dpi"]
    w, h = im.size
  assert dpi[0] == pytest.approx(300, abs=0.5)
  assert dpi[1] == pytest.approx(300, abs=0.5)
  assert w > 5 * 300 * 0.9 and w > h  # 1.2 in per frame at 300 dpi
  with pytest.raises(ValueError):
    viz.forward_strip(tmp_path / "bad.png", frames, [0, 1])


def test_forward_strip_rgb_float_ts(tmp_path):
  path = viz.forward_strip(tmp_path / "strip_rgb.png", _rand((3, 8, 8, 3)),
                           [0.0, 0.5, 1.0], dpi=100)
  with Image.open(path) as im:
    assert im.info["dpi"][0] == pytest.approx(100, abs=0.5)


def test_schedules_figure(tmp_path):
  t = np.arange(1000)
  betas = np.linspace(1e-4, 0.02, 1000)
  linear = np.cumprod(1 - betas)
  s = 0.008
  f = np.cos(((t + 1) / 1000 + s) / (1 + s) * np.pi / 2)**2
  cosine = f / np.cos(s / (1 + s) * np.pi / 2)**2
  path = viz.schedules_figure(tmp_path / "sched.png",
                              {"linear": (t, linear), "cosine": (t, cosine)})
  with Image.open(path) as im:
    w, h = im.size
  assert w > h > 300


def test_schedules_figure_styles_draw_each_curve_as_given(tmp_path):
  """A curve's style reaches its line: a pure red curve leaves red pixels,
  which the default colours never do."""
  t = np.linspace(0.001, 1, 200)
  curves = {"a": (t, np.exp(-5 * t)), "b": (t, np.exp(-10 * t**2))}

  def red_pixels(path):
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(np.sum((rgb[..., 0] > 240) & (rgb[..., 1] < 30) &
                      (rgb[..., 2] < 30)))

  plain = viz.schedules_figure(tmp_path / "plain.png", curves)
  styled = viz.schedules_figure(
      tmp_path / "styled.png", curves, xlabel="t = i / T",
      styles={"a": dict(color="#ff0000", lw=3.0),
              "b": dict(color="black", ls="--")})
  assert red_pixels(plain) == 0
  assert red_pixels(styled) > 500


# ----------------------------------------------------------------- reverse


@pytest.mark.parametrize("channels", [1, 3])
def test_reverse_gif_frames_and_hold(tmp_path, channels):
  k, n, final_hold, duration = 7, 4, 10, 80
  trajectory = _rand((k, n, 8, 8, channels))
  path = viz.reverse_gif(tmp_path / "rev.gif", trajectory, ncol=2,
                         duration_ms=duration, scale=3, final_hold=final_hold)
  with Image.open(path) as im:
    assert im.size == ((2 * 10 + 2) * 3, (2 * 10 + 2) * 3)
    # PIL merges identical consecutive frames, so the hold is a longer last
    # frame: K frames whose durations sum to (K + final_hold) * duration.
    assert im.n_frames == k
    durations = []
    for i in range(im.n_frames):
      im.seek(i)
      durations.append(im.info["duration"])
  assert durations[:-1] == [duration] * (k - 1)
  assert sum(durations) == (k + final_hold) * duration
  # The first frame is the grid of step 0.
  with Image.open(path) as im:
    first = np.asarray(im.convert("L" if channels == 1 else "RGB"))
  expected = np.repeat(np.repeat(viz.make_grid(trajectory[0], ncol=2), 3, 0),
                       3, 1)
  if channels == 1:
    np.testing.assert_array_equal(first, expected[..., 0])
  else:  # GIF palette quantisation is lossy for RGB.
    assert np.mean(np.abs(first.astype(int) - expected)) < 12


@pytest.mark.parametrize("writer", [viz.reverse_gif, viz.frame_strip])
def test_trajectory_writers_reject_a_batch(tmp_path, writer):
  with pytest.raises(ValueError, match="expected \\[K, N, H, W, C\\]"):
    writer(tmp_path / "bad", _rand((3, 8, 8)))


def test_frame_strip(tmp_path):
  trajectory = _rand((25, 3, 8, 8, 1))
  path = viz.frame_strip(tmp_path / "frames.png", trajectory,
                         ts=list(range(24, -1, -1)), num=10)
  with Image.open(path) as im:
    w, h = im.size
  assert w > 4 * h
  path = viz.frame_strip(tmp_path / "frames_grid.png", trajectory, num=4,
                         n_images=3)
  with Image.open(path) as im:
    assert im.size[0] > im.size[1]


# ------------------------------------------------------------- histograms


def test_noise_histograms(tmp_path):
  rng = np.random.default_rng(0)
  pairs = {f"t = {t}": (rng.normal(size=1000) * 1.1, rng.normal(size=1000))
           for t in (10, 100, 500)}
  ref = {"Gaussian": rng.normal(size=2000)}
  path = viz.noise_histograms(tmp_path / "hist.png", pairs, bins=30,
                              reference=ref)
  with Image.open(path) as im:
    w, h = im.size
  assert w > 2 * h


# ----------------------------------------------------------------- metrics


def test_read_metrics_skips_malformed(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": 1, "loss": 0.5}), "{not json", "",
           "[1, 2]", json.dumps({"step": 2, "loss": 0.4, "lr": 1e-4}),
           '{"step": 3, "loss": 0.3']  # truncated last line
  path.write_text("\n".join(lines) + "\n")
  records = viz.read_metrics(path)
  assert records == [{"step": 1, "loss": 0.5},
                     {"step": 2, "loss": 0.4, "lr": 1e-4}]


def test_loss_curves(tmp_path):
  records = [{"step": i, "loss": 1.0 / (i + 1), "lr": 1e-3}
             for i in range(0, 200, 5)]
  records.insert(3, {"step": 12, "eval": 0.2})  # no loss key
  path = viz.loss_curves(tmp_path / "loss.png", records, keys=("loss", "lr"),
                         smooth=0.6)
  with Image.open(path) as im:
    w, h = im.size
  assert w > h  # two panels side by side
  # Missing keys do not fail.
  path = viz.loss_curves(tmp_path / "empty.png", records, keys=("missing",))
  with Image.open(path) as im:
    assert im.size[0] > 0


# ------------------------------------------------------------- comparison


def test_comparison_figure(tmp_path):
  clean = _rand((8, 16, 16, 1), seed=1)
  noisy = np.clip(clean + _rand((8, 16, 16, 1), seed=2) * 0.3, -1, 1)
  columns = {"noisy": noisy, "method A": clean * 0.9, "clean": clean}
  scores = {"noisy": np.full(8, 18.3), "method A": np.full(8, 27.1)}
  path = viz.comparison_figure(tmp_path / "cmp.png", columns, scores=scores,
                               max_rows=3)
  with Image.open(path) as im:
    w, h = im.size
  # 3 columns, 3 rows of roughly square cells.
  assert 0.6 < w / h < 1.5
  # With SSIM under the PSNR: same layout.
  path = viz.comparison_figure(
      tmp_path / "cmp_ssim.png", columns, scores=scores, max_rows=3,
      ssim={"noisy": np.full(8, 0.54), "method A": np.full(8, 0.71)})
  with Image.open(path) as im:
    assert im.size == (w, h)


def test_confusion_matrix_figure(tmp_path):
  rng = np.random.default_rng(0)
  cm = rng.integers(0, 20, size=(11, 11)) + np.diag(np.full(11, 80))
  names = [f"organ {i}" for i in range(11)]
  path = viz.confusion_matrix_figure(tmp_path / "cm.png", cm, names)
  with Image.open(path) as im:
    assert min(im.size) > 300
  with pytest.raises(ValueError):
    viz.confusion_matrix_figure(tmp_path / "bad.png", cm, names[:3])


def test_curves_figure(tmp_path):
  nfe = np.array([5, 10, 20, 50, 100])
  series = {"DDIM": (nfe, 30 - 10 / nfe), "DDPM": (nfe, 28 - 20 / nfe)}
  path = viz.curves_figure(tmp_path / "a" / "b" / "curves.png", series,
                           xlabel="NFE", ylabel="PSNR [dB]", logx=True,
                           title="Quality vs NFE")
  assert path.endswith("curves.png")
  with Image.open(path) as im:
    assert im.size[0] > im.size[1] > 200


def test_histograms_figure(tmp_path):
  rng = np.random.default_rng(0)
  values = {"model": rng.normal(5.8, 1.0, 200),
            "baseline": np.append(rng.normal(7.1, 0.8, 200), np.nan)}
  path = viz.histograms_figure(tmp_path / "h" / "bpd.png", values,
                               xlabel="bits/dim", title="two samples")
  assert path.endswith("bpd.png")
  with Image.open(path) as im:
    assert im.size[0] > im.size[1] > 200
