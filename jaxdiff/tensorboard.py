"""TensorBoard event files: the scalars and images of training and the modes.

Training writes `<workdir>/tensorboard/`, a mode `<workdir>/tensorboard/
<mode>/`; `tensorboard --logdir <workdir>/tensorboard` shows them all.

    with tensorboard.Writer.for_mode(workdir, "eval") as board:
      board.scalars(step, {"fd": 1.5, "floor": 0.2}, prefix="eval/")
      board.image(step, "eval/samples", grid)  # uint8 HWC or [-1, 1] floats

Events are written through tensorboardX's record writer (no TensorFlow), in
the caller's thread, and flushed after every call, so an interrupted run
keeps everything it logged. Only process 0 writes; elsewhere a Writer does
nothing. A file-system error (read-only, disk full, a file in the way) is
logged once as a warning and turns the writer off: the run goes on. Without
tensorboardX, every writer does nothing, with one warning per process.
"""
from __future__ import annotations

import io
import logging
import os
import secrets
import time
from typing import Any, Mapping, Optional

import numpy as np

from jaxdiff import distributed

SUBDIR = "tensorboard"

_warned_missing = False


def _events_module():
  """tensorboardX's event writer and protos, or None (warned once)."""
  global _warned_missing
  try:
    # pylint: disable=g-import-not-at-top
    from tensorboardX import event_file_writer
    from tensorboardX.proto import event_pb2, summary_pb2
    # pylint: enable=g-import-not-at-top
  except ImportError as e:
    if not _warned_missing:
      _warned_missing = True
      logging.warning("jaxdiff: no TensorBoard event files (%s); pip install "
                      "tensorboardX to write them.", e)
    return None
  return event_file_writer, event_pb2, summary_pb2


def _scalar(value: Any) -> Optional[float]:
  """A number (Python, numpy or 0-d array, bools as 0/1) as a float; None
  for anything else (strings, lists, None)."""
  if value is None or isinstance(value, (str, bytes)):
    return None
  try:
    a = np.asarray(value)
  except (TypeError, ValueError):
    return None
  if a.ndim or not (np.issubdtype(a.dtype, np.number)
                    or a.dtype == np.bool_):
    return None
  return float(a)


def _png(image: np.ndarray) -> tuple:
  """(PNG bytes, H, W, C) of an HWC (or HW) image, uint8 or [-1, 1]."""
  # pylint: disable=g-import-not-at-top
  from PIL import Image
  from jaxdiff.viz.canvas import to_uint8
  # pylint: enable=g-import-not-at-top
  image = to_uint8(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]  # [H, W]: PIL's grayscale.
  if image.ndim not in (2, 3) or (image.ndim == 3
                                  and image.shape[-1] not in (3, 4)):
    raise ValueError(f"tensorboard: expected an HWC image with 1, 3 or 4 "
                     f"channels, got {image.shape}.")
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  h, w = image.shape[:2]
  return buf.getvalue(), h, w, image.shape[2] if image.ndim == 3 else 1


class Writer:
  """An event file in `logdir`, opened at the first write (see the module
  docstring).

  Args:
    logdir: the folder (created when needed).
    purge_step: if set, TensorBoard drops the events at this step and after
      from the folder's older event files (those of a run killed after its
      last checkpoint; the resumed run logs those steps again).
  """

  def __init__(self, logdir: str, *, purge_step: Optional[int] = None):
    self.logdir, self.purge_step = logdir, purge_step
    self.path: Optional[str] = None  # The event file, once opened.
    self._events = None  # tensorboardX's EventsWriter, once opened.
    self._proto = None
    self.enabled = distributed.is_main()
    if self.enabled:
      self._proto = _events_module()
      self.enabled = self._proto is not None

  @classmethod
  def for_training(cls, workdir: str, initial_step: int = 0) -> "Writer":
    """`<workdir>/tensorboard`, dropping older events after `initial_step`
    (the step the run starts or resumes from), as metrics.jsonl does."""
    return cls(os.path.join(workdir, SUBDIR), purge_step=initial_step + 1)

  @classmethod
  def for_mode(cls, workdir: str, mode: str) -> "Writer":
    """`<workdir>/tensorboard/<mode>`."""
    return cls(os.path.join(workdir, SUBDIR, mode))

  def __enter__(self) -> "Writer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _open(self):
    writer_lib, event_pb2, _ = self._proto
    os.makedirs(self.logdir, exist_ok=True)
    # The suffix keeps two writers started in the same second apart.
    self._events = writer_lib.EventsWriter(
        os.path.join(self.logdir, "events"),
        f".{os.getpid()}.{secrets.token_hex(3)}")
    self.path = self._events._file_name  # pylint: disable=protected-access
    if self.purge_step is not None:
      self._events.write_event(event_pb2.Event(
          wall_time=time.time(), step=self.purge_step,
          session_log=event_pb2.SessionLog(
              status=event_pb2.SessionLog.START)))

  def _write(self, step: int, values: list) -> None:
    """One event of summary values, flushed; errors turn the writer off."""
    if not self.enabled or not values:
      return
    _, event_pb2, summary_pb2 = self._proto
    try:
      if self._events is None:
        self._open()
      self._events.write_event(event_pb2.Event(
          wall_time=time.time(), step=int(step),
          summary=summary_pb2.Summary(value=values)))
      self._events.flush()
    except (OSError, ValueError) as e:  # ValueError: a closed file.
      self.enabled = False
      logging.warning("jaxdiff: could not write TensorBoard events in %s "
                      "(%s); no more will be written by this run.",
                      self.logdir, e)
      self._close_quietly()

  def scalars(self, step: int, values: Mapping[str, Any],
              prefix: str = "") -> None:
    """The numeric entries of `values` as scalars `<prefix><key>`; others
    (strings, lists, None) are left out."""
    if not self.enabled:
      return
    value_cls = self._proto[2].Summary.Value
    out = []
    for key, value in values.items():
      number = _scalar(value)
      if number is not None:
        out.append(value_cls(tag=f"{prefix}{key}", simple_value=number))
    self._write(step, out)

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    """One image: uint8 HWC (or HW), or floats in [-1, 1]."""
    if not self.enabled:
      return
    png, h, w, c = _png(np.asarray(image))
    self._image(step, tag, png, h, w, c)

  def image_file(self, step: int, tag: str, path: str) -> None:
    """An image file (PNG, JPEG, ...) as it is, e.g. a matplotlib figure."""
    if not self.enabled:
      return
    from PIL import Image  # pylint: disable=g-import-not-at-top
    try:
      with open(path, "rb") as f:
        data = f.read()
      with Image.open(io.BytesIO(data)) as img:
        (w, h), c = img.size, len(img.getbands())
    except OSError as e:
      logging.warning("jaxdiff: %s not added to TensorBoard: %s", path, e)
      return
    self._image(step, tag, data, h, w, c)

  def _image(self, step, tag, data: bytes, h: int, w: int, c: int) -> None:
    summary_pb2 = self._proto[2]
    self._write(step, [summary_pb2.Summary.Value(
        tag=tag, image=summary_pb2.Summary.Image(
            height=h, width=w, colorspace=c, encoded_image_string=data))])

  def _close_quietly(self) -> None:
    events, self._events = self._events, None
    if events is not None:
      try:
        events.close()
      except (OSError, ValueError):
        pass

  def close(self) -> None:
    """Flushes and closes the event file; later calls do nothing."""
    if self._events is not None:
      try:
        self._events.close()
      except (OSError, ValueError) as e:
        logging.warning("jaxdiff: could not close TensorBoard events %s "
                        "(%s).", self.path, e)
      self._events = None
    self.enabled = False
