"""jaxdiff: diffusion models in JAX/Flax that train, sample, denoise and
classify. The public API:

* `schedules`, `sde`: pure diffusion math (VP/sub-VP/VE, linear/cosine).
* `samplers`: one `lax.scan` integrator; samplers by name (`SAMPLERS`).
* `models`: U-Net and the coursework CNN (`make_model`).
* `losses`: noise MSE + frequency loss.
* `train`: `train_and_evaluate`, `train_step`, `TrainState`.
* `checkpoint`, `metrics`, `viz`, `data`: services.
"""
from jaxdiff import data
from jaxdiff import gamma  # registers the 'ddgm' sampler
from jaxdiff import losses
from jaxdiff import metrics
from jaxdiff import models
from jaxdiff import samplers
from jaxdiff import schedules
from jaxdiff import sde
from jaxdiff.losses import diffusion_loss
from jaxdiff.models import make_model
from jaxdiff.samplers import SAMPLERS, integrate, make_sampler, sample, time_grid
from jaxdiff.schedules import make_schedule
from jaxdiff.sde import SDES, VESDE, VPSDE, SubVPSDE, make_sde

__version__ = "0.1.0"
