"""OrganAMNIST score model: VP-SDE with a cosine schedule, an attention U-Net
(8 heads, 6.8M parameters) and the FFT frequency loss; used for DPS denoising.

    python launch.py --config configs/organamnist.py --workdir runs/organ
    python launch.py --config configs/organamnist.py:tiny --workdir /tmp/t
    python launch.py --config configs/organamnist.py:quickstart --workdir runs/qs

Denoising benchmark (first 300 test images, y = clip(x + 0.3 n, -1, 1)):

    python launch.py --config configs/organamnist.py --workdir runs/organ \
        --mode denoise
    python launch.py --config configs/organamnist.py:deblur \
        --workdir runs/organ --mode denoise
"""
from configs import base


# Inverse-problem variants: config.denoise overrides (same trained model).
_OPERATOR_VARIANTS = {
    "inpaint": dict(operator="inpaint_random", sigma=0.05),
    "inpaint_box": dict(operator="inpaint_box", sigma=0.05),
    "deblur": dict(operator="blur", sigma=0.05),
    "sr2": dict(operator="sr2", sigma=0.05),
    "sr4": dict(operator="sr4", sigma=0.05),
}


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
  # Ancestral sampling with x0_hat clipped to the data range. At t = 1
  # (alpha = 0.01) an eps error of 0.01 is an x0 error of 1: on a 1.1M model
  # trained 2250 steps, x0_hat's MSE at t = 1 was 22 against 0.05 at t = 0.3,
  # and unclipped dpm_solver_pp samples reached -14..20. Clipped ddpm samples
  # look like CT slices; clipped dpm_solver_pp ones still did not (measured
  # with 50 steps).
  c.sampling.method = "ddpm"
  c.sampling.steps = 100
  c.sampling.grid = "uniform"
  c.sampling.clip_denoised = True

  # Inverse problems (--mode denoise): the defaults of
  # jaxdiff/settings.py's DenoiseSettings are this data set's protocol.
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
    c.denoise.num_images = 8
    c.denoise.batch_size = 4
    c.denoise.steps = 4
    c.denoise.num_posterior = 2
    c.denoise.figure_rows = 4
  elif variant == "quickstart":
    # `--mode demo` (README command 1): the shipped `:cpu` model on the
    # OrganAMNIST subset inside the package; offline, about two minutes.
    _cpu(c)
    c.init_from = "pretrained:organamnist_cpu"
    c.data.name = "organamnist_small"
    c.denoise.num_images = 8
    c.denoise.num_posterior = 8
    c.denoise.steps = 20
    c.sampling.num_samples = 16
    c.sampling.batch_size = 16
    c.training.num_train_steps = 20   # fine-tuning: 10, then resumed to 20
    c.training.lr = 1e-4
    c.training.lr_decay = "none"
    c.training.warmup_steps = 0
    c.training.log_every = 5
    c.training.sample_every = 0
    c.training.checkpoint_every = 10
  elif variant == "cpu":
    _cpu(c)
  elif variant in _OPERATOR_VARIANTS:
    # The same model and protocol with another measurement operator.
    for key, value in _OPERATOR_VARIANTS[variant].items():
      c.denoise[key] = value
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; use '', 'tiny', "
                     f"'quickstart', 'cpu' or one of {sorted(_OPERATOR_VARIANTS)}.")
  return c


def _cpu(c):
  """A 1.1M-parameter U-Net sized for a 2-core CPU: v-prediction, 8,500
  steps (about 85 minutes on two cores), log-normal noise levels, lr 1e-3
  with a cosine decay over the second half, FFT loss 0.1 (SNR-weighted).

  v rather than eps (docs/parameterizations/): the same Tweedie PSNR at
  sigma = 0.3, and DPM-Solver++ gives CT-like slices at 10-20 network
  evaluations where an eps model's x0 estimate blows up at high noise.
  """
  c.model.prediction = "v"
  c.model.kwargs = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                        attn_resolutions=(7,), num_heads=4, dropout=0.0)
  c.training.batch_size = 64
  c.training.lr = 1e-3
  c.training.warmup_steps = 200
  c.training.freq_weighting = "snr"
  c.training.num_train_steps = 8500
  c.training.lr_decay = "cosine"
  c.training.lr_decay_start = 4250
  c.training.lr_end_factor = 0.02
  c.training.time_sampling = "lognormal"
  c.training.checkpoint_every = 250
  c.training.sample_every = 1000
  c.sampling.method = "dpm_solver_pp"
  c.sampling.steps = 20
  c.sampling.grid = "default"
  c.sampling.clip_denoised = False
  # K posterior draws one after another: 2.4x faster than all 8 vmapped
  # on a 2-core CPU (docs/organamnist/README.md).
  c.denoise.posterior_batch = 1
