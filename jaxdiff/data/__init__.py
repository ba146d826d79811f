"""jaxdiff data layer: labelled image data sets as numpy arrays.

    from jaxdiff import data
    ds = data.load("mnist", "train")   # Dataset(images [N,28,28,1] uint8, ...)
    data.DATASETS.names()              # every registered data set

numpy, Pillow and the standard library only; no JAX.
"""
from jaxdiff.data.datasets import CIFAR10_CLASSES
from jaxdiff.data.datasets import class_names
from jaxdiff.data.datasets import DATASETS
from jaxdiff.data.datasets import Dataset
from jaxdiff.data.datasets import default_data_dir
from jaxdiff.data.datasets import FASHION_MNIST_CLASSES
from jaxdiff.data.datasets import load
from jaxdiff.data.datasets import config_split
from jaxdiff.data.datasets import MEDMNIST_CLASSES
from jaxdiff.data.datasets import MEDMNIST_FLAGS
from jaxdiff.data.datasets import ORGANAMNIST_CLASSES
from jaxdiff.data.datasets import read_idx
from jaxdiff.data.datasets import read_medmnist_npz
from jaxdiff.data.datasets import write_idx
from jaxdiff.data.formats import to_model_range
from jaxdiff.data.download import DataError
from jaxdiff.data.download import DataNotFoundError
from jaxdiff.data.download import KNOWN_SHA256
from jaxdiff.data.download import download_file
from jaxdiff.data.download import safe_extract
from jaxdiff.data.download import verify_checksum
from jaxdiff.data.download import verify_data_dir

__all__ = [
    "CIFAR10_CLASSES", "class_names", "DATASETS", "DataError", "DataNotFoundError", "Dataset",
    "FASHION_MNIST_CLASSES", "KNOWN_SHA256", "MEDMNIST_CLASSES",
    "MEDMNIST_FLAGS", "ORGANAMNIST_CLASSES", "default_data_dir",
    "download_file", "load", "read_idx", "read_medmnist_npz", "safe_extract", "to_model_range",
    "verify_checksum", "verify_data_dir", "write_idx",
]
