"""OrganAMNIST score model: VP-SDE with a cosine schedule, an attention U-Net
(8 heads, 6.8M parameters) and the FFT frequency loss; used for DPS denoising.

    python launch.py --config configs/organamnist.py --workdir runs/organ
    python launch.py --config configs/organamnist.py:tiny --workdir /tmp/t
    python launch.py --config configs/organamnist.py:quickstart --workdir runs/qs
"""
from configs import base


def get_config(variant: str = ""):
  c = base.get_config()
  c.data.name = "organamnist"
  c.data.num_classes = 11
  c.model.name = "unet"
  c.model.kwargs = dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2,
                        attn_resolutions=(14, 7), num_heads=8, dropout=0.1)
  c.diffusion.sde = "vp"
  c.diffusion.schedule = "cosine"
  c.diffusion.num_steps = 0
  c.training.batch_size = 128
  c.training.lr = 2e-4
  c.training.warmup_steps = 500
  c.training.num_train_steps = 50_000
  c.training.lambda_freq = 0.1
  c.training.sample_every = 2500
  c.training.checkpoint_every = 2500
  c.sampling.method = "dpm_solver_pp"
  c.sampling.steps = 50
  c.sampling.grid = "quadratic"
  if variant == "tiny":
    c.data.limit = 256
    c.model.kwargs = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1,
                          attn_resolutions=(14,), num_heads=2, dropout=0.0)
    c.training.batch_size = 16
    c.training.num_train_steps = 4
    c.training.warmup_steps = 0
    c.training.log_every = 2
    c.training.sample_every = 4
    c.training.checkpoint_every = 2
    c.sampling.steps = 8
    c.sampling.num_samples = 8
    c.sampling.batch_size = 8
  elif variant == "quickstart":
    # Offline: the OrganAMNIST subset shipped inside the package.
    c.data.name = "organamnist_small"
    c.model.kwargs = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1,
                          attn_resolutions=(7,), num_heads=4, dropout=0.0)
    c.training.batch_size = 64
    c.training.num_train_steps = 600
    c.training.warmup_steps = 50
    c.training.lr = 1e-3
    c.training.log_every = 20
    c.training.sample_every = 300
    c.training.checkpoint_every = 300
    c.sampling.steps = 20
    c.sampling.num_samples = 36
    c.sampling.batch_size = 36
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; use '', 'tiny' or "
                     "'quickstart'.")
  return c
