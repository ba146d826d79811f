"""MNIST DDGM: configs/mnist_ddpm.py with centred gamma noise (theta_0 = 0.001).

The same CNN, chain (linear betas 1e-4..0.02, T=1000) and training; only the
noise of the forward process, the prior and the sampler ("ddgm") differ.

    python launch.py --config configs/mnist_ddgm.py --workdir runs/mnist_ddgm
    python launch.py --config configs/mnist_ddgm.py --workdir runs/mnist_ddgm \
        --mode eval
    python launch.py --config configs/mnist_ddgm.py:tiny --workdir /tmp/t
    # Fashion-MNIST: --config.data.name=fashion_mnist
"""
from configs import mnist_ddpm


def get_config(variant: str = ""):
  c = mnist_ddpm.get_config(variant)
  c.diffusion.noise = "gamma"
  c.diffusion.gamma_theta0 = 0.001
  c.sampling.method = "ddgm"
  if variant == "tiny":
    c.eval.num_samples = 16
    c.eval.classifier_epochs = 8
    c.eval.classifier_lr = 3e-3
    c.eval.classifier_limit = 256
  return c
