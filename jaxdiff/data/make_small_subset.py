"""Builds jaxdiff/assets/organamnist_small.npz from the real OrganAMNIST.

    python -m jaxdiff.data.make_small_subset SRC_DIR [--out PATH]

SRC_DIR is a data root holding `medmnist/organamnist.npz` (or the directory of
`organamnist.npz`, or the file itself). The subset keeps the first 2000 train
and the first 200 test examples in MedMNIST's own npz layout
(`train_images [N, 28, 28] uint8`, `train_labels [N, 1] uint8`, same for
`test_`). The zip is written with fixed timestamps, so the same source gives a
byte-identical file.
"""
from __future__ import annotations

import argparse
import os
import sys
import zipfile
from typing import Dict, List, Optional

import numpy as np

from jaxdiff.data import datasets
from jaxdiff.data import download

DEFAULT_OUT = datasets._SMALL_ASSET  # pylint: disable=protected-access
NUM_TRAIN = 2000
NUM_TEST = 200


def find_source(src: str) -> str:
  """Resolves SRC_DIR to the path of organamnist.npz.

  Args:
    src: a data root, a medmnist directory, or the npz itself.

  Returns:
    The npz path.

  Raises:
    DataNotFoundError: none of the candidates exists.
  """
  candidates = [src, os.path.join(src, "organamnist.npz"),
                os.path.join(src, "medmnist", "organamnist.npz")]
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise download.DataNotFoundError(
      f"organamnist.npz not found; looked for {', '.join(candidates[1:])}.")


def write_npz_deterministic(path: str, arrays: Dict[str, np.ndarray]) -> None:
  """Writes a compressed npz whose bytes depend only on `arrays`.

  Args:
    path: the destination; written via a temporary file and renamed.
    arrays: name -> array (no object arrays).
  """
  tmp = path + ".tmp"
  with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                       compresslevel=9) as zf:
    for name, array in arrays.items():
      info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      info.external_attr = 0o644 << 16
      with zf.open(info, "w") as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array),
                                  allow_pickle=False)
  os.replace(tmp, path)


def make_subset(src: str, out: str = DEFAULT_OUT, num_train: int = NUM_TRAIN,
                num_test: int = NUM_TEST) -> str:
  """Writes the subset and returns its path.

  Args:
    src: see `find_source`.
    out: the destination npz.
    num_train: train examples to keep (the first ones).
    num_test: test examples to keep (the first ones).

  Returns:
    `out`.
  """
  path = find_source(src)
  arrays: Dict[str, np.ndarray] = {}
  for split, n in (("train", num_train), ("test", num_test)):
    ds = datasets.read_medmnist_npz(path, split, datasets.ORGANAMNIST_CLASSES,
                                    limit=n)
    if len(ds.labels) < n:
      raise download.DataError(
          f"{path}: {split} has {len(ds.labels)} examples, fewer than {n}.")
    arrays[f"{split}_images"] = ds.images[..., 0]  # [n, 28, 28] uint8
    arrays[f"{split}_labels"] = ds.labels.astype(np.uint8)[:, None]  # [n, 1]
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  write_npz_deterministic(out, arrays)
  return out


def main(argv: Optional[List[str]] = None) -> int:
  """Command-line entry point.

  Args:
    argv: arguments after the program name; defaults to `sys.argv[1:]`.

  Returns:
    The exit status.
  """
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("src_dir",
                      help="directory holding medmnist/organamnist.npz")
  parser.add_argument("--out", default=DEFAULT_OUT)
  parser.add_argument("--train", type=int, default=NUM_TRAIN)
  parser.add_argument("--test", type=int, default=NUM_TEST)
  args = parser.parse_args(argv)
  out = make_subset(args.src_dir, args.out, args.train, args.test)
  print(f"wrote {out}: {os.path.getsize(out)} bytes, sha256 "
        f"{download.file_digest(out)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
