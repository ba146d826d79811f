"""The modes' config sections (eval, viz, classify, denoise, likelihood),
one frozen dataclass each; part of `jaxdiff.settings`, which re-exports
them (read that module's docstring). Standard library only.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List


def _is_int(value: Any, minimum: int) -> bool:
  """Whether `value` is an int (not a bool) >= minimum."""
  return (isinstance(value, int) and not isinstance(value, bool)
          and value >= minimum)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """`config.eval` (`--mode eval`): feature-space Frechet distance."""
  num_samples: int = 1000     # generated images (and real floor images)
  seed: int = 0               # samples, floor subset and classifier init
  cache_dir: str = ""         # "" -> <workdir>/cache
  feature_batch_size: int = 500  # classifier batch when extracting features
  feature_dim: int = 128      # width of the penultimate (feature) layer
  classifier_epochs: int = 3
  classifier_batch_size: int = 128
  classifier_lr: float = 1e-3
  classifier_limit: int = 0   # train on the first N images (0: all)

  def validate(self) -> "EvalSettings":
    if self.num_samples < 2:
      raise ValueError("config.eval.num_samples must be >= 2 for a Frechet "
                       f"distance, got {self.num_samples}.")
    return self


@dataclasses.dataclass(frozen=True)
class VizSettings:
  """`config.viz` (`--mode viz`): which figures, and their sizes."""
  figures: str = ""           # comma list of figure names; "" or "all": all
  seed: int = -1              # -1: config.seed
  forward_frames: int = 11    # frames of the forward strip
  schedule_steps: int = 1000  # T of the discrete curves in schedules.png
  reverse_samples: int = 16   # images per frame of reverse.gif
  reverse_frames: int = 60    # about this many frames in reverse.gif
  strip_frames: int = 10      # frames of reverse_strip.png
  strip_images: int = 4       # images per frame of reverse_strip.png
  hist_times: str = "0.1,0.5,0.9"  # fractions of T for noise_histograms.png
  hist_images: int = 64       # real images for the histograms
  denoise_sigma: float = 0.3  # noise std of the denoising comparison
  denoise_rows: int = 6       # test images in denoise_comparison.png


@dataclasses.dataclass(frozen=True)
class ClassifySettings:
  """`config.classify` (`--mode classify`): the diffusion classifier.

  Attributes:
    num_images: classify the first N images of `split`.
    split: the data split to classify.
    batch_size: images per jitted call (the network sees batch_size * K).
    num_pairs: n1, the (t, noise) pairs evaluated for every class.
    prune_top_k: k > 0 keeps the k best classes after n1 pairs; 0: no pruning.
    num_pairs_pruned: n2, further pairs evaluated on the kept classes only.
    weighting: time weighting of the per-pair errors, a `WEIGHTINGS` name.
    t_min, t_max: the pairs' times are spread over [t_min, t_max] (within
      the process's own range). The extremes carry little class information:
      near t = 0 every label denoises alike, near t = 1 the image is gone.
    seed: key of the fixed (t, noise) pairs.
    timing_pairs: comma-separated pair counts n for the time-per-image curve.
    timing_images: images classified for each point of that curve.
    denoise_sigmas: comma-separated stds (in [-1, 1] pixel units) of the
      Gaussian noise of the Tweedie denoising comparison, one comparison
      (and figure) each; '' skips it.
    use_ema: classify with the EMA parameters.
  """
  num_images: int = 1000
  split: str = "test"
  batch_size: int = 50
  num_pairs: int = 100
  prune_top_k: int = 0
  num_pairs_pruned: int = 0
  weighting: str = "uniform"
  t_min: float = 0.0
  t_max: float = 1.0
  seed: int = 0
  timing_pairs: str = "10,20,50,100"
  timing_images: int = 50
  denoise_sigmas: str = "0.2"
  use_ema: bool = True

  @property
  def timing_list(self) -> List[int]:
    return [int(n) for n in self.timing_pairs.split(",") if n.strip()]

  @property
  def denoise_sigma_list(self) -> List[float]:
    return [float(s) for s in self.denoise_sigmas.split(",") if s.strip()]

  @property
  def total_pairs(self) -> int:
    """Pairs an image meets: n1, plus n2 when pruning."""
    return self.num_pairs + (self.num_pairs_pruned if self.prune_top_k else 0)

  def validate(self, num_classes: int) -> "ClassifySettings":
    """Checks the values against K = num_classes; returns self."""
    for name in ("num_images", "batch_size", "num_pairs"):
      if getattr(self, name) < 1:
        raise ValueError(f"config.classify.{name} must be >= 1, got "
                         f"{getattr(self, name)}.")
    if not 0 <= self.prune_top_k <= num_classes:
      raise ValueError(
          f"config.classify.prune_top_k={self.prune_top_k} must be in "
          f"[0, {num_classes}] (0 turns pruning off).")
    if self.num_pairs_pruned < 0:
      raise ValueError("config.classify.num_pairs_pruned must be >= 0, got "
                       f"{self.num_pairs_pruned}.")
    if self.num_pairs_pruned and not self.prune_top_k:
      raise ValueError(
          "config.classify.num_pairs_pruned > 0 needs prune_top_k > 0; set "
          "--config.classify.prune_top_k (e.g. 2) or num_pairs_pruned=0.")
    if not 0.0 <= self.t_min < self.t_max <= 1.0:
      raise ValueError(
          f"config.classify.t_min={self.t_min} and t_max={self.t_max} must "
          "satisfy 0 <= t_min < t_max <= 1.")
    try:
      counts = self.timing_list
    except ValueError:
      raise ValueError(
          f"config.classify.timing_pairs={self.timing_pairs!r} must be "
          "comma-separated integers, e.g. '10,20,50,100' (or '' for none)."
      ) from None
    if any(n < 1 for n in counts):
      raise ValueError(f"config.classify.timing_pairs={self.timing_pairs!r} "
                       "must hold positive integers.")
    if self.timing_images < 1 and counts:
      raise ValueError("config.classify.timing_images must be >= 1.")
    try:
      sigmas = self.denoise_sigma_list
    except ValueError:
      sigmas = [-1.0]
    if any(s <= 0 for s in sigmas):
      raise ValueError(
          f"config.classify.denoise_sigmas={self.denoise_sigmas!r} must be "
          "comma-separated positive numbers, e.g. '0.1,0.2,0.3' (or '' for "
          "none).")
    return self


@dataclasses.dataclass(frozen=True)
class DenoiseSettings:
  """`config.denoise` (`--mode denoise`). Defaults: the OrganAMNIST protocol.

  Attributes:
    operator: a name in `jaxdiff.inverse.OPERATORS`.
    sigma: measurement noise standard deviation.
    noise_model: likelihood used by DPS: 'clipped' or 'gaussian'.
    clip_measurement: clip y to [-1, 1].
    methods: comma-separated names in `jaxdiff.inverse.METHODS`.
    steps: sampler steps (grid points) of the sampling methods.
    sampler: base sampler of DPS.
    clip_denoised: the base sampler clips its x0 estimate to [-1, 1]
      (ddpm, ddim and dpm_solver_pp only; keeps an imperfect network's early
      x0 = (x - sigma eps) / alpha, with alpha(1) ~ 0.01, from blowing up).
      DPS's likelihood always sees the unclipped estimate.
    grid: time grid kind.
    zeta: DPS guidance scale.
    dps_weighting: DPS step: 'normalised' (the paper's) or 'likelihood'
      (score of p(y | x_t) with x0's variance given x_t).
    prior_var: data variance of the 'likelihood' weighting.
    num_posterior: K of posterior_mean.
    posterior_batch: draws of posterior_mean computed together (0: all K).
    posterior_of: the method posterior_mean averages.
    antithetic: posterior_mean draws in antithetic pairs.
    impute_samples: imputations of y's clipped entries averaged by tweedie
      (clipped noise model only).
    num_images: the first N images of the split.
    method_num_images: fewer images for slow methods, e.g.
      'posterior_mean:50,dps:100' ('' = num_images for every method).
    batch_size: images per jitted call, split over the local devices (and
      rounded up to a multiple of their count; the extra rows are padding).
    noise_seed: seed of the measurement noise.
    data_split: data split the images come from.
    clip_output: clip reconstructions to [-1, 1].
    use_ema: use the EMA parameters.
    out_dir: output folder ('' = WORKDIR/denoise).
    figure_rows: images shown in comparison.png.
    missing_fraction, mask_seed, box_size, blur_sigma: operator parameters.
  """
  operator: str = "denoise"   # denoise | inpaint_random | inpaint_box |
  #                             blur | sr2 | sr4
  sigma: float = 0.3          # y = clip(A x + sigma n, -1, 1)
  noise_model: str = "clipped"  # likelihood: clipped | gaussian
  clip_measurement: bool = True
  methods: str = "tweedie,dps,dps_matched,posterior_mean"
  steps: int = 50             # sampler steps (DPS and matched methods)
  sampler: str = "ddpm"       # DPS base sampler (any of SAMPLERS)
  clip_denoised: bool = True  # sampler clips x0_hat (see config.sampling)
  grid: str = "uniform"       # or "default": the sampler's own grid
  zeta: float = 1.0           # DPS step: zeta * grad ||y - A x0_hat||
  dps_weighting: str = "normalised"  # or 'likelihood'
  prior_var: float = 1.0      # data variance of the 'likelihood' weighting
  num_posterior: int = 8      # K samples averaged by posterior_mean
  posterior_batch: int = 0    # draws computed together (0: all K)
  posterior_of: str = "dps"   # dps | dps_matched | matched
  antithetic: bool = False    # posterior_mean: draws in +-noise pairs
  impute_samples: int = 8     # tweedie: imputations of clipped pixels
  num_images: int = 300       # the first N images of the split
  method_num_images: str = ""  # e.g. "posterior_mean:50" for slow ones
  batch_size: int = 50
  noise_seed: int = 0
  data_split: str = "test"
  clip_output: bool = True
  use_ema: bool = True
  out_dir: str = ""           # "" -> WORKDIR/denoise
  figure_rows: int = 6
  missing_fraction: float = 0.5  # inpaint_random
  mask_seed: int = 0          # inpaint_random
  box_size: int = 12          # inpaint_box
  blur_sigma: float = 1.0     # blur

  @property
  def method_names(self) -> List[str]:
    names = [m.strip() for m in self.methods.split(",") if m.strip()]
    if not names:
      raise ValueError("config.denoise.methods is empty; list methods, e.g. "
                       "'tweedie,dps'.")
    return names

  def images_per_method(self) -> Dict[str, int]:
    """Images each method reconstructs (`method_num_images` applied)."""
    counts = {m: self.num_images for m in self.method_names}
    for item in filter(None, (s.strip() for s in
                              self.method_num_images.split(","))):
      name, _, num = item.partition(":")
      if name not in counts or not num.strip().isdigit() or int(num) < 1:
        raise ValueError(
            f"Bad config.denoise.method_num_images entry {item!r}; use "
            f"'method:N' with a method of {counts} and N >= 1.")
      counts[name] = min(int(num), self.num_images)
    return counts

  def validate(self) -> "DenoiseSettings":
    if self.num_images < 1 or self.batch_size < 1:
      raise ValueError(f"config.denoise.num_images and batch_size must be "
                       f">= 1, got {self.num_images}, {self.batch_size}.")
    self.images_per_method()
    return self


_LIKELIHOOD_CHOICES = {
    "method": ("auto", "ode", "chain"),
    "divergence": ("hutchinson", "exact"),   # jaxdiff.likelihood.DIVERGENCES
    "probe": ("rademacher", "gaussian"),     # PROBES
    "solver": ("dopri5", "tsit5"),           # SOLVERS
    "chain_variance": ("posterior", "beta"),  # VARIANCES
}


@dataclasses.dataclass(frozen=True)
class LikelihoodSettings:
  """`config.likelihood` (`--mode likelihood`): bits/dim of test images.

  Attributes:
    method: 'ode' (the probability-flow ODE of a continuous Gaussian
      process), 'chain' (the T-step DDPM chain's variational bound) or
      'auto' (chain for the discrete VP chain, else ode).
    num_images: the first N images of `data_split`.
    batch_size: images per jitted call, split over the local devices (and
      rounded up to a multiple of their count; the extra rows are padding).
    data_split: the data split the images come from.
    divergence: ode: 'hutchinson' (one probe per image per solve) or
      'exact' (D Jacobian-vector products; small images only).
    probe: ode, Hutchinson: 'rademacher' or 'gaussian'.
    solver: ode: 'dopri5' or 'tsit5' (adaptive PID steps).
    rtol, atol: ode: the step controller's tolerances.
    t_eps: ode: the start time of the solve; 0.0: the process's t_min.
    max_steps: ode: the solver's step budget (a solve that needs more is
      counted as failed).
    dequant_samples: ode: K uniform dequantizations per image
      (importance-weighted; 1 is the plain bound).
    chain_variance: chain: the reverse variance, 'posterior' (beta_tilde,
      the ddpm sampler's) or 'beta'.
    chain_terms: chain: 0 sums all T terms; k > 0 estimates the diffusion
      terms from k steps drawn per image (unbiased, much cheaper).
    seed: batch i uses the key fold_in(key(seed), i).
    use_ema: use the EMA parameters.
    out_dir: output folder ('' = WORKDIR/likelihood).
  """
  method: str = "auto"
  num_images: int = 1000
  batch_size: int = 50
  data_split: str = "test"
  divergence: str = "hutchinson"
  probe: str = "rademacher"
  solver: str = "dopri5"
  rtol: float = 1e-5
  atol: float = 1e-5
  t_eps: float = 0.0          # 0.0 -> the process's t_min
  max_steps: int = 4096
  dequant_samples: int = 1
  chain_variance: str = "posterior"
  chain_terms: int = 0        # 0 -> all T terms
  seed: int = 0
  use_ema: bool = True
  out_dir: str = ""           # "" -> WORKDIR/likelihood

  def validate(self) -> "LikelihoodSettings":
    for name, choices in _LIKELIHOOD_CHOICES.items():
      if getattr(self, name) not in choices:
        raise ValueError(f"config.likelihood.{name}={getattr(self, name)!r} "
                         f"must be one of {', '.join(choices)}.")
    for name in ("num_images", "batch_size", "max_steps", "dequant_samples"):
      if not _is_int(getattr(self, name), 1):
        raise ValueError(f"config.likelihood.{name} must be an integer >= 1, "
                         f"got {getattr(self, name)!r}.")
    if not _is_int(self.chain_terms, 0):
      raise ValueError("config.likelihood.chain_terms must be an integer >= 0 "
                       f"(0: all T terms), got {self.chain_terms!r}.")
    for name in ("rtol", "atol"):
      if not getattr(self, name) > 0:
        raise ValueError(f"config.likelihood.{name} must be > 0, got "
                         f"{getattr(self, name)!r}.")
    if not self.t_eps >= 0:
      raise ValueError("config.likelihood.t_eps must be >= 0 (0: the "
                       f"process's t_min), got {self.t_eps!r}.")
    return self
