"""The tiny configs give the numbers they gave before the application layer
was redesigned: train (logged losses), sample (pixels), denoise (every
method's PSNR/SSIM) and classify (accuracy, confusion matrix, Tweedie PSNR),
from the same seeds, through `launch.py` (tests/regression/tiny_numbers.py).

Re-record (only when a change of numbers is intended, and say why in the
commit): python tests/regression/tiny_numbers.py tests/regression/tiny_numbers.json
"""
import json
import pathlib
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "regression"))
import tiny_numbers  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = pytest.mark.slow


class _Numbers(dict):
  """Runs each tiny config once, when a test first asks for it."""

  def __init__(self, data_dir):
    super().__init__()
    self.data_dir = data_dir

  def __missing__(self, name):
    self[name] = tiny_numbers.collect_one(name, self.data_dir)
    return self[name]


@pytest.fixture(scope="module", name="numbers")
def fixture_numbers(real_data_dir):
  return _Numbers(real_data_dir)


@pytest.fixture(scope="module", name="recorded")
def fixture_recorded():
  return json.loads((HERE / "regression" / "tiny_numbers.json").read_text())


@pytest.mark.parametrize("name", ["organamnist", "mnist_cond", "mnist_ddgm"])
def test_train_losses(numbers, recorded, name):
  got, want = numbers[name]["train"], recorded[name]["train"]
  assert [r["step"] for r in got] == [r["step"] for r in want]
  np.testing.assert_allclose([r["loss"] for r in got],
                             [r["loss"] for r in want], rtol=1e-4)


@pytest.mark.parametrize("name", ["organamnist", "mnist_cond", "mnist_ddgm"])
def test_samples(numbers, recorded, name):
  got, want = numbers[name]["sample"], recorded[name]["sample"]
  assert got["file"] == want["file"]
  # uint8 pixels: allow a rounding flip of one level from float noise.
  np.testing.assert_allclose(got["first"], want["first"], atol=1.0)
  assert got["mean"] == pytest.approx(want["mean"], abs=0.05)


@pytest.mark.parametrize("name", ["organamnist"])
def test_denoise_every_method(numbers, recorded, name):
  got = numbers[name]["denoise"]
  want = recorded[name]["denoise"]
  assert sorted(got) == sorted(want)
  for method in want:
    np.testing.assert_allclose(got[method]["psnr"], want[method]["psnr"],
                               atol=2e-3, err_msg=method)
    np.testing.assert_allclose(got[method]["ssim"], want[method]["ssim"],
                               atol=2e-4, err_msg=method)


@pytest.mark.parametrize("name", ["mnist_cond"])
def test_classify(numbers, recorded, name):
  got = numbers[name]["classify"]
  want = recorded[name]["classify"]
  assert got["confusion_matrix"] == want["confusion_matrix"]
  assert got["accuracy"] == want["accuracy"]
  assert got["timing_accuracy"] == want["timing_accuracy"]
  for k, v in want["denoise"].items():
    assert got["denoise"][k] == pytest.approx(v, abs=2e-3), k
