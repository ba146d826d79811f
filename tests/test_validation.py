"""Config values are checked before anything compiles: one ValueError line
that names the key and says what to use (`settings.from_config`,
`config.build_model`, the denoise benchmark's settings)."""
import importlib
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from configs import organamnist
from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import settings as settings_lib
from jaxdiff.inverse import benchmark

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py")
                 if p.stem not in ("__init__", "base"))


def _variants(name):
  """Every variant of configs/<name>.py: the names its unknown-variant error
  lists ('' included)."""
  module = importlib.import_module(f"configs.{name}")
  with pytest.raises(ValueError, match="Unknown variant") as e:
    module.get_config("no-such-variant")
  names = re.findall(r"'([A-Za-z0-9_]*)'", str(e.value))
  return module, [n for n in names if n != "no-such-variant"]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_variant_of_every_config_passes(name):
  module, variants = _variants(name)
  assert "" in variants and len(variants) >= 2, variants
  for variant in variants:
    s = settings_lib.from_config(module.get_config(variant))
    config_lib.check_model(s)


def _tiny(**overrides):
  """configs/organamnist.py:tiny with `section.key` (or model kwargs
  `kwargs.key`) overrides."""
  c = organamnist.get_config("tiny")
  for key, value in overrides.items():
    section, field = key.split("__")
    target = c.model.kwargs if section == "kwargs" else c[section]
    target[field] = value
  return c


def _one_line_error(fn, *args):
  with pytest.raises(ValueError) as e:
    fn(*args)
  message = str(e.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("overrides, key, advice", [
    (dict(kwargs__ch_mult=("abc",)), "config.model.kwargs.ch_mult",
     "tuple of positive ints"),
    (dict(kwargs__ch_mult=()), "config.model.kwargs.ch_mult", "non-empty"),
    (dict(kwargs__ch_mult=(1.5, 2)), "config.model.kwargs.ch_mult",
     "(1,2,2)"),
    (dict(kwargs__attn_resolutions=(0,)),
     "config.model.kwargs.attn_resolutions", "positive ints"),
    (dict(kwargs__ch=0), "config.model.kwargs.ch", ">= 1"),
    (dict(kwargs__num_heads=0), "config.model.kwargs.num_heads", ">= 1"),
    (dict(kwargs__num_res_blocks=-1), "config.model.kwargs.num_res_blocks",
     ">= 0"),
    (dict(kwargs__dropout=1.5), "config.model.kwargs.dropout", "[0, 1)"),
    (dict(kwargs__num_heads=3), "config.model.kwargs.num_heads",
     "use one of 1, 2, 4, 8"),
    (dict(data__image_size=29), "config.data.image_size=29",
     "28 or 30"),
])
def test_model_kwargs_are_checked_when_the_model_is_built(overrides, key,
                                                          advice):
  message = _one_line_error(config_lib.build_model, _tiny(**overrides))
  assert key in message and advice in message, message


def test_attention_at_a_resolution_the_unet_lacks_names_the_ones_it_has():
  # tiny: ch_mult (1, 2), attention at 14; at 32 pixels the levels are 32, 16.
  message = _one_line_error(config_lib.build_model,
                            _tiny(data__image_size=32))
  assert "config.model.kwargs.attn_resolutions=(14,)" in message
  assert "the resolutions are 32, 16" in message, message
  config_lib.build_model(_tiny(data__image_size=32,
                               kwargs__attn_resolutions=(16,)))


def test_cnn_hidden_must_be_positive_ints():
  from configs import mnist_ddpm  # pylint: disable=g-import-not-at-top
  c = mnist_ddpm.get_config("tiny")
  c.model.kwargs.hidden = (8, "x")
  message = _one_line_error(config_lib.build_model, c)
  assert "config.model.kwargs.hidden" in message, message


@pytest.mark.parametrize("overrides, key", [
    (dict(training__batch_size=0), "config.training.batch_size"),
    (dict(training__warmup_steps=-1), "config.training.warmup_steps"),
    (dict(data__image_size=0), "config.data.image_size"),
    (dict(data__channels=0), "config.data.channels"),
    (dict(data__limit=-1), "config.data.limit"),
    (dict(sampling__batch_size=0), "config.sampling"),
])
def test_sizes_and_counts_are_checked_by_from_config(overrides, key):
  message = _one_line_error(settings_lib.from_config, _tiny(**overrides))
  assert key in message, message


def test_the_folder_data_set_needs_a_path():
  message = _one_line_error(settings_lib.from_config,
                            _tiny(data__name="folder"))
  assert "--config.data.path=" in message


def test_the_folder_data_set_loads_with_the_configured_size(tmp_path):
  for cls, value in (("a", 0), ("b", 255)):
    (tmp_path / cls).mkdir()
    for i in range(2):
      Image.fromarray(np.full((40, 30), value, np.uint8)).save(
          tmp_path / cls / f"{i}.png")
  s = settings_lib.from_config(_tiny(data__name="folder",
                                     data__path=str(tmp_path)))
  ds = data_lib.load(s.data.name, "train", **s.data.load_kwargs())
  assert ds.images.shape == (4, 28, 28, 1)
  assert ds.class_names == ("a", "b")
  np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1])


def test_an_unknown_denoise_sampler_is_blamed_not_clip_denoised():
  s = settings_lib.from_config(_tiny(denoise__sampler="foo"))
  message = _one_line_error(benchmark.check_settings, s.denoise)
  assert "config.denoise.sampler 'foo'" in message
  assert "clip_denoised" not in message and "ddpm" in message
  message = _one_line_error(benchmark.method_settings, s.denoise)
  assert "config.denoise.sampler 'foo'" in message


def _launch(tmp_path, *flags, mode="train"):
  return subprocess.run(
      [sys.executable, "launch.py", "--config", "configs/organamnist.py:tiny",
       "--workdir", str(tmp_path / "w"), "--mode", mode, *flags],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.slow
@pytest.mark.parametrize("flag, key", [
    ("--config.model.kwargs.ch_mult=abc", "config.model.kwargs.ch_mult"),
    ("--config.training.batch_size=0", "config.training.batch_size"),
    ("--config.model.kwargs.ch=0", "config.model.kwargs.ch"),
    ("--config.data.image_size=32", "config.model.kwargs.attn_resolutions"),
])
def test_launch_reports_a_bad_value_in_one_line_before_compiling(
    tmp_path, flag, key):
  t0 = time.time()
  out = _launch(tmp_path, "--config.data.name=organamnist_small", flag)
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2, out.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("jaxdiff: error: "), lines
  assert key in lines[0], lines[0]
  assert time.time() - t0 < 60  # no compilation: seconds, not minutes
  assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.slow
def test_launch_trains_on_a_folder_data_set(tmp_path):
  rng = np.random.default_rng(0)
  for cls in ("x", "y"):
    (tmp_path / "imgs" / cls).mkdir(parents=True)
    for i in range(8):
      Image.fromarray(rng.integers(0, 256, (32, 32), np.uint8)).save(
          tmp_path / "imgs" / cls / f"{i}.png")
  out = _launch(tmp_path, "--config.data.name=folder",
                f"--config.data.path={tmp_path / 'imgs'}",
                "--config.data.num_classes=2",
                "--config.training.batch_size=8", "--config.data.limit=0")
  assert out.returncode == 0, out.stderr[-3000:]
  assert list((tmp_path / "w" / "checkpoints").iterdir())
