"""The diffusion classifier: a class-conditional model as a zero-shot classifier.

For an image x0 and each class c, the classifier measures how well the
conditional network denoises x0 under label c,

    err_c(x0) = sum_j w_j || eps_theta(alpha_j x0 + sigma_j eps_j, t_j, c) - eps_j ||^2
                / sum_j w_j,

over a FIXED set of n (t_j, eps_j) pairs that is the same for every class and
every image, and predicts argmin_c err_c (Li et al. 2023, "Your diffusion
model is secretly a zero-shot classifier"). err_c is a Monte-Carlo estimate
of the eps-MSE term of the negative ELBO of x0 given c, so argmin_c is
approximately argmax_c log p(x0 | c) = argmax_c p(c | x0) under a uniform
class prior. Sharing the pairs across classes makes the comparison a paired
one: the noise draw that dominates each error cancels in the differences.
eps_theta is the network's noise estimate (`Prediction.eps`) whatever its
parameterization (`jaxdiff.denoiser`): an x0, v or EDM network is scored by
the same eps-MSE.

Time weighting (`WEIGHTINGS`):

* "uniform" (default): w_j = 1, i.e. the plain eps-MSE averaged over t.
  This is the training objective's weighting; the literature finds it
  classifies better than the true ELBO weighting, which puts almost all mass
  on the smallest t, where every class denoises equally well.
* "elbo": w(t) = g(t)^2 / sigma(t)^2 = -d log SNR / dt, the continuous-time
  ELBO's weight of the eps-MSE (Kingma et al. 2021).

Times form a Weyl sequence t_j = frac(u0 + j / golden ratio) over (t_min, 1]
(snapped to the steps i/T of a discrete chain), so every prefix of the pairs
spreads over the whole time range; the noise of pair j depends on (key, j)
alone. The first n pairs are therefore the same whatever the total number.

Pruning (optional): after n1 pairs over all K classes, keep the k classes
with the smallest error and evaluate n2 further pairs on those only; the
final error of a kept class is its weighted mean over all n1 + n2 pairs.
Cost: K n1 + k n2 network evaluations per image instead of K (n1 + n2).

Layout:

* `scoring`: the pairs, their weights, the per-class errors of a batch and
  the jitted classifier (`make_classify_fn`).
* `batched`: classification of a whole uint8 image set in fixed-size
  batches, with its timing; the time-per-image curve; the confusion matrix.
* `denoising`: one-step Tweedie denoising with the true and the null label
  (`label_vs_null_denoising`).

The settings are `jaxdiff.settings.ClassifySettings` (`config.classify`);
`--mode classify` (`jaxdiff/modes/classify.py`) runs it on a trained model.
"""
from jaxdiff.classifier import batched
from jaxdiff.classifier import denoising
from jaxdiff.classifier import scoring
from jaxdiff.classifier.batched import (accuracy_summary, confusion_matrix,
                                        image_batches, run_classifier,
                                        timing_curve)
from jaxdiff.classifier.denoising import (gaussian_filter_baseline,
                                          label_vs_null_denoising,
                                          noise_level_time,
                                          tweedie_with_and_without_label)
from jaxdiff.classifier.scoring import (WEIGHTINGS, Classification,
                                        LabelledDenoiseFn, Pairs,
                                        check_settings, classify_batch,
                                        denoising_errors, elbo_weight,
                                        labelled_denoiser, make_classify_fn,
                                        make_pairs, network_evaluations,
                                        pair_times, settings_pairs,
                                        uniform_weight)

__all__ = [
    "WEIGHTINGS", "Classification", "LabelledDenoiseFn", "Pairs",
    "accuracy_summary", "batched", "check_settings", "classify_batch",
    "confusion_matrix", "denoising", "denoising_errors", "elbo_weight",
    "gaussian_filter_baseline",
    "image_batches", "label_vs_null_denoising", "labelled_denoiser",
    "make_classify_fn",
    "make_pairs", "network_evaluations", "noise_level_time", "pair_times",
    "run_classifier", "scoring", "settings_pairs", "timing_curve",
    "tweedie_with_and_without_label", "uniform_weight",
]
