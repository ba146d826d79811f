"""Tests for jaxdiff.classifier: the diffusion classifier on Gaussian blobs
with an exact per-class eps, pruning, shared pairs, the batched runner and
its timing curve, Tweedie denoising with and without the label, and the
classify / sample modes end to end (slow)."""
from __future__ import annotations

import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdiff import classifier
from jaxdiff import denoiser
from jaxdiff import run as run_lib
from jaxdiff import sde as sde_lib
from jaxdiff import settings as settings_lib
from jaxdiff.modes import classify as classify_mode

REPO = pathlib.Path(__file__).resolve().parents[1]

# K Gaussian blobs: class c is N(MU[c], S2 I) on SHAPE. Then
# x_t | c ~ N(alpha MU[c], (alpha^2 S2 + sigma^2) I), so the exact eps under
# label c is sigma (x_t - alpha MU[c]) / (alpha^2 S2 + sigma^2); the null
# label K gets the eps of the equal-weight mixture (posterior-weighted).
K, S2 = 4, 0.04
SHAPE = (4, 4, 1)
MU = 0.5 * np.random.default_rng(0).standard_normal((K, *SHAPE))


def _blob_apply_fn(sde):
  """apply_fn(params, x, t, y) with the exact eps of the blobs."""
  def apply_fn(params, x, t, y):
    mu = params["mu"]                                     # [K, H, W, C]
    a = sde_lib.bcast(sde.alpha(t), x)                    # [B, 1, 1, 1]
    s = sde_lib.bcast(sde.sigma(t), x)
    v = a**2 * S2 + s**2
    eps_all = s[:, None] * (x[:, None] - a[:, None] * mu[None]) / v[:, None]
    logp = -jnp.sum((x[:, None] - a[:, None] * mu[None])**2,
                    axis=(2, 3, 4)) / (2 * v[:, :, 0, 0])  # [B, K]
    w = jax.nn.softmax(logp, axis=-1)                     # [B, K]
    mixture = jnp.einsum("bk,bkhwc->bhwc", w, eps_all)
    cond = jnp.take_along_axis(
        eps_all, jnp.minimum(y, K - 1)[:, None, None, None, None], axis=1)[:, 0]
    return jnp.where((y == K)[:, None, None, None], mixture, cond)
  return apply_fn


def _blob_samples(per_class, seed=1):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(K), per_class)
  x = MU[labels] + math.sqrt(S2) * rng.standard_normal((len(labels), *SHAPE))
  return jnp.asarray(x, jnp.float32), labels


@pytest.fixture(name="vp", scope="module")
def fixture_vp():
  return sde_lib.make_sde("vp", schedule="linear")


@pytest.fixture(name="chain", scope="module")
def fixture_chain():
  return sde_lib.make_sde("vp", schedule="linear", num_steps=1000,
                          schedule_kwargs=dict(beta_start=1e-4, beta_end=0.02))


PARAMS = {"mu": jnp.asarray(MU, jnp.float32)}


# ------------------------------------------------------------------- pairs


def test_pairs_are_prefixes_and_spread(vp, chain):
  key = jax.random.key(3)
  big = classifier.make_pairs(vp, key, 40, SHAPE)
  small = classifier.make_pairs(vp, key, 8, SHAPE)
  np.testing.assert_array_equal(small.t, big.t[:8])
  np.testing.assert_array_equal(small.noise, big.noise[:8])
  t = np.asarray(big.t)
  assert np.all((t > vp.t_min) & (t <= 1.0))
  # Any 20-pair prefix of a Weyl sequence puts 3..7 times in each quarter.
  counts = np.histogram(t[:20], bins=4, range=(0, 1))[0]
  assert counts.min() >= 3 and counts.max() <= 7, counts
  # The noise is standard normal.
  noise = np.asarray(big.noise)
  assert abs(noise.mean()) < 0.1 and abs(noise.std() - 1) < 0.1
  # A chain's times are its steps i / T, i in 1..T.
  steps = np.asarray(classifier.make_pairs(chain, key, 50, SHAPE).t) * 1000
  np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
  assert steps.min() >= 1 and steps.max() <= 1000
  # A time window [t_min, t_max]: continuous times and chain steps inside it.
  t = np.asarray(classifier.make_pairs(vp, key, 50, SHAPE, t_min=0.2,
                                       t_max=0.6).t)
  assert t.min() >= 0.2 and t.max() <= 0.6 and t.max() - t.min() > 0.3
  steps = np.asarray(classifier.make_pairs(chain, key, 50, SHAPE, t_min=0.2,
                                           t_max=0.6).t) * 1000
  assert steps.min() >= 200 and steps.max() <= 600
  with pytest.raises(ValueError, match="t_min"):
    classifier.make_pairs(vp, key, 5, SHAPE, t_min=0.7, t_max=0.6)


def test_elbo_weight_is_minus_dlogsnr_dt(vp):
  pairs = classifier.make_pairs(vp, jax.random.key(0), 16, SHAPE,
                                weighting="elbo")
  t = np.asarray(pairs.t, np.float64)
  beta = 0.1 + t * (20.0 - 0.1)                     # linear VP, defaults
  int_beta = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
  np.testing.assert_allclose(pairs.weight, beta / -np.expm1(-int_beta),
                             rtol=1e-4)
  uniform = classifier.make_pairs(vp, jax.random.key(0), 16, SHAPE)
  np.testing.assert_array_equal(uniform.weight, np.ones(16))


# -------------------------------------------------------------- classifier


@pytest.mark.parametrize("weighting", ["uniform", "elbo"])
def test_recovers_blob_classes(vp, weighting):
  x, labels = _blob_samples(12)
  pairs = classifier.make_pairs(vp, jax.random.key(0), 16, SHAPE,
                                weighting=weighting)
  fn = classifier.make_classify_fn(_blob_apply_fn(vp), vp, K, num_pairs=16)
  out = fn(PARAMS, x, pairs)
  assert out.errors.shape == (len(labels), K)
  assert np.mean(np.asarray(out.pred) == labels) >= 0.95


def test_recovers_blob_classes_on_a_chain(chain):
  x, labels = _blob_samples(8, seed=2)
  pairs = classifier.make_pairs(chain, jax.random.key(1), 16, SHAPE)
  fn = classifier.make_classify_fn(_blob_apply_fn(chain), chain, K,
                                   num_pairs=16)
  assert np.mean(np.asarray(fn(PARAMS, x, pairs).pred) == labels) >= 0.95


def test_pruning_keeps_true_class_and_matches_full_errors(vp):
  x, labels = _blob_samples(8, seed=3)
  n1, n2 = 4, 8
  pairs = classifier.make_pairs(vp, jax.random.key(5), n1 + n2, SHAPE)
  apply_fn = _blob_apply_fn(vp)
  pruned = classifier.make_classify_fn(
      apply_fn, vp, K, num_pairs=n1, prune_top_k=2, num_pairs_pruned=n2)(
          PARAMS, x, pairs)
  cand = np.asarray(pruned.candidates)
  assert cand.shape == (len(labels), 2)
  assert np.all(cand[:, 0] != cand[:, 1])
  assert np.all((cand == labels[:, None]).any(axis=1))
  assert np.mean(np.asarray(pruned.pred) == labels) >= 0.95
  # The kept classes' final errors are their errors over all n1 + n2 pairs.
  full = classifier.make_classify_fn(apply_fn, vp, K, num_pairs=n1 + n2)(
      PARAMS, x, pairs)
  np.testing.assert_allclose(
      pruned.final_errors,
      np.take_along_axis(np.asarray(full.errors), cand, axis=1), rtol=1e-5)
  assert classifier.network_evaluations(K, settings_lib.ClassifySettings(
      num_pairs=n1, prune_top_k=2, num_pairs_pruned=n2)) == K * n1 + 2 * n2
  assert classifier.network_evaluations(K, settings_lib.ClassifySettings(
      num_pairs=n1, num_pairs_pruned=0)) == K * n1


def test_gamma_process_is_refused():
  from jaxdiff import gamma  # pylint: disable=g-import-not-at-top
  process = gamma.make_gamma_process("linear", num_steps=100, theta0=1e-3)
  with pytest.raises(ValueError, match="diffusion classifier assumes "
                     "Gaussian noise.*noise='gaussian'"):
    classifier.make_classify_fn(_blob_apply_fn(process), process, K,
                                num_pairs=2)
  with pytest.raises(ValueError, match="Gaussian"):
    classifier.label_vs_null_denoising(
        _blob_apply_fn(process), PARAMS, process,
        np.zeros((2, *SHAPE), np.uint8), np.zeros(2, int), sigma_noise=0.2,
        num_classes=K, key=jax.random.key(0), batch_size=2)


def test_pairs_shared_across_classes(vp):
  x, _ = _blob_samples(3)
  pairs = classifier.make_pairs(vp, jax.random.key(7), 6, SHAPE)
  # A network that ignores the label gives every class the same error.
  ignore = lambda params, x_t, t, y: 0.3 * x_t
  out = classifier.make_classify_fn(ignore, vp, K, num_pairs=6)(
      PARAMS, x, pairs)
  errors = np.asarray(out.errors)
  np.testing.assert_array_equal(errors, errors[:, :1].repeat(K, axis=1))
  # eps_hat = 0: the error is the mean square of the pairs' noise, whatever
  # the image or class.
  zero = lambda params, x_t, t, y: jnp.zeros_like(x_t)
  out = classifier.make_classify_fn(zero, vp, K, num_pairs=6)(
      PARAMS, x, pairs)
  expected = np.mean(np.asarray(pairs.noise, np.float64)**2)
  np.testing.assert_allclose(out.errors, np.full((len(x), K), expected),
                             rtol=1e-5)


def test_settings_pairs_cover_classification_and_timing(vp):
  cs = settings_lib.ClassifySettings(num_pairs=3, prune_top_k=2,
                                     num_pairs_pruned=4, timing_pairs="2,5",
                                     seed=4, weighting="elbo")
  pairs = classifier.settings_pairs(vp, cs, SHAPE)
  assert pairs.t.shape == (7,) and pairs.noise.shape == (7, *SHAPE)
  small = classifier.make_pairs(vp, jax.random.key(4), 5, SHAPE,
                                weighting="elbo")
  np.testing.assert_array_equal(pairs.slice(0, 5).noise, small.noise)
  np.testing.assert_array_equal(pairs.slice(0, 5).weight, small.weight)
  longer = classifier.settings_pairs(
      vp, settings_lib.ClassifySettings(num_pairs=3, timing_pairs="9",
                                        seed=4, weighting="elbo"), SHAPE)
  assert longer.t.shape == (9,)


def _blob_uint8(per_class, seed):
  x, labels = _blob_samples(per_class, seed=seed)
  images = np.clip(np.round((np.asarray(x) + 1) * 127.5), 0, 255)
  return images.astype(np.uint8), labels


def test_run_classifier_batches_like_one_call(vp):
  images, labels = _blob_uint8(5, seed=6)                  # 20 images
  pairs = classifier.make_pairs(vp, jax.random.key(2), 8, SHAPE)
  fn = classifier.make_classify_fn(_blob_apply_fn(vp), vp, K, num_pairs=8)
  seen = []

  def progress(batches, num_images, batch_size):
    seen.append((len(batches), num_images, batch_size))
    return batches

  res = classifier.run_classifier(fn, PARAMS, images, pairs, 6,
                                  progress=progress)
  assert seen == [(4, 20, 6)]  # 6 + 6 + 6 + 2 (padded) images.
  x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
  whole = fn(PARAMS, x, pairs)
  np.testing.assert_array_equal(res["pred"], whole.pred)
  np.testing.assert_allclose(res["errors"], whole.errors, rtol=1e-5)
  assert res["seconds"] > 0 and res["compile_seconds"] > 0
  assert np.mean(res["pred"] == labels) >= 0.9


def test_timing_curve_counts_pairs_and_accuracy(vp):
  images, labels = _blob_uint8(3, seed=7)                  # 12 images
  pairs = classifier.make_pairs(vp, jax.random.key(3), 6, SHAPE)
  apply_fn = _blob_apply_fn(vp)
  curve = classifier.timing_curve(apply_fn, PARAMS, vp, images, labels, pairs,
                                  K, counts=[2, 6], batch_size=50)
  assert [c["num_pairs"] for c in curve] == [2, 6]
  assert all(c["num_images"] == 12 and c["seconds_per_image"] > 0
             for c in curve)
  for c in curve:
    fn = classifier.make_classify_fn(apply_fn, vp, K,
                                     num_pairs=c["num_pairs"])
    pred = classifier.run_classifier(
        fn, PARAMS, images, pairs.slice(0, c["num_pairs"]), 12)["pred"]
    assert c["accuracy"] == pytest.approx(np.mean(pred == labels))


def test_confusion_matrix():
  cm = classifier.confusion_matrix(np.array([0, 0, 1, 2, 2]),
                                   np.array([0, 1, 1, 2, 0]), 3)
  np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])
  summary = classifier.accuracy_summary(np.pad(cm, ((0, 1), (0, 1))))
  assert summary["accuracy"] == pytest.approx(3 / 5)
  assert summary["per_class_accuracy"] == [0.5, 1.0, 0.5, None]


# ------------------------------------------------- denoising with the label


def test_noise_level_time_vp_linear(vp, chain):
  for s in (0.1, 0.5, 2.0):
    t = classifier.noise_level_time(vp, s)
    # sigma^2 / alpha^2 = exp(int_beta) - 1 = s^2, int_beta quadratic in t.
    c = math.log1p(s**2)
    a, b = 0.5 * (20.0 - 0.1), 0.1
    assert isinstance(t, float)
    assert t == pytest.approx((-b + math.sqrt(b * b + 4 * a * c)) / (2 * a),
                              rel=1e-5)
  with pytest.raises(ValueError, match="denoise_sigmas has 10000.0: .*outside.*to ''"):
    classifier.noise_level_time(vp, 1e4)
  # On a chain the time is not snapped to a step i / T.
  t = classifier.noise_level_time(chain, 0.2)
  assert abs(t * 1000 - round(t * 1000)) > 1e-3
  np.testing.assert_allclose(float(chain.sigma(t) / chain.alpha(t)), 0.2,
                             rtol=1e-4)


def test_tweedie_with_and_without_label_is_exact(vp):
  x, labels = _blob_samples(5, seed=4)
  s = 0.3
  noisy = x + s * jax.random.normal(jax.random.key(0), x.shape)
  t = classifier.noise_level_time(vp, s)
  with_label, null = jax.jit(
      lambda p, x, y: classifier.tweedie_with_and_without_label(
          _blob_apply_fn(vp), p, vp, x, y, t, K))(PARAMS, noisy,
                                                  jnp.asarray(labels))
  # y = x + s n: E[x | y, c] = (S2 y + s^2 MU[c]) / (S2 + s^2); the mixture
  # mean weights the classes by N(y; MU[c], (S2 + s^2) I).
  y = np.asarray(noisy, np.float64)
  post = (S2 * y[:, None] + s**2 * MU[None]) / (S2 + s**2)  # [B, K, ...]
  logp = -np.sum((y[:, None] - MU[None])**2, axis=(2, 3, 4)) / (2 * (S2 + s**2))
  w = np.exp(logp - logp.max(1, keepdims=True))
  w /= w.sum(1, keepdims=True)
  np.testing.assert_allclose(with_label, np.clip(
      post[np.arange(len(labels)), labels], -1, 1), atol=2e-4)
  np.testing.assert_allclose(null, np.clip(
      np.einsum("bk,bkhwc->bhwc", w, post), -1, 1), atol=2e-4)


def test_label_vs_null_denoising_label_helps(vp):
  images, labels = _blob_uint8(6, seed=5)
  out = classifier.label_vs_null_denoising(
      _blob_apply_fn(vp), PARAMS, vp, images, labels, sigma_noise=2.0,
      num_classes=K, key=jax.random.key(0), batch_size=10)
  assert out["psnr_label"].shape == (len(labels),)
  # Noise std 2 on a data range of 2: PSNR = 10 log10(4 / 4) = 0 dB. At this
  # level the blobs overlap, so knowing the class helps.
  assert np.mean(out["psnr_noisy"]) == pytest.approx(0.0, abs=0.5)
  assert np.mean(out["psnr_label"]) > np.mean(out["psnr_null"]) > np.mean(
      out["psnr_noisy"])
  assert out["t"] == classifier.noise_level_time(vp, 2.0)
  # The images come back in their order, whatever the batch size.
  again = classifier.label_vs_null_denoising(
      _blob_apply_fn(vp), PARAMS, vp, images, labels, sigma_noise=2.0,
      num_classes=K, key=jax.random.key(0), batch_size=7)
  np.testing.assert_allclose(again["label"], out["label"], atol=1e-6)


def test_gaussian_filter_baseline_picks_the_best_width():
  rng = np.random.default_rng(0)
  # Smooth images (a constant per image) plus white noise: the widest filter
  # that fits averages the most noise away; a 4x4 image leaves out widths
  # whose kernel is wider than 4 pixels.
  clean = np.repeat(rng.uniform(-0.5, 0.5, (6, 1, 1, 1)), 16, 1).reshape(
      6, 4, 4, 1).astype(np.float32)
  noisy = (clean + 0.3 * rng.standard_normal(clean.shape)).astype(np.float32)
  out, width = classifier.gaussian_filter_baseline(noisy, clean, batch_size=4)
  assert width == 1.0  # 1.4 and 2.0 need kernels of 11 and 13 taps
  assert out.shape == clean.shape
  err = lambda x: np.mean((x - clean) ** 2)
  assert err(out) < 0.5 * err(noisy)
  with pytest.raises(ValueError, match="No filter width"):
    classifier.gaussian_filter_baseline(noisy[:, :2, :2], clean[:, :2, :2],
                                        widths=(2.0,))


def test_guided_prediction_of_model_denoiser(vp):
  x, labels = _blob_samples(2)
  t = jnp.full((x.shape[0],), 0.4)
  apply_fn = _blob_apply_fn(vp)
  y = jnp.asarray(labels)

  @jax.jit
  def guided_cond_uncond(x, t, y):
    denoise_fn = denoiser.model_denoiser(
        apply_fn, PARAMS, vp, denoiser.eps_prediction(), labels=y,
        num_classes=K, guidance_scale=2.0)
    return (denoise_fn(x, t), apply_fn(PARAMS, x, t, y),
            apply_fn(PARAMS, x, t, jnp.full_like(y, K)))

  guided, cond, uncond = guided_cond_uncond(x, t, y)
  np.testing.assert_allclose(guided.eps, 3.0 * cond - 2.0 * uncond,
                             rtol=1e-5, atol=1e-6)
  # x0 is guided alike, so the pair stays consistent: x = alpha x0 + sigma eps.
  np.testing.assert_allclose(
      guided.x0, vp.eps_to_x0(x, guided.eps, t), rtol=1e-5, atol=1e-5)


def _blob_network(sde, param):
  """The blobs' exact denoiser written in the parameterization `param`: a
  network (params, x_in, t, y) -> F, its input scaled by c_in if any."""
  eps_apply = _blob_apply_fn(sde)

  def apply_fn(params, x_in, t, y):
    x = x_in
    if param.input_scale is not None:
      x = x_in / sde_lib.bcast(param.input_scale(sde, t), x_in)
    p = denoiser.from_eps(sde, x, t, eps_apply(params, x, t, y))
    return param.target(sde, p.x0, p.eps, t)

  return apply_fn


@pytest.mark.parametrize("prediction", ["x0", "v", "edm"])
def test_classifier_sees_only_the_prediction(vp, prediction):
  """A network predicting x0, v or EDM's F exactly scores every class with
  the same eps-MSE as the eps network, and denoises alike."""
  x, labels = _blob_samples(3)
  pairs = classifier.make_pairs(vp, jax.random.key(7), 8, SHAPE)
  param = denoiser.make_parameterization(prediction)
  ref = classifier.make_classify_fn(_blob_apply_fn(vp), vp, K, num_pairs=8)(
      PARAMS, x, pairs)
  got = classifier.make_classify_fn(_blob_network(vp, param), vp, K,
                                    num_pairs=8, param=param)(
      PARAMS, x, pairs)
  np.testing.assert_allclose(got.errors, ref.errors, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(got.pred, ref.pred)
  noisy = x + 0.3 * jax.random.normal(jax.random.key(0), x.shape)
  t = classifier.noise_level_time(vp, 0.3)
  y = jnp.asarray(labels)
  ref_pair = classifier.tweedie_with_and_without_label(
      _blob_apply_fn(vp), PARAMS, vp, noisy, y, t, K)
  got_pair = classifier.tweedie_with_and_without_label(
      _blob_network(vp, param), PARAMS, vp, noisy, y, t, K, param=param)
  np.testing.assert_allclose(got_pair, ref_pair, atol=1e-5)


# ------------------------------------------------------------------ options


def test_check_settings_errors():
  cs = settings_lib.ClassifySettings
  assert classifier.check_settings(cs(), 10) == cs()
  with pytest.raises(ValueError, match=r"prune_top_k=11 must be in \[0, 10\]"):
    classifier.check_settings(cs(prune_top_k=11), 10)
  with pytest.raises(ValueError, match="set --config.classify.prune_top_k"):
    classifier.check_settings(cs(num_pairs_pruned=5), 10)
  with pytest.raises(ValueError, match="Unknown time weighting 'snr'.*elbo"):
    classifier.check_settings(cs(weighting="snr"), 10)
  with pytest.raises(ValueError, match="comma-separated integers"):
    classifier.check_settings(cs(timing_pairs="10;20"), 10)
  for bad in ("0.1;0.2", "0.1,0", "-0.2"):
    with pytest.raises(ValueError, match="denoise_sigmas=.*positive numbers"):
      classifier.check_settings(cs(denoise_sigmas=bad), 10)
  assert cs(denoise_sigmas="0.1, 0.3").denoise_sigma_list == [0.1, 0.3]
  assert cs(denoise_sigmas="").denoise_sigma_list == []


# -------------------------------------------------------------- end to end


@pytest.fixture(name="trained", scope="module")
def fixture_trained(tmp_path_factory):
  """mnist_cond:tiny on the embedded OrganAMNIST subset, trained 2 steps."""
  from configs import mnist_cond  # pylint: disable=g-import-not-at-top
  config = mnist_cond.get_config("tiny")
  config.data.name = "organamnist_small"
  config.data.num_classes = 11
  workdir = str(tmp_path_factory.mktemp("cond"))
  run_lib.main(config, workdir, "train")
  return config, workdir


@pytest.mark.slow
def test_classify_mode_end_to_end(trained):
  config, workdir = trained
  run_lib.main(config, workdir, "classify")
  out = os.path.join(workdir, "classify")
  with open(os.path.join(out, "classify.json")) as f:
    report = json.load(f)
  cm = np.asarray(report["confusion_matrix"])
  n = config.classify.num_images
  assert cm.shape == (11, 11) and cm.sum() == n == report["num_images"]
  assert report["accuracy"] == pytest.approx(np.trace(cm) / n)
  assert [r["num_pairs"] for r in report["timing"]] == [2, 4]
  assert all(r["seconds_per_image"] > 0 for r in report["timing"])
  assert report["network_evaluations_per_image"] == 11 * 3 + 2 * 2
  (d,) = report["denoise"]
  # Noise std 0.2 on a data range of 2: about 10 log10(4 / 0.04) = 20 dB.
  assert d["sigma"] == 0.2
  assert d["psnr_noisy"] == pytest.approx(20.0, abs=0.5)
  assert np.isfinite(d["psnr_label"]) and np.isfinite(d["psnr_null"])
  # The filter is chosen among widths that include a near-identity one.
  assert d["psnr_filter"] > d["psnr_noisy"] - 0.5
  assert 0 < d["ssim_noisy"] < d["ssim_filter"] <= 1
  for name in ("confusion.png", "denoise_0.2.png"):
    with Image.open(os.path.join(out, name)) as img:
      assert img.format == "PNG" and min(img.size) > 100


@pytest.mark.slow
def test_sample_mode_one_row_per_class(trained):
  config, workdir = trained
  run_lib.main(config, workdir, "sample")
  name = f"samples_{config.sampling.method}_{config.sampling.steps}"
  with np.load(os.path.join(workdir, name + ".npz")) as z:
    labels, images = z["labels"], z["images"]
  # classes "0,1,2" and 6 samples: rows [0, 0], [1, 1], [2, 2].
  np.testing.assert_array_equal(labels.reshape(3, 2), [[0, 0], [1, 1], [2, 2]])
  assert images.shape == (6, 28, 28, 1)
  with Image.open(os.path.join(workdir, name + ".png")) as img:
    w, h = img.size
  # 3 rows of 2 cells (plus a label margin) is about 3/2 as tall as wide;
  # 1 row of 6 or 2 rows of 3 would be wider than tall.
  assert h / w > 1.2 and h / w < 1.8


def test_classify_mode_needs_conditional(tmp_path):
  from configs import mnist_ddpm  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="conditional=True"):
    classify_mode.run(mnist_ddpm.get_config("tiny"), str(tmp_path))


@pytest.mark.slow
def test_cifar10_tiny_end_to_end(real_data_dir, tmp_path):
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  config = cifar10.get_config("tiny")
  config.data.data_dir = real_data_dir
  workdir = str(tmp_path)
  for mode in ("train", "sample", "classify"):
    run_lib.main(config, workdir, mode)
  with open(os.path.join(workdir, "classify", "classify.json")) as f:
    report = json.load(f)
  # The first 4 test images are one each of classes 0..3 (interleaved order).
  assert np.asarray(report["confusion_matrix"]).sum(1).tolist() == (
      [1, 1, 1, 1] + [0] * 6)
  assert os.path.isfile(os.path.join(workdir, "classify", "confusion.png"))
