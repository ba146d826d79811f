"""Flow matching (rectified flow) on OrganAMNIST: the same U-Net and data as
configs/organamnist.py, trained on x_t = (1 - t) x0 + t n to predict the
velocity n - x0 (`config.model.prediction = "velocity"`), sampled by the
ODE samplers on their own grids, unclipped.

    python launch.py --config configs/organamnist_flow.py --workdir runs/flow
    python launch.py --config configs/organamnist_flow.py:cpu --workdir runs/flow_cpu
    python launch.py --config configs/organamnist_flow.py:tiny --workdir /tmp/t

Variants: those of configs/organamnist.py ('', 'tiny', 'cpu' and the
inverse-problem ones). The same recipe with v-prediction on the VP
process is `configs/organamnist.py --config.model.prediction=v`; every
parameterization is compared in docs/parameterizations/.
"""
from configs import organamnist


def get_config(variant: str = ""):
  c = organamnist.get_config(variant)
  c.diffusion.sde = "flow"
  c.model.prediction = "velocity"
  c.init_from = ""  # the shipped organamnist_cpu model is a VP v-model
  c.sampling.method = "dpm_solver_pp"
  c.sampling.grid = "default"
  c.sampling.clip_denoised = False
  if variant not in ("tiny",):
    c.sampling.steps = 20
  return c
