"""Inverse problems y = clip(A x + sigma n, -1, 1) with a diffusion prior.

* `operators`: the linear operators A by name (`OPERATORS`, `make_operator`).
* `likelihood`: the noise models log p(y | x) (`NOISE_MODELS`) and the
  `InverseProblem` (operator, sigma, noise model; `measure`, `impute`).
* `dps`: Diffusion Posterior Sampling on any sampler (`dps_stepper`).
* `methods`: the reconstructions by name (`METHODS`, `make_method`,
  `MethodSettings`): tweedie, dps, dps_matched, matched, posterior_mean.
* `protocol`: the denoising protocol, written once: the measurement, the
  PSNR/SSIM conventions, the matched time and the one-step Tweedie estimate.
* `benchmark`: typed `DenoiseSettings` -> problem and methods; batched runs
  over a data set and devices (what `--mode denoise` calls).
"""
from jaxdiff.inverse import benchmark
from jaxdiff.inverse import protocol
from jaxdiff.inverse.benchmark import (check_settings, make_methods,
                                       make_problem, method_settings)
from jaxdiff.inverse.dps import DPS_WEIGHTINGS, dps_stepper
from jaxdiff.inverse.likelihood import (NOISE_MODELS, InverseProblem,
                                        clipped_log_likelihood,
                                        gaussian_log_likelihood)
from jaxdiff.inverse.methods import (CLIPPING_SAMPLERS, METHODS, Method,
                                     MethodSettings, make_method)
from jaxdiff.inverse.operators import (OPERATORS, Operator, OperatorOptions,
                                       gaussian_kernel, make_operator)
from jaxdiff.inverse.protocol import (DATA_RANGE, image_metrics, matched_time,
                                      measure, tweedie)

__all__ = [
    "CLIPPING_SAMPLERS", "DATA_RANGE", "DPS_WEIGHTINGS", "METHODS",
    "NOISE_MODELS", "OPERATORS", "InverseProblem", "Method", "MethodSettings",
    "Operator", "OperatorOptions", "benchmark", "check_settings",
    "clipped_log_likelihood", "dps_stepper", "gaussian_kernel",
    "gaussian_log_likelihood", "image_metrics", "make_method",
    "make_methods", "make_operator", "make_problem", "matched_time",
    "measure", "method_settings", "protocol", "tweedie",
]
