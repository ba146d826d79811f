"""Class-conditional CIFAR-10: DDPM's CIFAR-10 U-Net (ch 128, ch_mult
(1, 2, 2, 2), attention at 16x16, dropout 0.1, ~36M parameters) with a label
embedding, on DDPM's discrete chain (linear betas 1e-4..0.02, T=1000), random
horizontal flips, label dropout 0.1 and classifier-free guidance.

The discrete T=1000 chain is Ho et al.'s CIFAR-10 recipe, so this is their
published model plus a label embedding, with their hyper-parameters (lr 2e-4,
warmup 5000, batch 128, EMA 0.9999, grad clip 1); the diffusion classifier
then draws its times from the same 1000 steps the network was trained on.

    python launch.py --config configs/cifar10.py --workdir runs/cifar10
    python launch.py --config configs/cifar10.py --workdir runs/cifar10 \
        --mode sample --config.sampling.classes=0,1,2,3,4,5,6,7,8,9
    python launch.py --config configs/cifar10.py --workdir runs/cifar10 \
        --mode classify
    python launch.py --config configs/cifar10.py:tiny --workdir /tmp/t
"""
from configs import base


def get_config(variant: str = ""):
  c = base.get_config()
  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.num_classes = 10
  c.data.random_flip = True
  c.model.name = "unet"
  c.model.kwargs = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                        attn_resolutions=(16,), num_heads=1, dropout=0.1)
  c.diffusion.sde = "vp"
  c.diffusion.schedule = "linear"
  c.diffusion.num_steps = 1000
  c.diffusion.schedule_kwargs = dict(beta_start=1e-4, beta_end=0.02)
  c.training.conditional = True
  c.training.p_uncond = 0.1
  c.training.batch_size = 128
  c.training.lr = 2e-4
  c.training.warmup_steps = 5000
  c.training.grad_clip = 1.0
  c.training.ema_decay = 0.9999
  c.training.num_train_steps = 800_000
  c.training.steps_per_dispatch = 10
  c.training.log_every = 500
  c.training.sample_every = 10_000
  c.training.checkpoint_every = 10_000
  # Clipped DDPM sampling, as in configs/mnist_cond.py (which says why).
  c.sampling.method = "ddpm"
  c.sampling.clip_denoised = True
  c.sampling.steps = 100
  c.sampling.guidance_scale = 1.0
  c.sampling.num_samples = 100            # 10 per class
  c.sampling.batch_size = 100
  c.sampling.classes = "0,1,2,3,4,5,6,7,8,9"
  c.classify.num_images = 1000
  c.classify.batch_size = 20
  c.classify.num_pairs = 50               # all 10 classes
  c.classify.prune_top_k = 3
  c.classify.num_pairs_pruned = 150       # 3 best classes
  if variant == "tiny":
    _tiny(c)
  elif variant == "cpu":
    _cpu(c)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; use '', 'cpu' or 'tiny'.")
  return c


def _cpu(c):
  """A U-Net of 2.5M parameters for a 2-core CPU (about 1.5 hours).

  v-prediction (docs/parameterizations/: on the discrete chain alpha(T) is
  0.006, where an eps network's x0 error is multiplied by 157), batch 64,
  lr 5e-4 with a cosine decay over the second half, DPM-Solver++ sampling.
  """
  c.model.kwargs = dict(ch=48, ch_mult=(1, 2, 2), num_res_blocks=1,
                        attn_resolutions=(8,), num_heads=4, dropout=0.1)
  c.model.prediction = "v"
  c.training.batch_size = 64
  c.training.lr = 5e-4
  c.training.warmup_steps = 500
  c.training.ema_decay = 0.999
  # 1.2-2.0 s per step on the idle 2 cores (the machine's speed varied over
  # the run of docs/conditional/): 3,500 steps are 70-120 minutes.
  c.training.num_train_steps = 3_500
  c.training.lr_decay = "cosine"
  c.training.lr_decay_start = 2_500
  c.training.lr_end_factor = 0.02
  c.training.steps_per_dispatch = 1
  c.training.log_every = 100
  c.training.sample_every = 2_000
  c.training.checkpoint_every = 500
  c.sampling.method = "dpm_solver_pp"
  c.sampling.steps = 20
  c.sampling.clip_denoised = False
  # 8 pairs for all 10 classes, 24 more for the best 3: 152 network
  # evaluations per image keep the 1,000 test images of docs/conditional/
  # within about 20 minutes on 2 cores.
  c.classify.num_pairs = 8
  c.classify.num_pairs_pruned = 24
  c.classify.timing_pairs = "5,10,20,50"
  c.classify.timing_images = 20
  c.classify.denoise_sigmas = "0.1,0.2,0.3"


def _tiny(c):
  """Runs train (2 steps), sample and classify on a CPU in seconds."""
  c.data.limit = 64
  c.model.kwargs = dict(ch=8, ch_mult=(1,), num_res_blocks=1,
                        attn_resolutions=(), num_heads=1, dropout=0.0)
  c.training.batch_size = 8
  c.training.num_train_steps = 2
  c.training.warmup_steps = 0
  c.training.steps_per_dispatch = 1
  c.training.log_every = 1
  c.training.sample_every = 0
  c.training.checkpoint_every = 2
  c.sampling.steps = 4
  c.sampling.classes = "0,1,2"
  c.sampling.num_samples = 6
  c.sampling.batch_size = 6
  c.classify.num_images = 4
  c.classify.batch_size = 4
  c.classify.num_pairs = 2
  c.classify.prune_top_k = 2
  c.classify.num_pairs_pruned = 2
  c.classify.timing_pairs = "2"
  c.classify.timing_images = 4
