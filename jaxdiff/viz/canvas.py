"""The drawing canvas shared by the figure writers: uint8 conversion,
batches of images, headless matplotlib figures and file writing (atomic:
a failed write leaves no partial file, see `jaxdiff.files`)."""
from __future__ import annotations

import math
import os
from typing import Any, Optional, Tuple, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from PIL import Image

from jaxdiff import files

PathLike = Union[str, os.PathLike]

FONT_SIZE = 10


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


def as_batch(images: np.ndarray, name: str = "images") -> np.ndarray:
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


def file_format(path: PathLike) -> str:
  """The image format named by `path`'s extension ("png" if none)."""
  ext = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
  return ext or "png"


def save_image(image: Image.Image, path: PathLike, image_format: str,
               **kwargs) -> str:
  """Writes a PIL image atomically (`jaxdiff.files.atomic_write`).

  Args:
    image: the image (the first frame of an animation).
    path: the destination.
    image_format: PIL's format name, e.g. "PNG" or "GIF".
    **kwargs: PIL's save options (save_all, append_images, ...).

  Returns:
    The path written.
  """
  path = os.fspath(path)
  with files.atomic_write(path) as f:
    image.save(f, format=image_format, **kwargs)
  return path


def new_figure(figsize: Tuple[float, float]) -> Figure:
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig


def save_figure(fig: Figure, path: PathLike, dpi: float = 150,
                 tight: bool = True) -> str:
  """Writes a figure atomically, in the format of `path`'s extension."""
  path = os.fspath(path)
  kwargs = {"bbox_inches": "tight", "pad_inches": 0.05} if tight else {}
  with files.atomic_write(path) as f:
    fig.savefig(f, format=file_format(path), dpi=dpi, facecolor="white",
                **kwargs)
  return path


def show(ax, image: np.ndarray) -> None:
  """Draws one uint8 [H, W, C] image on `ax` (gray colormap if C == 1)."""
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
  else:
    ax.imshow(image, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def pil_image(image: np.ndarray) -> Image.Image:
  """PIL image from uint8 [H, W, C] (mode L, RGB or RGBA)."""
  image = np.ascontiguousarray(image)
  if image.shape[-1] == 1:
    return Image.fromarray(image[..., 0])  # mode L
  return Image.fromarray(image)  # mode RGB or RGBA


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour upscaling of [H, W, C] by an integer factor."""
  scale = int(scale)
  if scale < 1:
    raise ValueError(f"scale must be >= 1, got {scale}.")
  if scale == 1:
    return image
  return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def format_time(t: Any) -> str:
  """Formats a time step: ints as ints, floats compactly."""
  if isinstance(t, (int, np.integer)):
    return str(int(t))
  t = float(t)
  if t.is_integer() and abs(t) < 1e6:
    return str(int(t))
  return f"{t:.3g}"


def grid_shape(n: int, ncol: Optional[int]) -> Tuple[int, int]:
  if ncol is None:
    ncol = int(math.ceil(math.sqrt(n)))
  ncol = max(1, min(int(ncol), n))
  return int(math.ceil(n / ncol)), ncol

