"""jaxdiff against the same models written in PyTorch, timed side by side.

For each model it builds the Flax network from its config and a PyTorch
module that mirrors it layer for layer (same channels, kernels, paddings,
norms and epsilons, attention heads, time embedding, dropout), checks that
both have exactly the same number of parameters, copies the Flax
initialisation into the PyTorch module (so both start from the same weights;
every Flax parameter must be used exactly once), and times on the CPU:

* **train**: one training step at the model's batch. JAX: jaxdiff's own
  `jaxdiff.train.train_step` (eps-MSE on the config's forward process plus
  the config's FFT loss term, global-norm clipping, AdamW with the warm-up
  schedule, parameter EMA, non-finite guard), jitted with the state donated.
  PyTorch: the same step in eager mode (`torch.optim.AdamW`, `LambdaLR`,
  `clip_grad_norm_`, an EMA by `_foreach_lerp_`, the step skipped when the
  loss or the gradient norm is not finite). Both get the same fixed batch.
* **sample**: one DDPM (ancestral) reverse step at the same batch: a
  network forward (dropout off) and the update x_t -> x_s of
  `jaxdiff.samplers.ancestral`. JAX: the sampler's jitted step; PyTorch: the
  same arithmetic under `torch.inference_mode()`.

After warm-up (and the JAX compilation, reported apart), the JAX and PyTorch
calls are ALTERNATED within one run (their order flips every repeat), so
that a change of machine load hits both: each turn runs `--block`
consecutive calls of one framework, and the figures are medians of all calls
but the first of each turn (in one process, a framework's first call after
the other's ran slower; those calls are kept in the JSON as `*_first_walls`).
JAX is blocked with `block_until_ready`. The ratio is torch / jax: above 1,
JAX is faster. `--cpu_devices 2` runs JAX's step data-parallel over two CPU
devices, as jaxdiff trains by default (`config.cpu_devices`).

    pip install -e '.[torch]'                           # torch==2.13.0, CPU
    python benchmarks/compare_pytorch.py --quick        # tiny variants, smoke
    python benchmarks/compare_pytorch.py --cpu_devices 2  # cnn (128), unet (64)
    python benchmarks/compare_pytorch.py --cpu_devices 2 --bf16
    python benchmarks/compare_pytorch.py --models unet \\
        --config.model.kwargs.num_heads=4 --config.training.lambda_freq=0.0

The models are named (`--models`, `MODELS`), each with its config file;
`--config.key=value` overrides are parsed as launch.py parses them
(`jaxdiff.config.parse_config_args`) and apply to the config of every model
of the run (each checked against its own keys), so both the Flax network
and its PyTorch mirror are built from the overridden config; the JSON
records them. There is no `--config` file argument.

Precision: fp32 by default. `--bf16` runs PyTorch under
`torch.autocast("cpu", torch.bfloat16)` and JAX with the Flax model's
`dtype=jnp.bfloat16` (bf16 computation, fp32 parameters and optimiser
state): both keep fp32 master weights and compute in bf16.

Without PyTorch it prints one line saying how to install it and exits with
status 2 (nothing was measured).

Writes --out (JSON; a full run by default benchmarks/results/
compare_pytorch.json, with --bf16 compare_pytorch_bf16.json; --quick writes
nothing unless --out is given) and prints a table.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# PyTorch's OpenMP threads spin-wait after each parallel region by default,
# taking the cores from the JAX call that runs next in this process: measured
# here, the JAX CNN train step took 0.69 s after PyTorch calls with the
# default policy and 0.44 s with PASSIVE, PyTorch's own time unchanged.
# Passive waiting (set before torch loads OpenMP) times each alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# pylint: disable=g-import-not-at-top,wrong-import-position
try:
  import torch
  import torch.nn.functional as F
  _Module = torch.nn.Module
except ImportError:  # The script still imports, and says what to install.
  torch = F = None
  _Module = object

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff import config as config_lib
from jaxdiff import denoiser as denoiser_lib
from jaxdiff import distributed
from jaxdiff import samplers as samplers_lib
from jaxdiff import schedules as schedules_lib
from jaxdiff import sde as sde_lib
from jaxdiff import train as train_lib
from jaxdiff.models import unet as unet_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

NO_TORCH = ("PyTorch is not installed: pip install -e '.[torch]' (the pinned "
            "CPU build, torch==2.13.0) to run this comparison.")

# name -> (config spec, batch). The U-Net is timed at batch 64, the point of
# benchmarks/sampler_speed.py (configs/organamnist.py trains at 128).
MODELS = {
    "cnn": ("configs/mnist_ddpm.py", 128),
    "unet": ("configs/organamnist.py", 64),
    "unet_cpu": ("configs/organamnist.py:cpu", 64),
}
DEFAULT_MODELS = "cnn,unet"
QUICK_BATCH = 4
DEFAULT_OUT = "benchmarks/results/compare_pytorch.json"
DEFAULT_OUT_BF16 = "benchmarks/results/compare_pytorch_bf16.json"


# ------------------------------------------------------------------ set-up


def load_config(spec: str, overrides: Sequence[str] = ()):
  """'path/to/config.py[:variant]' (relative to the repository if need be)
  with `--config.key=value` overrides, parsed as launch.py parses them."""
  return config_lib.load_config_file(spec, root=ROOT, overrides=overrides)


def quick_spec(spec: str) -> str:
  """The ':tiny' variant of a config spec (replacing any other variant)."""
  return spec.partition(":")[0] + ":tiny"


# ------------------------------------------------- PyTorch mirrors of Flax


class Compact(_Module):
  """A torch module whose submodules are created on first use, like Flax's.

  `self.sub(kind, factory, *args)` returns the next submodule of `kind` in
  call order, named as `nn.compact` names it (`Conv_0`, `Conv_1`, ...), and
  builds it with `factory(*args)` on the first call. So `call` is written
  like the Flax `__call__` it mirrors, with the shapes taken from the
  tensors, and the parameter names are the Flax paths. `build_torch_model`
  runs one forward to create the parameters.
  """

  def __init__(self):
    super().__init__()
    self._counts: Dict[str, int] = {}

  def sub(self, kind: str, factory: Callable[..., Any], *args, **kwargs):
    n = self._counts.get(kind, 0)
    self._counts[kind] = n + 1
    name = f"{kind}_{n}"
    if name not in self._modules:
      self.add_module(name, factory(*args, **kwargs))
    return self._modules[name]

  def forward(self, *args, **kwargs):
    self._counts = {}
    return self.call(*args, **kwargs)

  def call(self, *args, **kwargs):
    raise NotImplementedError


class SameConv2d(_Module if torch is None else torch.nn.Conv2d):
  """Conv2d with XLA's 'SAME' padding: an odd total pad puts the extra row
  and column at the end (what Flax's strided convolutions do)."""

  def forward(self, x):
    pads = []
    for size, k, s in reversed(list(zip(x.shape[2:], self.kernel_size,
                                        self.stride))):
      total = max((-(-size // s) - 1) * s + k - size, 0)
      pads += [total // 2, total - total // 2]
    return super().forward(F.pad(x, pads))


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1):
  """The torch counterpart of `flax.linen.Conv(out_ch, (k, k))` ('SAME')."""
  if stride == 1 and kernel % 2:
    return torch.nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
  return SameConv2d(in_ch, out_ch, kernel, stride=stride)


def channel_dense(in_ch: int, out_ch: int):
  """`flax.linen.Dense` over the channels of an NCHW tensor (a 1x1 conv)."""
  return torch.nn.Conv2d(in_ch, out_ch, 1)


def group_norm(ch: int):
  """`flax.linen.GroupNorm` as the U-Net uses it (same groups, epsilon)."""
  groups = unet_lib._groups(ch)  # pylint: disable=protected-access
  return torch.nn.GroupNorm(groups, ch, eps=1e-6)


class TorchCNNBlock(Compact):
  """jaxdiff.models.cnn.CNNBlock: conv, LayerNorm over (C, H, W), GELU."""

  def __init__(self, features: int, kernel_size: int):
    super().__init__()
    self.features, self.kernel_size = features, kernel_size

  def call(self, x):
    x = self.sub("Conv", conv, x.shape[1], self.features, self.kernel_size)(x)
    x = self.sub("LayerNorm", torch.nn.LayerNorm, x.shape[1:], eps=1e-6)(x)
    return F.gelu(x)  # exact (erf) GELU, as approximate=False


class TorchCNN(Compact):
  """jaxdiff.models.cnn.CNN (unconditional or class-conditional)."""

  def __init__(self, hidden: Sequence[int] = (16, 32, 32, 16),
               kernel_size: int = 7, last_kernel_size: int = 3,
               time_embeddings: int = 16, num_classes: Optional[int] = None):
    super().__init__()
    self.hidden, self.kernel_size = tuple(hidden), kernel_size
    self.last_kernel_size, self.time_embeddings = (last_kernel_size,
                                                   time_embeddings)
    self.num_classes = num_classes

  def call(self, x, t, y=None):
    """x [B, C, H, W], t [B] in [0, 1], y [B] or None -> eps [B, C, H, W]."""
    freqs = torch.cat([torch.zeros(1, device=t.device),
                       2 * math.pi * 1.5 ** torch.arange(
                           self.time_embeddings - 1, dtype=torch.float32,
                           device=t.device)])
    phases = t[:, None] * freqs[None]
    temb = torch.cat([torch.sin(phases), torch.cos(phases)], dim=-1)
    for width in (128, 128, 128):
      temb = F.gelu(self.sub("Dense", torch.nn.Linear, temb.shape[-1],
                             width)(temb))
    temb = self.sub("Dense", torch.nn.Linear, temb.shape[-1],
                    self.hidden[0])(temb)
    if self.num_classes is not None:
      if y is None:
        y = torch.full(t.shape, self.num_classes, dtype=torch.long,
                       device=t.device)
      temb = temb + self.sub("Embed", torch.nn.Embedding, self.num_classes + 1,
                             self.hidden[0])(y)
    h = self.sub("CNNBlock", TorchCNNBlock, self.hidden[0],
                 self.kernel_size)(x)
    h = h + temb[:, :, None, None]
    for width in self.hidden[1:]:
      h = self.sub("CNNBlock", TorchCNNBlock, width, self.kernel_size)(h)
    return self.sub("Conv", conv, h.shape[1], x.shape[1],
                    self.last_kernel_size)(h)


def sinusoidal_embedding(t, dim: int, scale: float,
                         max_period: float = 10000.0):
  """jaxdiff.models.layers.sinusoidal_embedding: t [B] -> [B, dim]."""
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(
      half, dtype=torch.float32, device=t.device) / max(half - 1, 1))
  args = (scale * t)[:, None] * freqs[None, :]
  emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
  return F.pad(emb, (0, 1)) if dim % 2 else emb


class TorchConditionEmbedding(Compact):
  """jaxdiff.models.layers.ConditionEmbedding: time MLP (+ class rows)."""

  def __init__(self, dim: int, num_classes: Optional[int], time_scale: float):
    super().__init__()
    self.dim, self.num_classes, self.time_scale = dim, num_classes, time_scale

  def call(self, t, y=None):
    emb = sinusoidal_embedding(t, self.dim, self.time_scale)
    emb = self.sub("Dense", torch.nn.Linear, self.dim, 4 * self.dim)(emb)
    emb = self.sub("Dense", torch.nn.Linear, 4 * self.dim,
                   4 * self.dim)(F.silu(emb))
    if self.num_classes is not None:
      if y is None:
        y = torch.full(t.shape, self.num_classes, dtype=torch.long,
                       device=t.device)
      emb = emb + self.sub("Embed", torch.nn.Embedding, self.num_classes + 1,
                           4 * self.dim)(y)
    return emb


class TorchResBlock(Compact):
  """jaxdiff.models.unet.ResBlock."""

  def __init__(self, out_ch: int, dropout: float):
    super().__init__()
    self.out_ch, self.dropout = out_ch, dropout

  def call(self, x, emb):
    h = F.silu(self.sub("GroupNorm", group_norm, x.shape[1])(x))
    h = self.sub("Conv", conv, h.shape[1], self.out_ch, 3)(h)
    h = h + self.sub("Dense", torch.nn.Linear, emb.shape[1], self.out_ch)(
        F.silu(emb))[:, :, None, None]
    h = F.silu(self.sub("GroupNorm", group_norm, self.out_ch)(h))
    h = self.sub("Dropout", torch.nn.Dropout, self.dropout)(h)
    h = self.sub("Conv", conv, self.out_ch, self.out_ch, 3)(h)
    if x.shape[1] != self.out_ch:
      x = self.sub("Dense", channel_dense, x.shape[1], self.out_ch)(x)
    return x + h


class TorchMultiHeadAttention(_Module):
  """flax.linen.MultiHeadDotProductAttention (self-attention, no dropout):
  query/key/value/out projections, softmax(q k^T / sqrt(head_dim)) v."""

  def __init__(self, features: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.query = torch.nn.Linear(features, features)
    self.key = torch.nn.Linear(features, features)
    self.value = torch.nn.Linear(features, features)
    self.out = torch.nn.Linear(features, features)

  def forward(self, x):  # [B, L, C]
    b, l, c = x.shape
    heads = lambda y: y.view(b, l, self.num_heads, -1).transpose(1, 2)
    y = F.scaled_dot_product_attention(heads(self.query(x)),
                                       heads(self.key(x)),
                                       heads(self.value(x)))
    return self.out(y.transpose(1, 2).reshape(b, l, c))


class TorchAttnBlock(Compact):
  """jaxdiff.models.unet.AttnBlock: GroupNorm, self-attention, residual."""

  def __init__(self, num_heads: int):
    super().__init__()
    self.num_heads = num_heads

  def call(self, x):
    b, c, h, w = x.shape
    y = self.sub("GroupNorm", group_norm, c)(x)
    y = y.reshape(b, c, h * w).transpose(1, 2)            # [B, HW, C]
    y = self.sub("MultiHeadDotProductAttention", TorchMultiHeadAttention, c,
                 self.num_heads)(y)
    return x + y.transpose(1, 2).reshape(b, c, h, w)


class TorchUNet(Compact):
  """jaxdiff.models.unet.UNet, in NCHW. `attention` (the Flax model's choice
  of implementation) is accepted and ignored: this one always runs
  `F.scaled_dot_product_attention`."""

  def __init__(self, ch: int = 64, ch_mult: Sequence[int] = (1, 2, 2),
               num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (14,),
               num_heads: int = 8, dropout: float = 0.1,
               num_classes: Optional[int] = None, time_scale: float = 1000.0,
               attention: str = "matmul"):
    super().__init__()
    del attention
    self.ch, self.ch_mult = ch, tuple(ch_mult)
    self.num_res_blocks = num_res_blocks
    self.attn_resolutions, self.num_heads = tuple(attn_resolutions), num_heads
    self.dropout, self.num_classes = dropout, num_classes
    self.time_scale = time_scale

  def call(self, x, t, y=None):
    """x [B, C, H, W], t [B] in [0, 1], y [B] or None -> eps [B, C, H, W]."""
    res_block = functools.partial(self.sub, "ResBlock", TorchResBlock)
    attn_block = functools.partial(self.sub, "AttnBlock", TorchAttnBlock,
                                   self.num_heads)
    emb = self.sub("ConditionEmbedding", TorchConditionEmbedding, self.ch,
                   self.num_classes, self.time_scale)(t, y)
    h = self.sub("Conv", conv, x.shape[1], self.ch, 3)(x)
    skips = [h]
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = res_block(self.ch * mult, self.dropout)(h, emb)
        if h.shape[2] in self.attn_resolutions:
          h = attn_block()(h)
        skips.append(h)
      if level != len(self.ch_mult) - 1:
        h = self.sub("Conv", conv, h.shape[1], h.shape[1], 3, stride=2)(h)
        skips.append(h)
    h = res_block(h.shape[1], self.dropout)(h, emb)
    h = attn_block()(h)
    h = res_block(h.shape[1], self.dropout)(h, emb)
    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = torch.cat([h, skips.pop()], dim=1)
        h = res_block(self.ch * mult, self.dropout)(h, emb)
        if h.shape[2] in self.attn_resolutions:
          h = attn_block()(h)
      if level != 0:
        h = F.interpolate(h, size=tuple(skips[-1].shape[2:]), mode="nearest")
        h = self.sub("Conv", conv, h.shape[1], h.shape[1], 3)(h)
    h = F.silu(self.sub("GroupNorm", group_norm, h.shape[1])(h))
    return self.sub("Conv", conv, h.shape[1], x.shape[1], 3)(h)


TORCH_MODELS = {"cnn": TorchCNN, "unet": TorchUNet}


def build_torch_model(config):
  """The PyTorch mirror of `config_lib.build_model(config)`, parameters made."""
  kwargs = dict(config.model.kwargs)
  if config.training.conditional:
    kwargs["num_classes"] = config.data.num_classes
  if config.model.name not in TORCH_MODELS:
    raise ValueError(f"No PyTorch mirror of model {config.model.name!r}; "
                     f"have {sorted(TORCH_MODELS)}.")
  model = TORCH_MODELS[config.model.name](**kwargs)
  shape = config_lib.typed(config).data.image_shape
  with torch.no_grad():  # Creates the submodules (Compact) at these shapes.
    model.eval()(torch.zeros(1, shape[2], shape[0], shape[1]), torch.zeros(1))
  return model.train()


def count_torch_params(model) -> int:
  return int(sum(p.numel() for p in model.parameters()))


def load_flax_params(model, params) -> None:
  """Copies Flax parameters into the mirrored torch module, in place.

  Torch submodules carry the Flax paths as names (see `Compact`); kernels
  are transposed to torch's layouts. Every Flax leaf must be used once and
  every shape must match, so a successful copy is a structural check too.

  Args:
    model: a module from `build_torch_model`.
    params: the Flax model's parameters (the `params` collection).

  Raises:
    ValueError: a missing, unused or mis-shaped parameter.
  """
  flat = {k: np.asarray(v, np.float32)
          for k, v in traverse_util.flatten_dict(params).items()}
  used = set()

  def take(prefix, leaf):
    key = prefix + (leaf,)
    if key not in flat:
      raise ValueError(f"No Flax parameter {'/'.join(key)}.")
    used.add(key)
    return flat[key]

  nn = torch.nn
  for name, module in model.named_modules():
    if not list(module.parameters(recurse=False)):
      continue
    prefix = tuple(name.split("."))
    if isinstance(module, nn.Conv2d):
      k = take(prefix, "kernel")                      # [kh, kw, I, O] or [I, O]
      weight = k.T[:, :, None, None] if k.ndim == 2 else k.transpose(3, 2, 0, 1)
      bias = take(prefix, "bias")
    elif isinstance(module, nn.Linear):  # kernel [I, O], [I, H, D], [H, D, O]
      k = take(prefix, "kernel")
      if k.size != module.in_features * module.out_features:
        raise ValueError(f"{name}: Flax kernel {k.shape} does not fit a "
                         f"{module.in_features} -> {module.out_features} "
                         "torch Linear.")
      weight = k.reshape(module.in_features, module.out_features).T
      bias = take(prefix, "bias").reshape(-1)
    elif isinstance(module, nn.GroupNorm):
      weight, bias = take(prefix, "scale"), take(prefix, "bias")
    elif isinstance(module, nn.LayerNorm):            # [H, W, C] -> [C, H, W]
      weight = np.moveaxis(take(prefix, "scale"), -1, 0)
      bias = np.moveaxis(take(prefix, "bias"), -1, 0)
    elif isinstance(module, nn.Embedding):
      weight, bias = take(prefix, "embedding"), None
    else:
      raise ValueError(f"No Flax counterpart for torch module {name} "
                       f"({type(module).__name__}).")
    for tensor, value in ((module.weight, weight), (module.bias, bias)):
      if tensor is None:
        continue
      if tuple(value.shape) != tuple(tensor.shape):
        raise ValueError(f"{name}: Flax shape {value.shape} does not fit the "
                         f"torch parameter {tuple(tensor.shape)}.")
      with torch.no_grad():
        tensor.copy_(torch.from_numpy(np.array(value, np.float32)))
  unused = sorted("/".join(k) for k in set(flat) - used)
  if unused:
    raise ValueError(f"Flax parameters without a torch counterpart: {unused}")


# ------------------------------------------- the forward process in PyTorch


class TorchVP:
  """alpha(t), sigma(t), training times and the DDPM step of a jaxdiff VP SDE.

  Reads the schedule of a `jaxdiff.sde.VPSDE` (discrete DDPM chain, linear
  or cosine) and evaluates the same formulas with torch ops.
  """

  def __init__(self, sde):
    if type(sde) is not sde_lib.VPSDE:  # pylint: disable=unidiomatic-typecheck
      raise ValueError(f"Only the VP SDE has a PyTorch mirror here, got "
                       f"{type(sde).__name__}.")
    self.schedule, self.t_min = sde.schedule, sde.t_min
    self.num_steps = sde.num_steps
    if isinstance(self.schedule, schedules_lib.DiscreteSchedule):
      cum = np.concatenate([[0.0], np.cumsum(-np.log1p(-self.schedule.betas))])
      self._cum = torch.tensor(cum, dtype=torch.float32)
    elif not isinstance(self.schedule, (schedules_lib.LinearSchedule,
                                        schedules_lib.CosineSchedule)):
      raise ValueError(f"Unknown schedule {type(self.schedule).__name__}.")

  def to(self, device) -> "TorchVP":
    """Moves the discrete chain's table to `device` (returns self)."""
    if hasattr(self, "_cum"):
      self._cum = self._cum.to(device)
    return self

  def int_beta(self, t):
    s = self.schedule
    if self.num_steps:  # linear interpolation on the grid i / T
      u = t * self.num_steps
      i = torch.clamp(torch.floor(u), 0, self.num_steps - 1).long()
      lo, hi = self._cum[i], self._cum[i + 1]
      return lo + (u - i) * (hi - lo)
    if isinstance(s, schedules_lib.LinearSchedule):
      return s.beta_min * t + 0.5 * (s.beta_max - s.beta_min) * t**2
    c0 = math.cos(math.pi / 2 * s.s / (1 + s.s))
    angle = math.pi / 2 * (t * s.t_max + s.s) / (1 + s.s)
    return -2.0 * (torch.log(torch.cos(angle)) - math.log(c0))

  def alpha(self, t):
    return torch.exp(-0.5 * self.int_beta(t))

  def sigma(self, t):
    return torch.sqrt(-torch.expm1(-self.int_beta(t)))

  def sample_time(self, batch: int, generator):
    if self.num_steps:  # the DDPM chain: t = i / T, i in 1..T
      i = torch.randint(1, self.num_steps + 1, (batch,), generator=generator,
                        device=generator.device)
      return i.float() / self.num_steps
    return self.t_min + (1 - self.t_min) * torch.rand(
        batch, generator=generator, device=generator.device)


def bcast(v):
  return v[:, None, None, None]


class TorchTrainer:
  """jaxdiff.train.train_step in PyTorch eager mode (unconditional)."""

  def __init__(self, model, process: TorchVP, tc, *, seed: int,
               bf16: bool = False, device: str = "cpu"):
    """model (a torch module or its `torch.compile`), its parameters and the
    process on `device`, whose generator draws the times and the noise."""
    self.model, self.process, self.tc, self.bf16 = model, process, tc, bf16
    self.device = torch.device(device)
    self.params = list(model.parameters())
    self.ema = [p.detach().clone() for p in self.params]
    self.opt = torch.optim.AdamW(self.params, lr=tc.lr,
                                 weight_decay=tc.weight_decay)
    warmup = tc.warmup_steps
    self.sched = torch.optim.lr_scheduler.LambdaLR(
        self.opt, lambda n: min(1.0, n / warmup) if warmup > 0 else 1.0)
    self.generator = torch.Generator(device=self.device).manual_seed(seed)
    self.step_count, self.nonfinite = 0, 0

  def loss(self, x0, t=None, eps=None):
    """The objective of jaxdiff.losses.diffusion_loss -> scalar.

    Args:
      x0: [B, C, H, W] clean images.
      t: [B] times, or None to draw them as the process does.
      eps: [B, C, H, W] noise, or None to draw it.

    Returns:
      The mean loss over the batch (eps-MSE plus the config's FFT term).
    """
    tc, proc = self.tc, self.process
    if t is None:
      t = proc.sample_time(x0.shape[0], self.generator)             # [B]
    if eps is None:
      eps = torch.randn(x0.shape, generator=self.generator,
                        device=x0.device)
    a, s = bcast(proc.alpha(t)), bcast(proc.sigma(t))
    x_t = a * x0 + s * eps                                          # [B,C,H,W]
    with torch.autocast(x0.device.type, dtype=torch.bfloat16,
                        enabled=self.bf16):
      eps_hat = self.model(x_t, t)
    eps_hat = eps_hat.float()
    loss = torch.mean((eps_hat - eps)**2, dim=(1, 2, 3))            # [B]
    if tc.lambda_freq:
      x0_hat = (x_t - s * eps_hat) / a
      freq = torch.fft.fft2(x0_hat - x0, dim=(2, 3), norm="ortho")
      freq = torch.mean(torch.abs(freq), dim=(1, 2, 3))            # [B]
      if tc.freq_weighting == "snr":
        freq = freq * torch.clamp(a / s, max=1.0).flatten()
      loss = loss + tc.lambda_freq * freq
    return torch.mean(loss)

  def step(self, x0):
    """One optimisation step on x0 [B, C, H, W]; returns the loss."""
    self.model.train()
    loss = self.loss(x0)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    if self.tc.grad_clip > 0:
      grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.tc.grad_clip)
    else:
      grad_norm = torch.nn.utils.get_total_norm(
          [p.grad for p in self.params if p.grad is not None])
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
      self.nonfinite += 1
    else:
      self.opt.step()
      self.sched.step()
      decay = min(self.tc.ema_decay,
                  (1.0 + self.step_count) / (10.0 + self.step_count))
      with torch.no_grad():
        # pylint: disable-next=protected-access
        torch._foreach_lerp_(self.ema, self.params, 1.0 - decay)
      self.nonfinite = 0
    self.step_count += 1
    return loss.detach()


def torch_ddpm_step(model, process: TorchVP, x, t: float, s: float,
                    generator, bf16: bool = False):
  """jaxdiff.samplers.ancestral's step (DDIM, eta = 1) from t to s < t."""
  model.eval()
  with torch.inference_mode():
    tt = torch.full((x.shape[0],), t, device=x.device)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
      eps = model(x, tt)
    eps = eps.float()
    t_s = torch.tensor([t, s], device=x.device)
    (a_t, a_s), (s_t, s_s) = process.alpha(t_s), process.sigma(t_s)
    x0 = (x - s_t * eps) / a_t
    var_ts = s_t**2 - (a_t / a_s)**2 * s_s**2
    c2 = var_ts * s_s**2 / s_t**2
    z = torch.randn(x.shape, generator=generator, device=x.device)
    return (a_s * x0 + torch.sqrt(torch.clamp(s_s**2 - c2, min=0.0)) * eps
            + torch.sqrt(c2) * z)


def torch_runner(model, device: str, compile_mode: str = ""):
  """(the model to call, sync): `torch.compile(model, mode=...)` when
  `compile_mode` is set ("default", "reduce-overhead", "max-autotune"), and a
  function that waits for the device's queued work (CUDA) and returns its
  argument, so that a timed call counts all its kernels."""
  if compile_mode:
    model = torch.compile(model, mode=None if compile_mode == "default"
                          else compile_mode)
  if torch.device(device).type == "cuda":
    def sync(value):
      torch.cuda.synchronize(device)
      return value
  else:
    sync = lambda value: value
  return model, sync


# ------------------------------------------------------------------ timing


def time_call(fn: Callable[[], Any]) -> Tuple[float, float]:
  """(wall, process CPU) seconds of one call of fn."""
  c0, t0 = time.process_time(), time.perf_counter()
  fn()
  return time.perf_counter() - t0, time.process_time() - c0


def alternate(jax_fn: Callable[[], Any], torch_fn: Callable[[], Any], *,
              warmup: int, repeats: int, block: int = 1) -> Dict[str, Any]:
  """Times jax_fn and torch_fn alternately (order flipped every repeat).

  Each repeat runs `block` consecutive calls of one, then of the other. With
  block > 1 the first call after a switch is recorded apart (`first_walls`)
  and the medians use the others: in one process, the first JAX call after a
  PyTorch call ran up to 2x slower than JAX calls back to back (measured on
  the U-Net train step), which a training loop never sees.

  jax_fn must block until its result is ready.
  """
  for _ in range(warmup):
    jax_fn()
    torch_fn()
  times = {"jax": [], "torch": []}
  firsts = {"jax": [], "torch": []}
  for r in range(repeats):
    order = (("jax", jax_fn), ("torch", torch_fn))
    for name, fn in (order if r % 2 == 0 else order[::-1]):
      for b in range(block):
        (firsts[name] if b == 0 and block > 1 else times[name]).append(
            time_call(fn))
  out = {}
  for name, pairs in times.items():
    walls, cpus = [w for w, _ in pairs], [c for _, c in pairs]
    out[name] = dict(wall=statistics.median(walls), cpu=statistics.median(cpus),
                     walls=walls, cpus=cpus,
                     first_walls=[w for w, _ in firsts[name]])
  return out


# ------------------------------------------------------------ benchmark


def model_spec(name: str, args: argparse.Namespace) -> Tuple[str, int]:
  """(config spec, batch) of the model `name` (`MODELS`) in this run."""
  spec, batch = MODELS[name]
  if args.quick:
    spec, batch = quick_spec(spec), QUICK_BATCH
  return spec, args.batch or batch


def bench_model(name: str, args: argparse.Namespace, config=None
                ) -> List[Dict[str, Any]]:
  """Builds both versions of one model, checks them and times both tasks
  (`config`, else its config file with `args.config_overrides`, if any)."""
  spec, batch = model_spec(name, args)
  if config is None:
    config = load_config(spec, getattr(args, "config_overrides", ()))
  if config.training.conditional:
    raise ValueError(f"{spec}: only unconditional models are compared.")
  settings = config_lib.typed(config)
  tc = settings.training
  model = config_lib.build_model(settings)
  if args.bf16:
    model = model.clone(dtype=jnp.bfloat16)  # bf16 compute, fp32 params
  process = config_lib.build_process(settings)
  tx = train_lib.make_optimizer(tc)
  shape = settings.data.image_shape
  init_key, train_key, sample_key = train_lib.run_keys(settings.seed)
  state = jax.jit(lambda: train_lib.init_state(model, tx, init_key, shape))()
  n_jax = train_lib.count_params(state.params)

  torch_model = build_torch_model(config)
  n_torch = count_torch_params(torch_model)
  print(f"[{name}] {spec}: {config.model.name}, parameters: jax "
        f"{n_jax:,}, torch {n_torch:,}; batch {batch}, images {shape}",
        flush=True)
  if n_jax != n_torch:
    raise AssertionError(f"{spec}: the PyTorch mirror has {n_torch:,} "
                         f"parameters, the Flax model {n_jax:,}.")
  load_flax_params(torch_model, state.params)  # the same initial weights
  device = getattr(args, "device", "cpu")
  torch_model = torch_model.to(device)
  torch_process = TorchVP(process).to(device)
  run_model, sync = torch_runner(torch_model, device,
                                 getattr(args, "torch_compile", ""))

  rng = np.random.default_rng(args.seed)
  x0 = rng.uniform(-1, 1, (batch, *shape)).astype(np.float32)  # [B, H, W, C]
  x0_jax = jnp.asarray(x0)
  x0_torch = torch.from_numpy(np.ascontiguousarray(x0.transpose(
      0, 3, 1, 2))).to(device)

  # (a) one training step.
  apply_fn = train_lib.make_apply_fn(model)
  loss_kwargs = dict(lambda_freq=tc.lambda_freq,
                     freq_weighting=tc.freq_weighting, num_classes=None,
                     p_uncond=0.0)
  step_fn = functools.partial(train_lib.train_step, apply_fn=apply_fn, tx=tx,
                              process=process, ema_decay=tc.ema_decay,
                              loss_kwargs=loss_kwargs)
  # Data-parallel over every JAX device (several with --cpu_devices): the
  # batch is split, the state replicated, as in jaxdiff's training loop.
  mesh = train_lib.make_mesh()
  rep = NamedSharding(mesh, P())
  split = NamedSharding(mesh, P("data"))
  train_lib.check_batch(batch, mesh.size, batch)
  state = jax.device_put(state, rep)
  x0_jax = jax.device_put(x0_jax, split)
  train_jit = jax.jit(lambda st, x, k: step_fn(st, x, None, k),
                      in_shardings=(rep, split, rep),
                      out_shardings=(rep, rep), donate_argnums=(0,))
  t0 = time.perf_counter()
  train_compiled = train_jit.lower(state, x0_jax, train_key).compile()
  train_compile_s = time.perf_counter() - t0
  holder = {"state": state}

  def jax_train():
    holder["state"], metrics = train_compiled(holder["state"], x0_jax,
                                              train_key)
    jax.block_until_ready(metrics)

  trainer = TorchTrainer(run_model, torch_process, tc, seed=args.seed,
                         bf16=args.bf16, device=device)
  torch_train = lambda: sync(trainer.step(x0_torch))
  torch_first = {"train": time_call(torch_train)[0]}  # torch.compile: compiles
  train_t = alternate(jax_train, torch_train,
                      warmup=args.warmup, repeats=args.repeats,
      block=args.block)

  # (b) one DDPM reverse step, from t = 0.5 to 0.5 - 1/T.
  t, s = 0.5, 0.5 - 1.0 / (process.num_steps or 1000)
  eval_apply = train_lib.make_apply_fn(model)

  def reverse_step(params, x, t, s, key):
    # The PyTorch mirror is a noise-prediction network: so is this one.
    denoise_fn = denoiser_lib.model_denoiser(
        eval_apply, params, process, denoiser_lib.eps_prediction())
    stepper = samplers_lib.make_sampler("ddpm", process, denoise_fn)
    return stepper.step(stepper.init(x), t, s, samplers_lib.Noise(key))["x"]

  params = holder["state"].params
  t_j, s_j = jnp.float32(t), jnp.float32(s)
  t0 = time.perf_counter()
  sample_compiled = jax.jit(
      reverse_step, in_shardings=(rep, split, rep, rep, rep),
      out_shardings=split).lower(
      params, x0_jax, t_j, s_j, sample_key).compile()
  sample_compile_s = time.perf_counter() - t0
  generator = torch.Generator(device=device).manual_seed(args.seed)
  torch_sample = lambda: sync(torch_ddpm_step(
      run_model, torch_process, x0_torch, t, s, generator, args.bf16))
  torch_first["sample"] = time_call(torch_sample)[0]
  sample_t = alternate(
      lambda: jax.block_until_ready(
          sample_compiled(params, x0_jax, t_j, s_j, sample_key)),
      torch_sample, warmup=args.warmup, repeats=args.repeats,
      block=args.block)

  rows = []
  for task, timing, compile_s in (("train", train_t, train_compile_s),
                                  ("sample", sample_t, sample_compile_s)):
    j, p = timing["jax"], timing["torch"]
    rows.append(dict(
        model=name, config=spec, network=config.model.name,
        num_params=n_jax, num_params_torch=n_torch, batch=batch,
        image_shape=list(shape), task=task,
        precision="bf16" if args.bf16 else "fp32", jax_devices=mesh.size,
        jax_s=j["wall"], torch_s=p["wall"], jax_cpu_s=j["cpu"],
        torch_cpu_s=p["cpu"], ratio=p["wall"] / j["wall"],
        ratio_cpu=p["cpu"] / j["cpu"], jax_walls=j["walls"],
        torch_walls=p["walls"], jax_cpus=j["cpus"], torch_cpus=p["cpus"],
        jax_first_walls=j["first_walls"], torch_first_walls=p["first_walls"],
        jax_compile_s=compile_s, torch_device=str(device),
        torch_compile=getattr(args, "torch_compile", "") or None,
        torch_first_call_s=torch_first[task]))
    print(f"  {task:>6}: jax {j['wall']:.4f} s, torch {p['wall']:.4f} s, "
          f"torch/jax {p['wall'] / j['wall']:.2f} (cpu "
          f"{p['cpu'] / j['cpu']:.2f}); jax compile {compile_s:.1f} s",
          flush=True)
  return rows


# ------------------------------------------------------------------ output


def print_table(result: Dict[str, Any]) -> None:
  print(f"\nCPU ({result['cpu_count']} cores), jax {result['jax']}, torch "
        f"{result['torch']} ({result['torch_threads']} threads), "
        f"{result['precision']}, {result['jax_devices']} JAX device(s); "
        f"{result['repeats']} alternated turns of {result['block']} calls "
        f"(median; without each turn's first call when > 1); load average {result['loadavg_start']} at start, "
        f"{result['loadavg_end']} at end")
  head = (f"{'model':<10} {'task':<6} {'params':>8} {'batch':>5} "
          f"{'jax s/step':>10} {'torch s/step':>12} {'torch/jax':>9} "
          f"{'cpu t/j':>7} {'compile s':>9}")
  print(head)
  print("-" * len(head))
  for r in result["rows"]:
    print(f"{r['model']:<10} {r['task']:<6} {r['num_params'] / 1e6:>7.2f}M "
          f"{r['batch']:>5} {r['jax_s']:>10.4f} {r['torch_s']:>12.4f} "
          f"{r['ratio']:>9.2f} {r['ratio_cpu']:>7.2f} "
          f"{r['jax_compile_s']:>9.1f}")
  print("train = one optimisation step, sample = one DDPM reverse step; "
        "torch/jax > 1: JAX is faster (cpu t/j: the same in process CPU "
        "time); compile = JAX compilation, not in the step times")


def parse_args(argv: Optional[Sequence[str]] = None):
  """(the options, {model name: its config with the --config.key=value
  overrides}), checked before anything is timed; exits with status 2 and
  one line without PyTorch."""
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      allow_abbrev=False,
      epilog="--config.KEY=VALUE overrides (as in launch.py) apply to every "
      "model's config.")
  parser.add_argument("--models", default=DEFAULT_MODELS,
                      help=f"comma list of {', '.join(MODELS)} "
                      f"(default {DEFAULT_MODELS})")
  parser.add_argument("--batch", type=int, default=0,
                      help="batch for every model (default: cnn 128, unet 64, "
                      f"unet_cpu 64; --quick {QUICK_BATCH})")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls of each (median; default 5, 2 with "
                      "--quick)")
  parser.add_argument("--block", type=int, default=None,
                      help="consecutive calls of one framework per turn; the "
                      "first after a switch is not in the median (default 3, "
                      "1 with --quick)")
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed calls of each after compilation")
  parser.add_argument("--bf16", action="store_true",
                      help="bf16 compute: torch.autocast for PyTorch, the Flax "
                      "model's dtype=bfloat16 for JAX")
  parser.add_argument("--torch_threads", type=int, default=2,
                      help="torch.set_num_threads (default 2)")
  parser.add_argument("--cpu_devices", type=int, default=1,
                      help="JAX CPU devices for a data-parallel step (the "
                      "config key cpu_devices; -1: one per usable core; "
                      "default 1)")
  parser.add_argument("--device", default="cpu",
                      help="PyTorch's device (default cpu; a GPU run is "
                      "benchmarks/accelerator_suite.py's job)")
  parser.add_argument("--torch_compile", default="",
                      help="torch.compile the PyTorch model with this mode "
                      "(default, reduce-overhead, max-autotune; default: "
                      "eager)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None,
                      help=f"JSON output (default {DEFAULT_OUT}, with --bf16 "
                      f"{DEFAULT_OUT_BF16}; --quick: none)")
  parser.add_argument("--quick", action="store_true",
                      help="the configs' ':tiny' variants at batch "
                      f"{QUICK_BATCH}, 2 repeats: a smoke run")
  args, args.config_overrides = parser.parse_known_args(argv)
  if torch is None:
    print(NO_TORCH, file=sys.stderr)
    sys.exit(2)
  names = [n.strip() for n in args.models.split(",") if n.strip()]
  for n in names:
    if n not in MODELS:
      parser.error(f"Unknown model {n!r}; use {', '.join(MODELS)}.")
  try:
    configs = {n: load_config(model_spec(n, args)[0], args.config_overrides)
               for n in names}
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  if args.repeats is None:
    args.repeats = 2 if args.quick else 5
  if args.block is None:
    args.block = 1 if args.quick else 3
  if args.repeats < 1 or args.block < 1 or args.warmup < 0 or args.batch < 0:
    parser.error("--repeats and --block must be >= 1, --warmup and --batch "
                 ">= 0.")
  if args.out is None and not args.quick:
    args.out = DEFAULT_OUT_BF16 if args.bf16 else DEFAULT_OUT
  return args, configs


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  args, configs = parse_args(argv)
  if args.cpu_devices != 1:
    distributed.set_cpu_devices(args.cpu_devices)
  torch.set_num_threads(args.torch_threads)
  torch.manual_seed(args.seed)
  loadavg_start = [round(v, 2) for v in os.getloadavg()]
  t_start = time.perf_counter()
  with jax.default_device(jax.devices("cpu")[0]):
    rows = [r for n, config in configs.items()
            for r in bench_model(n, args, config)]
  result = dict(
      platform="cpu", host=platform.node(), cpu_count=os.cpu_count(),
      jax_devices=jax.device_count(),
      omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
      jax=jax.__version__, torch=torch.__version__, torch_device=args.device,
      torch_compile=args.torch_compile or None,
      torch_threads=torch.get_num_threads(),
      precision="bf16" if args.bf16 else "fp32", repeats=args.repeats,
      block=args.block, warmup=args.warmup, quick=args.quick,
      config_overrides=args.config_overrides, loadavg_start=loadavg_start,
      loadavg_end=[round(v, 2) for v in os.getloadavg()],
      total_s=time.perf_counter() - t_start, rows=rows)
  print_table(result)
  out = args.out
  if out:
    out = out if os.path.isabs(out) else os.path.join(ROOT, out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
      json.dump(result, f, indent=1)
    print(f"wrote {out} ({result['total_s']:.0f} s)")
  return result


if __name__ == "__main__":
  main()
