"""Images as files: grids, strips of frames, animated trajectories and
side-by-side comparisons.

Images are NHWC, either uint8 in [0, 255] or float in [-1, 1] (see
`to_uint8`); a trajectory is [K, N, H, W, C].
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

from matplotlib.figure import Figure
import numpy as np

from jaxdiff.viz.canvas import (FONT_SIZE, PathLike, as_batch, format_time,
                                grid_shape, new_figure, pil_image,
                                save_figure, save_image, show, to_uint8,
                                upscale)


def as_trajectory(trajectory: np.ndarray, name: str) -> np.ndarray:
  """uint8 [K, N, H, W, C] from a float or uint8 trajectory ([K, N, H, W]
  is read as 1-channel)."""
  trajectory = to_uint8(trajectory)
  if trajectory.ndim == 4:
    trajectory = trajectory[..., None]  # [K, N, H, W, 1]
  if trajectory.ndim != 5:
    raise ValueError(
        f"{name}: expected [K, N, H, W, C], got {trajectory.shape}.")
  return trajectory


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
  images = as_batch(images)
  n, h, w, c = images.shape
  if n == 0:
    raise ValueError("make_grid: empty batch.")
  nrow, ncol = grid_shape(n, ncol)
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
  grid = upscale(make_grid(images, ncol=ncol), scale)  # [H', W', C]
  if row_labels is None and title is None:
    return save_image(pil_image(grid), path, "PNG")

  images = as_batch(images)
  n, h, _, _ = images.shape
  nrow, _ = grid_shape(n, ncol)
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
  fig = new_figure((gw + left + 0.05, gh + top + 0.05))
  fw, fh = fig.get_size_inches()
  ax = fig.add_axes((left / fw, 0.05 / fh, gw / fw, gh / fh))
  show(ax, grid)
  for spine in ax.spines.values():
    spine.set_visible(False)
  if row_labels is not None:
    pad = 2 * scale
    cell = h * scale
    centers = [pad + r * (cell + pad) + cell / 2 for r in range(nrow)]
    ax.set_yticks(centers)
    ax.set_yticklabels([str(s) for s in row_labels], fontsize=FONT_SIZE)
    ax.tick_params(axis="y", length=0, pad=4)
  if title:
    fig.suptitle(title, fontsize=FONT_SIZE + 2,
                 y=1.0 - 0.05 / fh, va="top")
  return save_figure(fig, path, dpi=dpi, tight=False)


def _strip_figure(frames: np.ndarray, labels: Sequence[str],
                  title: Optional[str], panel_in: float = 1.2) -> Figure:
  """One row of images with a label under each."""
  k = frames.shape[0]
  aspect = frames.shape[1] / frames.shape[2]
  fig = new_figure((panel_in * k, panel_in * aspect + 0.35 +
                     (0.35 if title else 0.0)))
  fig.set_layout_engine("constrained", w_pad=0.02, h_pad=0.02, wspace=0.02)
  axes = fig.subplots(1, k, squeeze=False)[0]
  for ax, frame, label in zip(axes, frames, labels):
    show(ax, frame)
    for spine in ax.spines.values():
      spine.set_visible(False)
    ax.set_xlabel(label, fontsize=FONT_SIZE, labelpad=3)
  if title:
    fig.suptitle(title, fontsize=FONT_SIZE + 2)
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
  frames = as_batch(frames, "frames")
  if len(ts) != frames.shape[0]:
    raise ValueError(
        f"forward_strip: {len(ts)} time steps for {frames.shape[0]} frames.")
  fig = _strip_figure(frames, [f"t = {format_time(t)}" for t in ts], title)
  return save_figure(fig, path, dpi=dpi)




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
  trajectory = as_trajectory(trajectory, "reverse_gif")
  k = trajectory.shape[0]
  frames = [pil_image(upscale(make_grid(trajectory[i], ncol=ncol), scale))
            for i in range(k)]
  durations = [int(duration_ms)] * k
  durations[-1] = int(duration_ms) * (1 + max(0, int(final_hold)))
  return save_image(frames[0], path, "GIF", save_all=True,
                    append_images=frames[1:], duration=durations, loop=0)


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
  trajectory = as_trajectory(trajectory, "frame_strip")
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
  labels = [f"t = {format_time(ts[i])}" if ts is not None else f"step {i}"
            for i in idx]
  fig = _strip_figure(frames, labels, title)
  return save_figure(fig, path, dpi=dpi)




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
  batches = {name: as_batch(columns[name], name) for name in names}
  nrow = min(min(b.shape[0] for b in batches.values()), int(max_rows))
  if nrow < 1:
    raise ValueError("comparison_figure: no images.")
  scores = dict(scores or {})
  ssim = dict(ssim or {})
  ncol = len(names)
  cell = 1.6
  fig = new_figure((cell * ncol, (cell + 0.25) * nrow + 0.3 +
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
      show(ax, batches[name][i])
      if i == 0:
        ax.set_title(name, fontsize=FONT_SIZE + 1, fontweight="bold")
      if col_scores is not None and i < col_scores.size:
        label = f"{col_scores[i]:.2f} dB"
        if col_ssim is not None and i < col_ssim.size:
          label += f", {col_ssim[i]:.3f}"
        ax.set_xlabel(label, fontsize=FONT_SIZE, labelpad=2)
  if title:
    fig.suptitle(title, fontsize=FONT_SIZE + 2)
  fig.tight_layout(h_pad=0.4, w_pad=0.3)
  return save_figure(fig, path)


