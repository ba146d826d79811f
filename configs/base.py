"""Base config: every experiment overrides a few fields of this.

Keys are locked: a typo in an override (`--config.training.batchsize=8`) is an
error, not a silent no-op.
"""
import ml_collections

from jaxdiff import evaluation
from jaxdiff import figures


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  # CPU only: split the host into this many JAX devices, so that the
  # data-parallel train step and the sampling grids use every core.
  # -1: one per usable core (at most 8, a divisor of the batch); 0: JAX's
  # default, one device. An explicit XLA_FLAGS device count wins. See
  # benchmarks/README.md for what it buys.
  c.cpu_devices = -1

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist"
  c.data.data_dir = ""        # "" -> $JAXDIFF_DATA_DIR or ~/.cache/jaxdiff/data
  c.data.split = "train"
  c.data.limit = 0            # use only the first N training images (0: all)
  c.data.image_size = 28
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.random_flip = False  # horizontal flips, drawn on the device

  c.model = ml_collections.ConfigDict()
  c.model.name = "unet"
  c.model.kwargs = ml_collections.ConfigDict(dict(
      ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(14,),
      num_heads=8, dropout=0.1))
  c.model.dtype = "float32"   # compute dtype; "bfloat16" keeps fp32 params
  c.model.remat = False       # unet: recompute residual blocks (less memory)

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.noise = "gaussian"   # or "gamma" (DDGM)
  c.diffusion.sde = "vp"           # vp | subvp | ve
  c.diffusion.schedule = "linear"  # linear | cosine
  c.diffusion.num_steps = 0        # T of the discrete chain; 0: continuous
  c.diffusion.schedule_kwargs = ml_collections.ConfigDict()
  c.diffusion.sigma_min = 0.01     # VE only
  c.diffusion.sigma_max = 50.0     # VE only
  c.diffusion.gamma_theta0 = 0.001  # DDGM only

  c.training = ml_collections.ConfigDict()
  c.training.batch_size = 128      # global batch, split over all devices
  c.training.num_train_steps = 10_000
  c.training.steps_per_dispatch = 1  # train steps per jitted call (lax.scan)
  c.training.lr = 2e-4
  c.training.warmup_steps = 0
  c.training.lr_decay = "none"     # or "cosine": see train.lr_schedule
  c.training.lr_decay_start = 0    # step at which the cosine decay starts
  c.training.lr_end_factor = 0.0   # final lr = lr * lr_end_factor
  c.training.weight_decay = 0.0
  c.training.grad_clip = 1.0       # global-norm clipping; 0 disables
  c.training.ema_decay = 0.999
  c.training.lambda_freq = 0.0     # weight of the FFT L1 loss on x0_hat
  c.training.freq_weighting = "none"  # or "snr": see losses.diffusion_loss
  c.training.time_sampling = "uniform"  # or "lognormal": see losses.sample_time
  c.training.lognormal_mean = -1.2  # 'lognormal': log(sigma/alpha) ~ N(mean, std^2)
  c.training.lognormal_std = 1.2
  c.training.conditional = False   # class-conditional network
  c.training.p_uncond = 0.1        # label dropout when conditional
  c.training.log_every = 50
  c.training.sample_every = 1000   # sample grid PNG every N steps (0: never)
  c.training.checkpoint_every = 1000
  c.training.keep_checkpoints = 3
  c.training.max_nonfinite = 10    # stop after this many bad steps in a row

  c.sampling = ml_collections.ConfigDict()
  c.sampling.method = "ddpm"       # see jaxdiff.samplers.SAMPLERS
  c.sampling.steps = 1000
  c.sampling.grid = "uniform"      # uniform | quadratic | karras | logsnr
  c.sampling.num_samples = 64
  c.sampling.batch_size = 64
  c.sampling.eta = 0.0             # ddim
  c.sampling.snr = 0.16            # pc
  c.sampling.clip_denoised = False  # ddpm, ddim, dpm_solver_pp: x0_hat in [-1, 1]
  c.sampling.guidance_scale = 0.0  # classifier-free guidance w
  c.sampling.classes = ""          # e.g. "0,1,2": one grid row per class
  c.sampling.use_ema = True

  c.eval = ml_collections.ConfigDict(dict(evaluation.EVAL_DEFAULTS))  # --mode eval
  c.viz = figures.viz_config()                                        # --mode viz
  return c
