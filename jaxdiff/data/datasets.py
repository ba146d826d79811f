"""Image classification data sets as numpy arrays, loaded by name.

    ds = load("mnist", "train")            # from $JAXDIFF_DATA_DIR/mnist/
    ds.images  # [60000, 28, 28, 1] uint8
    ds.labels  # [60000] int32

Every loader reads a data set's canonical on-disk format (IDX .gz for MNIST,
the binary batches for CIFAR-10, MedMNIST's npz; the readers are in
`jaxdiff/data/formats.py`), validates it and raises
`DataError` for a malformed file or `DataNotFoundError` for a missing one,
with the path and what to do. Only numpy, Pillow and the standard library are
used; nothing here imports JAX.

Data root: `data_dir=`, else $JAXDIFF_DATA_DIR, else ~/.cache/jaxdiff/data.
`load(..., source="tfds")` reads the data set through tensorflow_datasets
instead (`download.load_tfds`), from `<data root>/tfds`.
"""
from __future__ import annotations

import os
from typing import (Callable, Dict, List, Optional, Sequence,
                    Tuple, Union)

import numpy as np

from jaxdiff.data import download as _download
from jaxdiff.data.download import DataError
from jaxdiff.data.download import DataNotFoundError
from jaxdiff.data.formats import (Dataset, _check_limit, make_dataset,
                                  read_cifar_bin, read_idx,
                                  read_image_tar, read_medmnist_npz,
                                  write_cifar_bin, write_idx)
from jaxdiff.data.formats import _IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC
from jaxdiff.data.imagefiles import IMAGE_EXTENSIONS, decode_images
from jaxdiff.registry import Registry


Loader = Callable[..., Dataset]
DATASETS: Registry[Loader] = Registry("dataset")

SPLITS = ("train", "test")
MEDMNIST_SPLITS = ("train", "val", "test")

MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
    "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
    "ship", "truck")
ORGANAMNIST_CLASSES = (
    "bladder", "femur-left", "femur-right", "heart", "kidney-left",
    "kidney-right", "liver", "lung-left", "lung-right", "pancreas", "spleen")

# Class names of the 2D MedMNIST v2 flags (medmnist's INFO[flag]["label"]).
MEDMNIST_CLASSES: Dict[str, Tuple[str, ...]] = {
    "pathmnist": (
        "adipose", "background", "debris", "lymphocytes", "mucus",
        "smooth muscle", "normal colon mucosa", "cancer-associated stroma",
        "colorectal adenocarcinoma epithelium"),
    # Multi-label (14 findings per image); see `_read_medmnist_npz`.
    "chestmnist": (
        "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass",
        "nodule", "pneumonia", "pneumothorax", "consolidation", "edema",
        "emphysema", "fibrosis", "pleural", "hernia"),
    "dermamnist": (
        "actinic keratoses and intraepithelial carcinoma",
        "basal cell carcinoma", "benign keratosis-like lesions",
        "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions"),
    "octmnist": (
        "choroidal neovascularization", "diabetic macular edema", "drusen",
        "normal"),
    "pneumoniamnist": ("normal", "pneumonia"),
    "retinamnist": ("0", "1", "2", "3", "4"),
    "breastmnist": ("malignant", "normal, benign"),
    "bloodmnist": (
        "basophil", "eosinophil", "erythroblast", "immature granulocytes",
        "lymphocyte", "monocyte", "neutrophil", "platelet"),
    "tissuemnist": (
        "Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
        "Glomerular endothelial cells", "Interstitial endothelial cells",
        "Leukocytes", "Podocytes", "Proximal Tubule Segments",
        "Thick Ascending Limb"),
    "organamnist": ORGANAMNIST_CLASSES,
    "organcmnist": ORGANAMNIST_CLASSES,
    "organsmnist": ORGANAMNIST_CLASSES,
}
MEDMNIST_FLAGS = tuple(MEDMNIST_CLASSES)


def class_names(name: str) -> Optional[Tuple[str, ...]]:
  """The class names of data set `name` without loading it (None: unknown)."""
  known = {"mnist": MNIST_CLASSES, "fashion_mnist": FASHION_MNIST_CLASSES,
           "cifar10": CIFAR10_CLASSES, **MEDMNIST_CLASSES}
  return known.get(name)

_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_URLS = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    # The official files (KNOWN_SHA256), from the data set's repository.
    "fashion_mnist": "https://raw.githubusercontent.com/zalandoresearch/"
                     "fashion-mnist/master/data/fashion/",
}
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_MEDMNIST_URL = "https://zenodo.org/records/10519652"

_SMALL_ASSET = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
    "organamnist_small.npz")


# -------------------------------------------------------------------- helpers


def default_data_dir() -> str:
  """Returns $JAXDIFF_DATA_DIR if set, else ~/.cache/jaxdiff/data."""
  env = os.environ.get("JAXDIFF_DATA_DIR")
  if env:
    return os.path.expanduser(env)
  return os.path.join(os.path.expanduser("~"), ".cache", "jaxdiff", "data")


def load(name: str, split: str = "train", *, data_dir: Optional[str] = None,
         source: str = "files", **kwargs) -> Dataset:
  """Loads one split of a registered data set, or of a TFDS one.

  Args:
    name: a name in `DATASETS`, e.g. "mnist", "cifar10", "organamnist",
      "folder", "organamnist_small"; with source "tfds", also any TFDS name.
    split: "train" or "test" (MedMNIST also "val"; TFDS: its splits).
    data_dir: the data root; defaults to `default_data_dir()`.
    source: "files" (the files in the data root, fetched if missing where a
      package can) or "tfds" (tensorflow_datasets, files in `<root>/tfds`).
    **kwargs: loader options, e.g. `limit=` (first N examples) or, for
      "folder", `path=`, `image_size=`, `channels=`.

  Returns:
    The split as a `Dataset`.

  Raises:
    ValueError: unknown name, split or source.
    DataNotFoundError: the files are missing and could not be downloaded.
    DataError: a file is malformed.
  """
  root = (os.path.expanduser(os.fspath(data_dir)) if data_dir is not None
          else default_data_dir())
  if source == "tfds":
    return _load_tfds(name, root, split, **kwargs)
  if source != "files":
    raise ValueError(f"Unknown data source {source!r} "
                     "(config.data.source); use 'files' or 'tfds'.")
  return DATASETS.get(name)(root, split, **kwargs)


def _load_tfds(name: str, data_dir: str, split: str, *,
               limit: Optional[int] = None, **options) -> Dataset:
  """`name`'s split through tensorflow_datasets; class names: jaxdiff's for
  its data sets, else TFDS's."""
  if options:  # The folder's path=, image_size=, channels=.
    raise ValueError(f"The source 'tfds' takes no {', '.join(options)}: "
                     f"read {name!r} with the source 'files'.")
  limit = _check_limit(limit)
  images, labels, names = _download.load_tfds(
      name, split, os.path.join(data_dir, "tfds"), limit=limit)
  names = (class_names(name) or names
           or tuple(map(str, range(int(labels.max(initial=-1)) + 1))))
  return make_dataset(images, labels, names, f"tfds:{name}", limit)


def _check_split(name: str, split: str, allowed: Sequence[str]) -> None:
  if split not in allowed:
    raise ValueError(
        f"Unknown split {split!r} for data set {name!r}. Known: "
        f"{', '.join(allowed)}.")


def _not_found(what: str, missing: Sequence[str], directory: str, how: str,
               notes: Sequence[str] = ()) -> DataNotFoundError:
  files = ", ".join(os.path.basename(m) for m in missing)
  msg = (f"{what}: missing {files} in {directory}. Put the file(s) in "
         f"{directory} ({how}), or point data_dir= / $JAXDIFF_DATA_DIR at a "
         "directory that holds them.")
  if notes:
    msg += " Automatic download: " + "; ".join(notes) + "."
  return DataNotFoundError(msg)


# ------------------------------------------------------------------------ IDX


def _find(directory: str, base: str) -> Optional[str]:
  """`<directory>/<base>.gz`, else `<directory>/<base>`, else None."""
  for candidate in (base + ".gz", base):
    path = os.path.join(directory, candidate)
    if os.path.isfile(path):
      return path
  return None


def _load_idx(name: str, class_names: Sequence[str], data_dir: str,
              split: str, limit: Optional[int]) -> Dataset:
  """Loads MNIST or Fashion-MNIST from `<data_dir>/<name>/`."""
  _check_split(name, split, SPLITS)
  limit = _check_limit(limit)
  directory = os.path.join(data_dir, name)
  bases = _MNIST_FILES[split]
  paths = [_find(directory, b) for b in bases]
  if None in paths:
    arrays, note = _download.try_tfds(name, split, data_dir)
    if arrays is None:
      missing = [b + ".gz" for b, p in zip(bases, paths) if p is None]
      raise _not_found(
          f"{name} {split!r} split", missing, directory,
          f"download them from {_MNIST_URLS[name]}, or `pip install "
          "tensorflow-datasets` so jaxdiff can fetch them", [note])
    images, labels = arrays
    try:  # Keep the canonical layout so the next load is a plain read.
      os.makedirs(directory, exist_ok=True)
      write_idx(os.path.join(directory, bases[0] + ".gz"), images[..., 0])
      write_idx(os.path.join(directory, bases[1] + ".gz"), labels)
    except OSError:
      pass
    return make_dataset(images, labels, class_names, f"tfds:{name}", limit)
  images = read_idx(paths[0], _IDX_IMAGES_MAGIC)  # [N, H, W]
  labels = read_idx(paths[1], _IDX_LABELS_MAGIC)  # [N]
  if images.ndim != 3:
    raise DataError(f"{paths[0]}: IDX images have shape {images.shape}; "
                    "expected [N, H, W].")
  if labels.ndim != 1:
    raise DataError(f"{paths[1]}: IDX labels have shape {labels.shape}; "
                    "expected [N].")
  return make_dataset(images, labels, class_names, directory, limit)


def config_split(d, split: str, limit: Optional[int] = None) -> Dataset:
  """Split `split` of the config's data set (`d`: config.data's settings:
  name, data_dir, source, load_kwargs(), image_shape), its first `limit`
  images.

  Raises:
    ValueError: the images do not have the shape the config gives.
  """
  ds = load(d.name, split, data_dir=d.data_dir or None, source=d.source,
            limit=limit or None, **d.load_kwargs())
  h, w, c = ds.images.shape[1:]
  if (h, w, c) != tuple(d.image_shape):
    raise ValueError(
        f"Data set {d.name!r} has images {h}x{w}x{c} but the config asks for "
        f"{'x'.join(map(str, d.image_shape))}; set config.data.image_size / "
        "config.data.channels.")
  return ds


@DATASETS.register("mnist")
def load_mnist(data_dir: str, split: str = "train", *,
               limit: Optional[int] = None) -> Dataset:
  """MNIST from `<data_dir>/mnist/{train,t10k}-*-ubyte[.gz]`.

  Args:
    data_dir: the data root.
    split: "train" (60000) or "test" (10000).
    limit: keep only the first `limit` examples.

  Returns:
    [N, 28, 28, 1] uint8 images, 10 classes.
  """
  return _load_idx("mnist", MNIST_CLASSES, data_dir, split, limit)


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(data_dir: str, split: str = "train", *,
                       limit: Optional[int] = None) -> Dataset:
  """Fashion-MNIST from `<data_dir>/fashion_mnist/{train,t10k}-*-ubyte[.gz]`.

  Args:
    data_dir: the data root.
    split: "train" (60000) or "test" (10000).
    limit: keep only the first `limit` examples.

  Returns:
    [N, 28, 28, 1] uint8 images, 10 classes.
  """
  return _load_idx("fashion_mnist", FASHION_MNIST_CLASSES, data_dir, split,
                   limit)


# ------------------------------------------------------------------- CIFAR-10


@DATASETS.register("cifar10")
def load_cifar10(data_dir: str, split: str = "train", *,
                 limit: Optional[int] = None) -> Dataset:
  """CIFAR-10 from `<data_dir>/cifar10/`.

  Sources, in order: `cifar-10-batches-bin/*.bin` (the official binary
  layout); `cifar-10-binary.tar.gz` (the official archive, extracted safely
  next to it); `cifar10-jpeg.tar.gz` (`<split>/<class>/NNNN.jpg`, decoded in
  memory, classes interleaved: the n-th file of every class, n = 0, 1, ...);
  tensorflow_datasets. The python pickle batches are never read.

  Args:
    data_dir: the data root.
    split: "train" (50000) or "test" (10000).
    limit: keep only the first `limit` examples.

  Returns:
    [N, 32, 32, 3] uint8 images, 10 classes.
  """
  _check_split("cifar10", split, SPLITS)
  limit = _check_limit(limit)
  directory = os.path.join(data_dir, "cifar10")
  bin_dir = os.path.join(directory, "cifar-10-batches-bin")
  paths = [os.path.join(bin_dir, n) for n in _CIFAR_FILES[split]]
  archive = os.path.join(directory, "cifar-10-binary.tar.gz")
  jpeg_tar = os.path.join(directory, "cifar10-jpeg.tar.gz")
  if not all(map(os.path.isfile, paths)) and os.path.isfile(archive):
    _download.safe_extract(archive, directory)
  if all(map(os.path.isfile, paths)):
    images, labels = read_cifar_bin(paths, limit)
    return make_dataset(images, labels, CIFAR10_CLASSES, bin_dir)
  if os.path.isfile(jpeg_tar):
    images, labels = read_image_tar(jpeg_tar, split, CIFAR10_CLASSES, limit,
                                    size=(32, 32))
    return make_dataset(images, labels, CIFAR10_CLASSES, jpeg_tar)
  arrays, note = _download.try_tfds("cifar10", split, data_dir)
  if arrays is None:
    raise _not_found(
        f"cifar10 {split!r} split",
        [p for p in paths if not os.path.isfile(p)], bin_dir,
        f"unpack {_CIFAR10_URL} into {directory}, or put that archive or "
        f"cifar10-jpeg.tar.gz in {directory}, or `pip install "
        "tensorflow-datasets` so jaxdiff can fetch it", [note])
  images, labels = arrays
  try:  # Keep the canonical layout so the next load is a plain read.
    os.makedirs(bin_dir, exist_ok=True)
    names = _CIFAR_FILES[split]
    for name, idx in zip(names, np.array_split(np.arange(len(labels)),
                                                len(names))):
      write_cifar_bin(os.path.join(bin_dir, name), images[idx], labels[idx])
  except OSError:
    pass
  return make_dataset(images, labels, CIFAR10_CLASSES, "tfds:cifar10", limit)


# ------------------------------------------------------------------- MedMNIST


def _load_medmnist(flag: str, data_dir: str, split: str,
                   limit: Optional[int]) -> Dataset:
  _check_split(flag, split, MEDMNIST_SPLITS)
  limit = _check_limit(limit)
  root = os.path.join(data_dir, "medmnist")
  path = os.path.join(root, f"{flag}.npz")
  if not os.path.isfile(path):
    got, note = _download.try_medmnist(flag, root)
    if got is None:
      raise _not_found(
          flag, [path], root,
          f"download {flag}.npz from {_MEDMNIST_URL}, or `pip install "
          "medmnist` so jaxdiff can fetch it", [note])
  return read_medmnist_npz(path, split, MEDMNIST_CLASSES[flag], limit)


def _medmnist_loader(flag: str) -> Loader:
  """Builds the registered loader of one MedMNIST flag."""
  def loader(data_dir: str, split: str = "train", *,
             limit: Optional[int] = None) -> Dataset:
    return _load_medmnist(flag, data_dir, split, limit)
  loader.__name__ = loader.__qualname__ = f"load_{flag}"
  loader.__doc__ = (
      f"MedMNIST {flag} from `<data_dir>/medmnist/{flag}.npz`.\n\n"
      "Args:\n  data_dir: the data root.\n  split: \"train\", \"val\" or "
      "\"test\".\n  limit: keep only the first `limit` examples.\n\n"
      f"Returns:\n  uint8 images, {len(MEDMNIST_CLASSES[flag])} classes.\n")
  return loader


for _flag in MEDMNIST_FLAGS:
  DATASETS.register(_flag)(_medmnist_loader(_flag))
del _flag


@DATASETS.register("organamnist_small")
def load_organamnist_small(data_dir: Optional[str] = None,
                           split: str = "train", *,
                           limit: Optional[int] = None) -> Dataset:
  """The OrganAMNIST subset shipped with jaxdiff (2000 train, 200 test).

  Args:
    data_dir: ignored; the file is `jaxdiff/assets/organamnist_small.npz`.
    split: "train" or "test".
    limit: keep only the first `limit` examples.

  Returns:
    [N, 28, 28, 1] uint8 images, 11 classes.
  """
  del data_dir
  _check_split("organamnist_small", split, SPLITS)
  limit = _check_limit(limit)
  if not os.path.isfile(_SMALL_ASSET):
    raise DataNotFoundError(
        f"organamnist_small: missing {_SMALL_ASSET}, which ships with "
        "jaxdiff. Reinstall the package, or rebuild it with `python -m "
        "jaxdiff.data.make_small_subset DIR` from a directory holding "
        "medmnist/organamnist.npz.")
  return read_medmnist_npz(_SMALL_ASSET, split, ORGANAMNIST_CLASSES, limit)


# --------------------------------------------------------------------- folder


def _folder_files(root: str, split: str
                  ) -> Tuple[str, List[str], List[Tuple[int, str]]]:
  """(the split's folder, sorted class names, [(label, image path)])."""
  if not os.path.isdir(root):
    raise DataNotFoundError(
        f"folder: {root} does not exist. Create it with one sub-folder of "
        "images per class (optionally under train/ and test/).")
  if os.path.isdir(os.path.join(root, split)):
    root = os.path.join(root, split)
  else:
    present = [s for s in MEDMNIST_SPLITS
               if os.path.isdir(os.path.join(root, s))]
    if present:
      raise ValueError(
          f"Unknown split {split!r} for folder {root}: it has "
          f"{', '.join(present)}.")
  classes = sorted(d for d in os.listdir(root) if not d.startswith(".")
                   and os.path.isdir(os.path.join(root, d)))
  files = [(label, os.path.join(root, cls, f))
           for label, cls in enumerate(classes)
           for f in sorted(os.listdir(os.path.join(root, cls)))
           if f.lower().endswith(IMAGE_EXTENSIONS)
           and os.path.isfile(os.path.join(root, cls, f))]
  if not files:
    raise DataNotFoundError(
        f"folder: no images ({', '.join(IMAGE_EXTENSIONS)}) in class "
        f"sub-folders of {root}. Lay it out as {root}/<class>/<image>.")
  return root, classes, files


@DATASETS.register("folder")
def load_folder(data_dir: Optional[str] = None, split: str = "train", *,
                path: Optional[str] = None,
                image_size: Union[int, Tuple[int, int], None] = None,
                channels: Optional[int] = None,
                limit: Optional[int] = None) -> Dataset:
  """Images in class sub-folders: `<path>[/<split>]/<class>/<image>`.

  Classes are the sorted sub-folder names; images are ordered by class, then
  file name (.png, .jpg, .jpeg, .bmp, any case).

  Args:
    data_dir: ignored; `path` names the folder.
    split: reads `<path>/<split>/` if it exists, else `<path>` itself.
    path: the folder.
    image_size: resize every image to this (int for square, or (height,
      width)), bicubic; None keeps sizes, which must then all agree.
    channels: 1 (grayscale) or 3 (RGB); None picks 1 if every image is
      grayscale, else 3.
    limit: decode only the first `limit` images.

  Returns:
    [N, H, W, channels] uint8 images.

  Raises:
    DataNotFoundError: `path` is missing or holds no images.
    DataError: unreadable image or differing sizes without `image_size`.
  """
  del data_dir
  if not path:
    raise ValueError("The 'folder' data set needs a path: set "
                     "--config.data.path=<directory of class sub-folders> "
                     "(path= in Python).")
  if channels not in (None, 1, 3):
    raise ValueError(f"channels must be 1, 3 or None, got {channels!r}.")
  limit = _check_limit(limit)
  size: Optional[Tuple[int, int]] = None
  if image_size is not None:
    size = ((int(image_size),) * 2 if np.ndim(image_size) == 0
            else tuple(int(s) for s in image_size))
    if len(size) != 2 or min(size) <= 0:
      raise ValueError(f"image_size must be a positive int or (height, "
                       f"width), got {image_size!r}.")
  root, classes, files = _folder_files(os.path.expanduser(os.fspath(path)),
                                       split)
  if limit is not None:
    files = files[:limit]
  images = decode_images([f for _, f in files], channels, size)
  labels = np.array([label for label, _ in files], dtype=np.int32)
  return make_dataset(images, labels, classes, root)
