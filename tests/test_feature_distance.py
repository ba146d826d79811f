"""Tests for jaxdiff.feature_distance on the shipped organamnist_small subset.

A classifier trained for 16 steps on 256 images gives the feature space. The
facts checked do not depend on how good it is: a set's Frechet distance to
itself is 0, corrupting images moves their features away monotonically in the
noise level, histograms count every sample once, and the cache returns the
very parameters it stored. The eval mode end to end is slow (it trains).
"""
import json
import os

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest

from configs import mnist_ddgm
from configs import mnist_ddpm
from jaxdiff import data
from jaxdiff import feature_distance
from jaxdiff.inverse import protocol
from jaxdiff import run
from jaxdiff import settings
from jaxdiff.modes import eval as eval_mode

DATASET = "organamnist_small"
K = 11


@pytest.fixture(name="cache_dir", scope="module")
def fixture_cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(name="tiny_eval", scope="module")
def fixture_tiny_eval():
  return settings.section(mnist_ddgm.get_config("tiny"), "eval")


@pytest.fixture(name="test_set", scope="module")
def fixture_test_set():
  return data.load(DATASET, "test")


@pytest.fixture(name="train_set", scope="module")
def fixture_train_set():
  return data.load(DATASET, "train", limit=256)


def _cached(cache_dir, es, train_set, test_set, log):
  return feature_distance.load_or_train_classifier(
      os.path.join(cache_dir, f"classifier_{DATASET}"), es, dataset=DATASET,
      train=train_set, test=test_set, log=log)


@pytest.fixture(name="clf", scope="module")
def fixture_clf(cache_dir, tiny_eval, train_set, test_set):
  """Trained through the cache with the tiny config's settings."""
  messages = []
  clf = _cached(cache_dir, tiny_eval, train_set, test_set, messages.append)
  assert any("training" in m and f"({tiny_eval.classifier_limit} images" in m
             for m in messages), messages
  return clf


def _features(clf, images):
  return feature_distance.classifier_outputs(clf.model, clf.params, images)[0]


def test_classifier_learns_the_training_images(clf, train_set):
  acc = feature_distance.accuracy(clf.model, clf.params, train_set.images,
                            train_set.labels)
  assert acc > 0.4  # chance: 1/11; measured 0.82 after 16 steps.


def test_features_shape_and_padding_invariance(clf, test_set):
  f_all, p_all = feature_distance.classifier_outputs(clf.model, clf.params,
                                               test_set.images, batch_size=64)
  assert f_all.shape == (len(test_set.images), 128)
  np.testing.assert_allclose(p_all.sum(-1), 1.0, rtol=1e-5)
  # Features of an image do not depend on its batch (or padding).
  f_one, _ = feature_distance.classifier_outputs(clf.model, clf.params,
                                           test_set.images[5:6], batch_size=64)
  np.testing.assert_allclose(f_one[0], f_all[5], rtol=1e-4, atol=1e-5)


def test_fd_of_a_set_with_itself_is_zero(clf, test_set):
  f = _features(clf, test_set.images)
  scale = np.trace(np.cov(f, rowvar=False))
  assert feature_distance.frechet_distance_of(f, f) <= 1e-6 * scale
  # Float images in [-1, 1] are read like their uint8 versions.
  x = test_set.images.astype(np.float32) / 127.5 - 1.0
  np.testing.assert_allclose(_features(clf, x), f, rtol=1e-5, atol=1e-6)


def test_fd_grows_with_corruption(clf, test_set):
  x = test_set.images.astype(np.float32) / 127.5 - 1.0
  f = _features(clf, x)
  key = jax.random.key(0)
  fds = [feature_distance.frechet_distance_of(
      f, _features(clf, np.asarray(
          protocol.measure(key, x, sigma))))
         for sigma in (0.05, 0.2, 0.5, 1.0)]
  assert fds[0] > 0
  assert all(a < b for a, b in zip(fds, fds[1:])), fds


def test_sample_quality(clf, test_set, train_set):
  n = 64
  samples = test_set.images[:n]
  labels = test_set.labels[:n]
  res = feature_distance.sample_quality(clf, samples, test_set.images,
                                  train_set.images[:n], labels=labels)
  assert len(res["histogram"]) == K
  assert sum(res["histogram"]) == n
  assert res["confidence"] >= 1.0 / K and res["confidence"] <= 1.0
  assert res["real_confidence"] >= 1.0 / K and res["real_confidence"] <= 1.0
  assert res["num_samples"] == n and res["num_floor_images"] == n
  assert res["fd"] >= 0 and res["floor"] > 0
  # The histogram and agreement count the classifier's argmax classes.
  pred = np.argmax(feature_distance.classifier_outputs(
      clf.model, clf.params, samples)[1], -1)
  assert res["histogram"] == np.bincount(pred, minlength=K).tolist()
  assert res["label_agreement"] == pytest.approx(np.mean(pred == labels))
  # Samples that are the reference set itself sit at distance 0.
  same = feature_distance.sample_quality(clf, test_set.images, test_set.images,
                                   train_set.images[:n])
  assert same["fd"] <= 1e-6 * max(res["fd"], 1.0)


def test_cache_returns_stored_params(clf, cache_dir, tiny_eval, train_set,
                                     test_set):
  messages = []
  again = _cached(cache_dir, tiny_eval, train_set, test_set, messages.append)
  assert not messages  # loaded, not retrained.
  jax.tree.map(np.testing.assert_array_equal, again.params, clf.params)
  assert again.test_accuracy == clf.test_accuracy
  with open(os.path.join(cache_dir, f"classifier_{DATASET}",
                         "meta.json")) as f:
    recorded = json.load(f)["settings"]
  assert recorded == feature_distance.cache_settings(DATASET, tiny_eval)
  assert recorded["epochs"] == tiny_eval.classifier_epochs


def test_cache_with_other_settings_retrains(clf, tmp_path, tiny_eval,
                                            train_set, test_set):
  del clf  # trained once by the fixture; here into a fresh folder.
  path = str(tmp_path / "cache")
  es = dataclasses.replace(tiny_eval, classifier_limit=64,
                           classifier_epochs=1)
  first = []
  _cached(path, es, train_set, test_set, first.append)
  assert any("(64 images, 1 epochs)" in m for m in first), first
  messages = []
  _cached(path, dataclasses.replace(es, seed=1), train_set, test_set,
          messages.append)
  assert any("other settings; retraining" in m for m in messages), messages


def test_floor_images_are_distinct_and_ordered(train_set):
  floor = feature_distance.floor_images(np.arange(100), 30, seed=3)
  assert len(set(floor.tolist())) == 30
  assert np.all(np.diff(floor) > 0)
  np.testing.assert_array_equal(
      floor, feature_distance.floor_images(np.arange(100), 30, seed=3))
  # Asking for more than there are gives all of them.
  np.testing.assert_array_equal(
      feature_distance.floor_images(train_set.images, 10**6, seed=0),
      train_set.images)


def test_eval_settings_defaults_and_errors(tmp_path):
  # mnist_ddpm does not override config.eval: the dataclass defaults.
  assert settings.section(mnist_ddpm.get_config(), "eval") == (
      settings.EvalSettings())
  c = mnist_ddpm.get_config("tiny")
  c.eval = ml_collections.ConfigDict(dict(num_sample=10))
  with pytest.raises(ValueError, match="num_samples"):
    settings.section(c, "eval")
  c.eval = settings.default_config().eval
  c.eval.num_samples = 1
  # The mode checks its settings before it looks for a checkpoint.
  with pytest.raises(ValueError, match=">= 2"):
    eval_mode.run(c, str(tmp_path))


@pytest.mark.slow
def test_eval_mode_end_to_end(tmp_path, cache_dir, clf):
  """Train the tiny DDGM for 2 steps, then `--mode eval` writes its JSON."""
  del clf  # the cached classifier is reused, not retrained.
  c = mnist_ddgm.get_config("tiny")
  c.data.name = DATASET
  c.data.num_classes = K
  c.training.num_train_steps = 2
  c.training.sample_every = 0
  c.eval.cache_dir = cache_dir
  workdir = str(tmp_path)
  run.main(c, workdir, "train")
  run.main(c, workdir, "eval")
  path = os.path.join(workdir, f"eval_ddgm_{c.sampling.steps}.json")
  with open(path) as f:
    res = json.load(f)
  n = c.eval.num_samples
  assert sum(res["histogram"]) == n and len(res["histogram"]) == K
  assert res["num_samples"] == n and res["num_floor_images"] == n
  assert res["step"] == 2 and res["method"] == "ddgm"
  # Two training steps make noise, far from real images at equal N.
  assert res["fd"] > res["floor"] > 0
  assert res["sample_seconds"] > 0
  grid = os.path.join(workdir, f"eval_ddgm_{c.sampling.steps}.png")
  assert res["grid"] == grid and os.path.getsize(grid) > 0
  assert res["classifier_path"] == os.path.join(cache_dir,
                                                f"classifier_{DATASET}")
