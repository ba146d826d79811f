"""Class-conditional MNIST / Fashion-MNIST: a small U-Net on the DDPM chain of
configs/mnist_ddpm.py (linear betas 1e-4..0.02, T=1000), label dropout 0.1 for
classifier-free guidance, and the diffusion classifier (`--mode classify`).

    python launch.py --config configs/mnist_cond.py --workdir runs/mnist_cond
    python launch.py --config configs/mnist_cond.py:cpu --workdir runs/mnist_cpu
    python launch.py --config configs/mnist_cond.py:cpu --workdir runs/mnist_cpu \
        --mode classify
    python launch.py --config configs/mnist_cond.py:cpu --workdir runs/mnist_cpu \
        --mode sample --config.sampling.classes=0,1,2,3,4,5,6,7,8,9
    python launch.py --config configs/mnist_cond.py:tiny --workdir /tmp/t
    # Fashion-MNIST: --config.data.name=fashion_mnist

Variants: '' (GPU-sized), 'cpu' (9,000 steps, about an hour of training on a
2-core CPU) and 'tiny' (tests).
"""
from configs import mnist_ddpm


def get_config(variant: str = ""):
  c = mnist_ddpm.get_config()
  c.training.conditional = True
  c.training.p_uncond = 0.1
  c.model.name = "unet"
  c.model.kwargs = dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2,
                        attn_resolutions=(7,), num_heads=4, dropout=0.1)
  c.training.batch_size = 128
  c.training.lr = 2e-4
  c.training.warmup_steps = 500
  c.training.grad_clip = 1.0
  c.training.num_train_steps = 469 * 40   # 40 epochs of 60k images
  # Stochastic DDPM steps with x0_hat clipped to [-1, 1]: on a CPU-trained
  # Fashion-MNIST model, unclipped 100-step DDIM turned about half the
  # samples into saturated noise; clipped DDPM gave clean ones.
  c.sampling.method = "ddpm"
  c.sampling.clip_denoised = True
  c.sampling.steps = 100
  c.sampling.guidance_scale = 1.0
  c.sampling.num_samples = 100            # 10 per class
  c.sampling.batch_size = 100
  c.sampling.classes = "0,1,2,3,4,5,6,7,8,9"
  c.classify.num_images = 1000
  c.classify.num_pairs = 100
  if variant == "cpu":
    _cpu(c)
  elif variant == "tiny":
    _tiny(c)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; use '', 'cpu' or 'tiny'.")
  return c


def _cpu(c):
  """A U-Net of 0.64M parameters for a 2-core CPU.

  6,000 steps at a constant lr (34 min 50 s on two cores), then 3,000 with a
  cosine decay (about 36 min on one core): 98.3% diffusion-classifier
  accuracy on the first 1,000 MNIST test images (docs/conditional/).
  """
  c.model.kwargs = dict(ch=16, ch_mult=(1, 2, 4), num_res_blocks=1,
                        attn_resolutions=(), num_heads=4, dropout=0.0)
  c.training.batch_size = 64
  c.training.lr = 1e-3
  c.training.warmup_steps = 200
  c.training.ema_decay = 0.999
  c.training.num_train_steps = 9000
  c.training.lr_decay = "cosine"
  c.training.lr_decay_start = 6000
  c.training.lr_end_factor = 0.02
  # One step per call: XLA:CPU runs a training step inside a multi-step
  # lax.scan about 20 times slower than on its own (measured).
  c.training.steps_per_dispatch = 1
  c.training.log_every = 100
  c.training.sample_every = 0
  c.training.checkpoint_every = 1000
  c.sampling.num_samples = 50             # 5 per class
  c.sampling.batch_size = 50
  # Pruning: 20 pairs for all 10 classes, then 60 more for the best 3.
  c.classify.num_pairs = 20
  c.classify.prune_top_k = 3
  c.classify.num_pairs_pruned = 60
  c.classify.timing_images = 20


def _tiny(c):
  """Train (2 steps), sample and classify in seconds, for tests."""
  c.data.limit = 256
  c.model.name = "cnn"  # Compiles several times faster than a U-Net.
  c.model.kwargs = dict(hidden=(8, 8), kernel_size=7, last_kernel_size=3,
                        time_embeddings=16)
  c.training.batch_size = 16
  c.training.num_train_steps = 2
  c.training.warmup_steps = 0
  c.training.log_every = 1
  c.training.sample_every = 0
  c.training.checkpoint_every = 2
  c.sampling.steps = 4
  c.sampling.classes = "0,1,2"
  c.sampling.num_samples = 6
  c.sampling.batch_size = 6
  c.classify.num_images = 6
  c.classify.batch_size = 4
  c.classify.num_pairs = 3
  c.classify.prune_top_k = 2
  c.classify.num_pairs_pruned = 2
  c.classify.timing_pairs = "2,4"
  c.classify.timing_images = 4
