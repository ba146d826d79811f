"""MNIST DDPM with the coursework CNN (linear betas 1e-4..0.02, T=1000).

    python launch.py --config configs/mnist_ddpm.py --workdir runs/mnist_ddpm
    python launch.py --config configs/mnist_ddpm.py:tiny --workdir /tmp/t
    # Fashion-MNIST: --config.data.name=fashion_mnist
"""
from configs import base


def get_config(variant: str = ""):
  c = base.get_config()
  c.data.name = "mnist"
  c.model.name = "cnn"
  c.model.kwargs = dict(hidden=(16, 32, 32, 16), kernel_size=7,
                        last_kernel_size=3, time_embeddings=16)
  c.diffusion.sde = "vp"
  c.diffusion.schedule = "linear"
  c.diffusion.num_steps = 1000
  c.diffusion.schedule_kwargs = dict(beta_start=1e-4, beta_end=0.02)
  c.training.batch_size = 128
  c.training.lr = 2e-4
  c.training.grad_clip = 0.0
  c.training.num_train_steps = 469 * 20   # 20 epochs of 60k images
  c.training.sample_every = 469           # once per epoch
  c.training.checkpoint_every = 469
  c.sampling.method = "ddpm"
  c.sampling.steps = 1000
  if variant == "tiny":
    _tiny(c)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; use '' or 'tiny'.")
  return c


def _tiny(c):
  c.data.limit = 256
  c.model.kwargs.hidden = (8, 8)
  c.training.batch_size = 16
  c.training.num_train_steps = 4
  c.training.log_every = 2
  c.training.sample_every = 4
  c.training.checkpoint_every = 2
  c.sampling.steps = 8
  c.sampling.num_samples = 8
  c.sampling.batch_size = 8
