"""Image files decoded with limits, for the data sets made of images.

A file (or archive member) over `MAX_IMAGE_BYTES` is refused unread, and an
image whose header claims more pixels than PIL's `Image.MAX_IMAGE_PIXELS`
(a decompression bomb) is a `DataError` naming the file, as is any other
image PIL cannot decode. Pillow, numpy and the standard library only.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
from PIL import Image

from jaxdiff.data.download import DataError

T = TypeVar("T")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

# An image file (or archive member) larger than this is refused before it is
# read: data-set images are kilobytes, and a member's size is its header's.
MAX_IMAGE_BYTES = 64 * 2**20

# Decoding a bad image raises OSError, or PIL's decompression-bomb error (not
# an OSError) when its header claims over 2 * `Image.MAX_IMAGE_PIXELS`
# pixels; `decoded` makes the warning (over MAX_IMAGE_PIXELS) an error too.
_DECODE_ERRORS = (OSError, Image.DecompressionBombError,
                  Image.DecompressionBombWarning)


def decoded(source: str, decode: Callable[[], T]) -> T:
  """`decode()`, the ways decoding an image fails turned into one
  `DataError` naming `source`."""
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
      return decode()
    except _DECODE_ERRORS as e:
      raise DataError(f"{source}: cannot decode image "
                      f"({type(e).__name__}: {e}).") from e


def converted(source, mode: str) -> Image.Image:
  """The image file (a path or a file object) converted to `mode`."""
  with Image.open(source) as img:
    return img.convert(mode)


def _mode(path: str) -> str:
  with Image.open(path) as img:  # Reads only the header.
    return img.mode


def _is_gray_file(path: str) -> bool:
  """Whether an image file is grayscale (reads only its header)."""
  check_file_size(path)
  return decoded(path, lambda: _mode(path)) in ("1", "L", "LA", "I", "I;16",
                                                "F")


def check_file_size(path: str) -> None:
  """DataError if the file is over `MAX_IMAGE_BYTES`."""
  size = os.path.getsize(path)
  if size > MAX_IMAGE_BYTES:
    raise DataError(f"{path}: {size} bytes, more than the {MAX_IMAGE_BYTES} "
                    "an image may have; remove it from the data set.")


def decode_images(files: Sequence[str], channels: Optional[int] = None,
                  size: Optional[Tuple[int, int]] = None) -> np.ndarray:
  """Decodes image files into one uint8 array.

  Args:
    files: the image paths, in order.
    channels: 1 (grayscale) or 3 (RGB); None picks 1 if every image is
      grayscale, else 3.
    size: (height, width) to resize to (bicubic); None keeps the sizes, which
      must then all agree.

  Returns:
    [N, H, W] (grayscale) or [N, H, W, 3] uint8.

  Raises:
    DataError: an unreadable image, or differing sizes without `size`.
  """
  if channels is None:
    channels = 1 if all(_is_gray_file(f) for f in files) else 3
  mode = "L" if channels == 1 else "RGB"
  arrays: List[np.ndarray] = []
  for file in files:
    check_file_size(file)
    img = decoded(file, lambda f=file: converted(f, mode))
    if size is not None and img.size != (size[1], size[0]):
      img = img.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)  # [H, W] or [H, W, 3]
    if arrays and arr.shape != arrays[0].shape:
      raise DataError(
          f"{file} is {arr.shape[1]}x{arr.shape[0]} but {files[0]} is "
          f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; pass image_size= to "
          "resize.")
    arrays.append(arr)
  return np.stack(arrays)  # [N, H, W] or [N, H, W, 3]
