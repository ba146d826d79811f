"""Figures, image grids and animations for diffusion experiments.

Headless: figures are built with `matplotlib.figure.Figure` on an Agg canvas
(no pyplot, no global backend switch, no display) and images are written with
PIL. Every writer takes numpy arrays, creates the parent directories of
`path`, writes the file and returns the path as a string.

Images are NHWC, either uint8 in [0, 255] or float in [-1, 1] (see
`to_uint8`). 1-channel images are drawn with a gray colormap; 3-channel
images as RGB. A 3-D batch [N, H, W] is read as 1-channel.
"""
from __future__ import annotations

import json
import math
import os
from typing import (Any, Dict, List, Mapping, Optional, Sequence, Tuple,
                    Union)

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from PIL import Image

PathLike = Union[str, os.PathLike]

_FONT_SIZE = 10


# ---------------------------------------------------------------- helpers


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Maps images to uint8.

  uint8 input passes through unchanged. Floating input is read as [-1, 1]
  and mapped linearly to [0, 255] (-1 -> 0, 1 -> 255) with clipping and
  rounding; NaNs map to 0. Other integer types are clipped to [0, 255].

  Args:
    images: Array of any shape, uint8 or float in [-1, 1].

  Returns:
    uint8 array of the same shape.
  """
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  if np.issubdtype(images.dtype, np.floating):
    scaled = (images.astype(np.float64) + 1.0) * 127.5
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
  if images.dtype == np.bool_:
    return images.astype(np.uint8) * 255
  return np.clip(images, 0, 255).astype(np.uint8)


def _as_batch(images: np.ndarray, name: str = "images") -> np.ndarray:
  """uint8 [N, H, W, C] with C in {1, 3, 4}, from NHWC or [N, H, W]."""
  images = to_uint8(images)
  if images.ndim == 3:
    images = images[..., None]  # [N, H, W, 1]
  if images.ndim != 4:
    raise ValueError(f"{name}: expected [N, H, W, C], got {images.shape}.")
  if images.shape[-1] not in (1, 3, 4):
    raise ValueError(
        f"{name}: expected 1, 3 or 4 channels, got {images.shape[-1]}.")
  return images


def _prepare(path: PathLike) -> str:
  """Creates the parent directory of `path`; returns it as a string."""
  path = os.fspath(path)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  return path


def _new_figure(figsize: Tuple[float, float]) -> Figure:
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig


def _save_figure(fig: Figure, path: PathLike, dpi: float = 150,
                 tight: bool = True) -> str:
  path = _prepare(path)
  kwargs = {"bbox_inches": "tight", "pad_inches": 0.05} if tight else {}
  fig.savefig(path, dpi=dpi, facecolor="white", **kwargs)
  return path


def _show(ax, image: np.ndarray) -> None:
  """Draws one uint8 [H, W, C] image on `ax` (gray colormap if C == 1)."""
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
  else:
    ax.imshow(image, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def _pil_image(image: np.ndarray) -> Image.Image:
  """PIL image from uint8 [H, W, C] (mode L, RGB or RGBA)."""
  image = np.ascontiguousarray(image)
  if image.shape[-1] == 1:
    return Image.fromarray(image[..., 0])  # mode L
  return Image.fromarray(image)  # mode RGB or RGBA


def _upscale(image: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour upscaling of [H, W, C] by an integer factor."""
  scale = int(scale)
  if scale < 1:
    raise ValueError(f"scale must be >= 1, got {scale}.")
  if scale == 1:
    return image
  return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def _fmt_t(t: Any) -> str:
  """Formats a time step: ints as ints, floats compactly."""
  if isinstance(t, (int, np.integer)):
    return str(int(t))
  t = float(t)
  if t.is_integer() and abs(t) < 1e6:
    return str(int(t))
  return f"{t:.3g}"


def _grid_shape(n: int, ncol: Optional[int]) -> Tuple[int, int]:
  if ncol is None:
    ncol = int(math.ceil(math.sqrt(n)))
  ncol = max(1, min(int(ncol), n))
  return int(math.ceil(n / ncol)), ncol


# ------------------------------------------------------------------ grids


def make_grid(images: np.ndarray, *, ncol: Optional[int] = None,
              pad: int = 2, pad_value: int = 0) -> np.ndarray:
  """Tiles a batch of images into one image.

  Images are placed row-major; `pad` pixels of `pad_value` separate the cells
  and surround the grid, so the result is
  [nrow * (H + pad) + pad, ncol * (W + pad) + pad, C]. Unused cells of the
  last row are filled with `pad_value`.

  Args:
    images: [N, H, W, C] (or [N, H, W]), uint8 or float in [-1, 1].
    ncol: Number of columns; default ceil(sqrt(N)).
    pad: Padding in pixels.
    pad_value: uint8 value of the padding.

  Returns:
    uint8 [H', W', C].
  """
  images = _as_batch(images)
  n, h, w, c = images.shape
  if n == 0:
    raise ValueError("make_grid: empty batch.")
  nrow, ncol = _grid_shape(n, ncol)
  grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c),
                 pad_value, dtype=np.uint8)  # [H', W', C]
  for i in range(n):
    r, q = divmod(i, ncol)
    y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
    grid[y0:y0 + h, x0:x0 + w] = images[i]
  return grid


def save_grid(path: PathLike, images: np.ndarray, *,
              ncol: Optional[int] = None,
              row_labels: Optional[Sequence[str]] = None,
              title: Optional[str] = None, scale: int = 4) -> str:
  """Saves a PNG grid of images.

  Without `row_labels` and `title`, the `make_grid` image upscaled by
  nearest-neighbour `scale` is written as is (exact size
  [H' * scale, W' * scale]). With them, a figure shows the grid at the same
  scale, each row labelled on the left (e.g. class names) and the title on
  top.

  Args:
    path: Output PNG path.
    images: [N, H, W, C], uint8 or float in [-1, 1].
    ncol: Number of columns; default ceil(sqrt(N)).
    row_labels: One label per grid row (ceil(N / ncol) of them).
    title: Figure title.
    scale: Integer nearest-neighbour upscaling factor.

  Returns:
    The path written.
  """
  grid = _upscale(make_grid(images, ncol=ncol), scale)  # [H', W', C]
  if row_labels is None and title is None:
    path = _prepare(path)
    _pil_image(grid).save(path, format="PNG")
    return path

  images = _as_batch(images)
  n, h, _, _ = images.shape
  nrow, _ = _grid_shape(n, ncol)
  if row_labels is not None and len(row_labels) != nrow:
    raise ValueError(
        f"save_grid: {len(row_labels)} row labels for {nrow} rows.")
  dpi = 100.0
  gh, gw = grid.shape[0] / dpi, grid.shape[1] / dpi  # inches
  # Margins in inches: labels ~0.075 in per character at 10 pt.
  left = 0.15
  if row_labels is not None:
    left += 0.075 * max(len(str(s)) for s in row_labels) + 0.1
  top = 0.4 if title else 0.05
  fig = _new_figure((gw + left + 0.05, gh + top + 0.05))
  fw, fh = fig.get_size_inches()
  ax = fig.add_axes((left / fw, 0.05 / fh, gw / fw, gh / fh))
  _show(ax, grid)
  for spine in ax.spines.values():
    spine.set_visible(False)
  if row_labels is not None:
    pad = 2 * scale
    cell = h * scale
    centers = [pad + r * (cell + pad) + cell / 2 for r in range(nrow)]
    ax.set_yticks(centers)
    ax.set_yticklabels([str(s) for s in row_labels], fontsize=_FONT_SIZE)
    ax.tick_params(axis="y", length=0, pad=4)
  if title:
    fig.suptitle(title, fontsize=_FONT_SIZE + 2,
                 y=1.0 - 0.05 / fh, va="top")
  return _save_figure(fig, path, dpi=dpi, tight=False)


def _strip_figure(frames: np.ndarray, labels: Sequence[str],
                  title: Optional[str], panel_in: float = 1.2) -> Figure:
  """One row of images with a label under each."""
  k = frames.shape[0]
  aspect = frames.shape[1] / frames.shape[2]
  fig = _new_figure((panel_in * k, panel_in * aspect + 0.35 +
                     (0.35 if title else 0.0)))
  fig.set_layout_engine("constrained", w_pad=0.02, h_pad=0.02, wspace=0.02)
  axes = fig.subplots(1, k, squeeze=False)[0]
  for ax, frame, label in zip(axes, frames, labels):
    _show(ax, frame)
    for spine in ax.spines.values():
      spine.set_visible(False)
    ax.set_xlabel(label, fontsize=_FONT_SIZE, labelpad=3)
  if title:
    fig.suptitle(title, fontsize=_FONT_SIZE + 2)
  return fig


def forward_strip(path: PathLike, frames: np.ndarray,
                  ts: Sequence[Union[int, float]], *, dpi: int = 300,
                  title: Optional[str] = None) -> str:
  """Saves a row of K images (e.g. the forward process), "t = ..." under each.

  Args:
    path: Output PNG path.
    frames: [K, H, W, C], uint8 or float in [-1, 1].
    ts: K time steps (ints or floats) used as labels.
    dpi: Resolution of the saved PNG (recorded in its metadata).
    title: Figure title.

  Returns:
    The path written.
  """
  frames = _as_batch(frames, "frames")
  if len(ts) != frames.shape[0]:
    raise ValueError(
        f"forward_strip: {len(ts)} time steps for {frames.shape[0]} frames.")
  fig = _strip_figure(frames, [f"t = {_fmt_t(t)}" for t in ts], title)
  return _save_figure(fig, path, dpi=dpi)


# -------------------------------------------------------------- schedules


def schedules_figure(path: PathLike,
                     curves: Mapping[str, Tuple[np.ndarray, np.ndarray]], *,
                     title: Optional[str] = None,
                     snr_floor: float = 1e-5) -> str:
  """Plots noise schedules: alphabar(t) and SNR(t) = alphabar / (1 - alphabar).

  Args:
    path: Output PNG path.
    curves: name -> (t [T], alphabar [T]), e.g. {"linear": ..., "cosine": ...}.
    title: Figure title.
    snr_floor: Lower limit of the SNR axis when the data go below it (e.g.
      alphabar_T ~ 1e-30 at the end of an unclipped cosine schedule), so that
      the useful range is not squashed; such curves run off the bottom.

  Returns:
    The path written.
  """
  fig = _new_figure((10.0, 4.0))
  snr_min = np.inf
  ax_a, ax_s = fig.subplots(1, 2)
  for name, (t, abar) in curves.items():
    t = np.asarray(t, dtype=np.float64)
    abar = np.clip(np.asarray(abar, dtype=np.float64), 0.0, 1.0)
    ax_a.plot(t, abar, label=name, lw=1.8)
    with np.errstate(divide="ignore", invalid="ignore"):
      snr = abar / (1.0 - abar)
    snr = np.where((snr > 0) & np.isfinite(snr), snr, np.nan)  # log-safe
    if np.any(np.isfinite(snr)):
      snr_min = min(snr_min, float(np.nanmin(snr)))
    ax_s.plot(t, snr, label=name, lw=1.8)
  ax_a.set_xlabel("t")
  ax_a.set_ylabel(r"$\bar\alpha_t$")
  ax_a.set_title(r"Signal level $\bar\alpha_t$")
  ax_s.set_xlabel("t")
  ax_s.set_ylabel(r"SNR$(t) = \bar\alpha_t / (1 - \bar\alpha_t)$")
  ax_s.set_yscale("log")
  if snr_min < snr_floor:
    ax_s.set_ylim(bottom=snr_floor)
  ax_s.set_title("Signal-to-noise ratio (log scale)")
  for ax in (ax_a, ax_s):
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=_FONT_SIZE)
  if title:
    fig.suptitle(title, fontsize=_FONT_SIZE + 2)
  fig.tight_layout()
  return _save_figure(fig, path)


# --------------------------------------------------------- reverse process


def reverse_gif(path: PathLike, trajectory: np.ndarray, *,
                ncol: Optional[int] = None, duration_ms: int = 80,
                scale: int = 4, final_hold: int = 10) -> str:
  """Saves an animated GIF of a sampling trajectory.

  Frame k is the `make_grid` of the N images at step k, upscaled by `scale`.
  The last frame is held for `final_hold` extra frame durations. The GIF
  encoder (PIL) merges consecutive identical frames into one frame with the
  summed duration, so the hold is stored as a longer last frame: the file
  has K frames (fewer if some steps are identical after uint8 quantisation)
  and a total duration of (K + final_hold) * duration_ms.

  Args:
    path: Output GIF path.
    trajectory: [K, N, H, W, C], uint8 or float in [-1, 1].
    ncol: Grid columns; default ceil(sqrt(N)).
    duration_ms: Display time of each step in ms (GIF resolution is 10 ms).
    scale: Integer nearest-neighbour upscaling factor.
    final_hold: Extra frame durations to show the final frame.

  Returns:
    The path written.
  """
  trajectory = to_uint8(trajectory)
  if trajectory.ndim == 4:
    trajectory = trajectory[..., None]  # [K, N, H, W, 1]
  if trajectory.ndim != 5:
    raise ValueError(
        f"reverse_gif: expected [K, N, H, W, C], got {trajectory.shape}.")
  k = trajectory.shape[0]
  frames = [_pil_image(_upscale(make_grid(trajectory[i], ncol=ncol), scale))
            for i in range(k)]
  durations = [int(duration_ms)] * k
  durations[-1] = int(duration_ms) * (1 + max(0, int(final_hold)))
  path = _prepare(path)
  frames[0].save(path, format="GIF", save_all=True,
                 append_images=frames[1:], duration=durations, loop=0)
  return path


def frame_strip(path: PathLike, trajectory: np.ndarray,
                ts: Optional[Sequence[Union[int, float]]] = None,
                num: int = 10, *, n_images: int = 1,
                title: Optional[str] = None, dpi: int = 200) -> str:
  """Saves `num` evenly spaced frames of a trajectory as one labelled row.

  Args:
    path: Output PNG path.
    trajectory: [K, N, H, W, C], uint8 or float in [-1, 1].
    ts: Optional K time steps; labels read "t = ..." (else "step k").
    num: Number of frames shown (at most K); first and last always included.
    n_images: Images per frame: 1 shows the first image, more show a small
      grid of the first `n_images`.
    title: Figure title.
    dpi: Resolution of the saved PNG.

  Returns:
    The path written.
  """
  trajectory = to_uint8(trajectory)
  if trajectory.ndim == 4:
    trajectory = trajectory[..., None]  # [K, N, H, W, 1]
  if trajectory.ndim != 5:
    raise ValueError(
        f"frame_strip: expected [K, N, H, W, C], got {trajectory.shape}.")
  k = trajectory.shape[0]
  if ts is not None and len(ts) != k:
    raise ValueError(f"frame_strip: {len(ts)} time steps for {k} frames.")
  idx = np.unique(np.round(np.linspace(0, k - 1, max(1, min(num, k))))
                  ).astype(int)
  n_images = max(1, min(int(n_images), trajectory.shape[1]))
  if n_images == 1:
    frames = trajectory[idx, 0]  # [num, H, W, C]
  else:
    frames = np.stack([make_grid(trajectory[i, :n_images]) for i in idx])
  labels = [f"t = {_fmt_t(ts[i])}" if ts is not None else f"step {i}"
            for i in idx]
  fig = _strip_figure(frames, labels, title)
  return _save_figure(fig, path, dpi=dpi)


# -------------------------------------------------------------- histograms


def noise_histograms(
    path: PathLike,
    pairs: Mapping[str, Tuple[np.ndarray, np.ndarray]], *,
    bins: int = 60,
    reference: Optional[Mapping[str, np.ndarray]] = None,
    names: Tuple[str, str] = ("predicted", "true"),
    title: Optional[str] = None) -> str:
  """Overlaid density histograms of predicted vs true noise, one panel each.

  Args:
    path: Output PNG path.
    pairs: panel label (e.g. "t = 100") -> (predicted [M], true [M]); arrays
      of any shape are flattened.
    bins: Number of histogram bins (shared by all series of a panel).
    reference: Optional legend name -> samples, overlaid as an outline on
      every panel (e.g. {"Gaussian": normal samples} next to gamma noise).
    names: Legend names of the two series of `pairs`.
    title: Figure title.

  Returns:
    The path written.
  """
  labels = list(pairs)
  if not labels:
    raise ValueError("noise_histograms: no data.")
  ncol = min(len(labels), 4)
  nrow = int(math.ceil(len(labels) / ncol))
  fig = _new_figure((3.6 * ncol, 3.0 * nrow + (0.3 if title else 0.0)))
  axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
  for ax, label in zip(axes, labels):
    pred, true = (np.asarray(a, np.float64).ravel() for a in pairs[label])
    series = [pred, true] + [np.asarray(r, np.float64).ravel()
                             for r in (reference or {}).values()]
    finite = np.concatenate([s[np.isfinite(s)] for s in series])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (
        -1.0, 1.0)
    if hi <= lo:
      lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    ax.hist(true[np.isfinite(true)], bins=edges, density=True, alpha=0.45,
            color="tab:blue", label=names[1])
    ax.hist(pred[np.isfinite(pred)], bins=edges, density=True, alpha=0.45,
            color="tab:orange", label=names[0])
    for j, (ref_name, ref) in enumerate((reference or {}).items()):
      ref = np.asarray(ref, np.float64).ravel()
      ax.hist(ref[np.isfinite(ref)], bins=edges, density=True,
              histtype="step", lw=1.6, color=f"C{(j + 2) % 10}",
              label=ref_name)
    ax.set_title(str(label), fontsize=_FONT_SIZE + 1)
    ax.set_xlabel("value", fontsize=_FONT_SIZE)
    ax.set_ylabel("density", fontsize=_FONT_SIZE)
    ax.legend(fontsize=_FONT_SIZE - 1)
    ax.grid(True, alpha=0.3)
  for ax in axes[len(labels):]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title, fontsize=_FONT_SIZE + 2)
  fig.tight_layout()
  return _save_figure(fig, path)


# ------------------------------------------------------------------ metrics


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
  """Reads a JSON-lines metrics file, skipping blank and malformed lines.

  Args:
    path: File with one JSON object per line.

  Returns:
    The records (dicts) in file order; lines that are not valid JSON objects
    are skipped.
  """
  records = []
  with open(path, "r", encoding="utf-8", errors="replace") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


def _is_number(v: Any) -> bool:
  return (isinstance(v, (int, float, np.integer, np.floating))
          and not isinstance(v, bool) and math.isfinite(float(v)))


def _ema(y: np.ndarray, smooth: float) -> np.ndarray:
  """Bias-corrected exponential moving average (as in TensorBoard)."""
  out = np.empty_like(y)
  acc, norm = 0.0, 0.0
  for i, v in enumerate(y):
    acc = smooth * acc + (1.0 - smooth) * v
    norm = smooth * norm + (1.0 - smooth)
    out[i] = acc / norm
  return out


def loss_curves(path: PathLike, records: Sequence[Mapping[str, Any]], *,
                keys: Sequence[str] = ("loss",), x: str = "step",
                smooth: float = 0.0, title: Optional[str] = None) -> str:
  """Plots training curves from metric records, one panel per key.

  Each key of `keys` present (as a finite number) in some record is plotted
  against `x`; records without a numeric `x` are skipped (if no record has
  one, the record index is used). A panel uses a log y-axis when all its
  values are positive and not all equal. With `smooth` in (0, 1) the raw
  curve is drawn faint with a bias-corrected EMA on top.

  Args:
    path: Output PNG path.
    records: Dicts such as {"step": 10, "loss": 0.3, "lr": 1e-4}.
    keys: Metric names to plot.
    x: Name of the x-axis field.
    smooth: EMA factor in [0, 1); 0 disables smoothing.
    title: Figure title.

  Returns:
    The path written.
  """
  if not 0.0 <= smooth < 1.0:
    raise ValueError(f"loss_curves: smooth must be in [0, 1), got {smooth}.")
  use_index = not any(_is_number(r.get(x)) for r in records)
  xlabel = "record index" if use_index else x
  series = {}
  for key in keys:
    xs, ys = [], []
    for i, r in enumerate(records):
      xv = i if use_index else r.get(x)
      if _is_number(xv) and _is_number(r.get(key)):
        xs.append(float(xv))
        ys.append(float(r[key]))
    if ys:
      series[key] = (np.asarray(xs), np.asarray(ys))

  n = max(1, len(series))
  fig = _new_figure((4.5 * n, 3.5 + (0.3 if title else 0.0)))
  axes = fig.subplots(1, n, squeeze=False)[0]
  if not series:
    axes[0].text(0.5, 0.5, f"no data for {', '.join(keys)}", ha="center",
                 va="center", transform=axes[0].transAxes)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
  for ax, (key, (xs, ys)) in zip(axes, series.items()):
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    if smooth > 0.0:
      ax.plot(xs, ys, color="tab:blue", alpha=0.3, lw=1.0, label="raw")
      ax.plot(xs, _ema(ys, smooth), color="tab:blue", lw=1.8,
              label=f"EMA {smooth:g}")
      ax.legend(fontsize=_FONT_SIZE - 1)
    else:
      ax.plot(xs, ys, color="tab:blue", lw=1.5)
    if np.all(ys > 0) and ys.max() > ys.min():
      ax.set_yscale("log")
    ax.set_xlabel(xlabel, fontsize=_FONT_SIZE)
    ax.set_ylabel(key, fontsize=_FONT_SIZE)
    ax.set_title(key, fontsize=_FONT_SIZE + 1)
    ax.grid(True, which="both", alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=_FONT_SIZE + 2)
  fig.tight_layout()
  return _save_figure(fig, path)


# ------------------------------------------------------------ comparisons


def comparison_figure(
    path: PathLike, columns: Mapping[str, np.ndarray], *,
    scores: Optional[Mapping[str, np.ndarray]] = None, max_rows: int = 6,
    title: Optional[str] = None,
    ssim: Optional[Mapping[str, np.ndarray]] = None) -> str:
  """Side-by-side comparison: rows are images, columns are methods.

  Args:
    path: Output PNG path.
    columns: column name -> images [N, H, W, C] (e.g. "noisy", "method A",
      "clean"), shown left to right in insertion order.
    scores: Optional column name -> per-image PSNR [N] in dB, written under
      each cell of that column.
    max_rows: Maximum number of rows (images) shown.
    title: Figure title.
    ssim: Optional column name -> per-image SSIM [N], written after the PSNR.

  Returns:
    The path written.
  """
  names = list(columns)
  if not names:
    raise ValueError("comparison_figure: no columns.")
  batches = {name: _as_batch(columns[name], name) for name in names}
  nrow = min(min(b.shape[0] for b in batches.values()), int(max_rows))
  if nrow < 1:
    raise ValueError("comparison_figure: no images.")
  scores = dict(scores or {})
  ssim = dict(ssim or {})
  ncol = len(names)
  cell = 1.6
  fig = _new_figure((cell * ncol, (cell + 0.25) * nrow + 0.3 +
                     (0.3 if title else 0.0)))
  axes = fig.subplots(nrow, ncol, squeeze=False)
  for j, name in enumerate(names):
    col_scores = scores.get(name)
    if col_scores is not None:
      col_scores = np.asarray(col_scores, np.float64).ravel()
    col_ssim = ssim.get(name)
    if col_ssim is not None:
      col_ssim = np.asarray(col_ssim, np.float64).ravel()
    for i in range(nrow):
      ax = axes[i, j]
      _show(ax, batches[name][i])
      if i == 0:
        ax.set_title(name, fontsize=_FONT_SIZE + 1, fontweight="bold")
      if col_scores is not None and i < col_scores.size:
        label = f"{col_scores[i]:.2f} dB"
        if col_ssim is not None and i < col_ssim.size:
          label += f", {col_ssim[i]:.3f}"
        ax.set_xlabel(label, fontsize=_FONT_SIZE, labelpad=2)
  if title:
    fig.suptitle(title, fontsize=_FONT_SIZE + 2)
  fig.tight_layout(h_pad=0.4, w_pad=0.3)
  return _save_figure(fig, path)


def confusion_matrix_figure(path: PathLike, cm: np.ndarray,
                            class_names: Sequence[str], *,
                            title: Optional[str] = None) -> str:
  """Annotated confusion-matrix heatmap, accuracy in the title.

  Args:
    path: Output PNG path.
    cm: [K, K] counts (or rates); rows are true classes, columns predictions.
    class_names: K class names.
    title: Title prefix (default "Confusion matrix").

  Returns:
    The path written.
  """
  cm = np.asarray(cm, dtype=np.float64)
  k = cm.shape[0]
  if cm.shape != (k, k) or len(class_names) != k:
    raise ValueError(
        f"confusion_matrix_figure: cm {cm.shape} vs {len(class_names)} "
        "class names.")
  total = cm.sum()
  accuracy = float(np.trace(cm) / total) if total > 0 else float("nan")
  size = max(4.0, 0.55 * k + 2.5)
  fig = _new_figure((size + 1.0, size))
  ax = fig.subplots()
  im = ax.imshow(cm, cmap="Blues", vmin=0.0, interpolation="nearest")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  ax.set_xticks(range(k))
  ax.set_yticks(range(k))
  ax.set_xticklabels([str(c) for c in class_names], rotation=45, ha="right",
                     rotation_mode="anchor", fontsize=_FONT_SIZE)
  ax.set_yticklabels([str(c) for c in class_names], fontsize=_FONT_SIZE)
  ax.set_xlabel("Predicted", fontsize=_FONT_SIZE + 1)
  ax.set_ylabel("True", fontsize=_FONT_SIZE + 1)
  integer = np.all(np.equal(np.mod(cm, 1), 0))
  vmax = cm.max() if cm.size else 0.0
  font = max(6, _FONT_SIZE - k // 6)
  for i in range(k):
    for j in range(k):
      v = cm[i, j]
      text = f"{int(v)}" if integer else f"{v:.2f}"
      ax.text(j, i, text, ha="center", va="center", fontsize=font,
              color="white" if vmax > 0 and v > 0.5 * vmax else "black")
  ax.set_title(f"{title or 'Confusion matrix'} "
               f"(accuracy = {100 * accuracy:.1f}%)",
               fontsize=_FONT_SIZE + 2)
  fig.tight_layout()
  return _save_figure(fig, path)


def curves_figure(path: PathLike,
                  series: Mapping[str, Tuple[np.ndarray, np.ndarray]], *,
                  xlabel: str, ylabel: str, logx: bool = False,
                  logy: bool = False, title: Optional[str] = None) -> str:
  """Generic line plot of named (x, y) series with markers and a legend.

  Args:
    path: Output PNG path.
    series: name -> (x [M], y [M]), e.g. quality vs NFE per sampler.
    xlabel: x-axis label.
    ylabel: y-axis label.
    logx: Log-scale x-axis.
    logy: Log-scale y-axis.
    title: Figure title.

  Returns:
    The path written.
  """
  fig = _new_figure((6.0, 4.2))
  ax = fig.subplots()
  for name, (xs, ys) in series.items():
    xs = np.asarray(xs, np.float64).ravel()
    ys = np.asarray(ys, np.float64).ravel()
    marker = "o" if xs.size <= 50 else None
    ax.plot(xs, ys, marker=marker, ms=4, lw=1.6, label=str(name))
  if logx:
    ax.set_xscale("log")
  if logy:
    ax.set_yscale("log")
  ax.set_xlabel(xlabel, fontsize=_FONT_SIZE + 1)
  ax.set_ylabel(ylabel, fontsize=_FONT_SIZE + 1)
  if title:
    ax.set_title(title, fontsize=_FONT_SIZE + 2)
  ax.grid(True, which="both", alpha=0.3)
  if series:
    ax.legend(fontsize=_FONT_SIZE)
  fig.tight_layout()
  return _save_figure(fig, path)
