"""jaxdiff: diffusion models in JAX/Flax that train, sample, denoise and
classify. The public API (submodules load on first use, so `import jaxdiff`
and loading a config stay cheap):

* `schedules`, `sde`: pure diffusion math (VP/sub-VP/VE, rectified flow,
  linear/cosine).
* `denoiser`: what a network's output means (eps, x0, v, velocity, EDM;
  `make_parameterization`) and the denoiser every sampler, DPS and the
  classifier call: `model_denoiser(...)(x, t) -> Prediction(eps, x0)`.
* `samplers`: one `lax.scan` integrator; samplers by name (`SAMPLERS`).
* `grids`: time grids by name (`GRIDS`, `time_grid`).
* `models`: U-Net and the coursework CNN (`make_model`).
* `losses`: the diffusion loss (weightings) + frequency loss.
* `settings`: every config default, one typed dataclass per section.
* `trained`: a trained model from a workdir (`trained.restore`).
* `train`: `train_and_evaluate`, `train_step`, `TrainState`.
* `inverse`, `classifier`, `feature_distance`, `figures`: DPS / Tweedie
  denoising, the diffusion classifier, sample quality and figure data, as
  libraries (arrays and typed settings in, arrays and numbers out).
* `checkpoint`, `metrics`, `viz`, `data`: services.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = ("checkpoint", "classifier", "config", "data", "denoiser",
               "feature_distance", "figures", "gamma", "grids", "inverse",
               "losses", "metrics", "models", "samplers", "schedules", "sde",
               "settings", "train", "trained", "viz")
_NAMES = {
    "diffusion_loss": "losses", "make_model": "models",
    "SAMPLERS": "samplers", "integrate": "samplers",
    "make_sampler": "samplers", "sample": "samplers", "time_grid": "grids",
    "make_schedule": "schedules", "SDES": "sde", "VESDE": "sde",
    "VPSDE": "sde", "SubVPSDE": "sde", "FlowSDE": "sde", "make_sde": "sde",
    "PARAMETERIZATIONS": "denoiser", "Prediction": "denoiser",
    "eps_denoiser": "denoiser", "make_parameterization": "denoiser",
    "model_denoiser": "denoiser",
}

__all__ = sorted(_SUBMODULES + tuple(_NAMES))


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxdiff.{name}")
  if name in _NAMES:
    return getattr(importlib.import_module(f"jaxdiff.{_NAMES[name]}"), name)
  raise AttributeError(f"module 'jaxdiff' has no attribute {name!r}")


def __dir__():
  return __all__
