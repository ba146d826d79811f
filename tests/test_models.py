"""Tests for jaxdiff.models: parameter counts, shapes, dtypes, conditioning.

The configured (full-size) networks are only traced, with `jax.eval_shape`;
real forward passes use the tiny variants and tiny hand-built networks.
"""
from __future__ import annotations

import importlib
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import models

_TINY_UNET = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                  num_heads=2, dropout=0.0)
_TINY_CNN = dict(hidden=(8, 8), kernel_size=3, time_embeddings=4)


def _config(name: str, variant: str = ""):
  return importlib.import_module(f"configs.{name}").get_config(variant)


def _inputs(batch, image_shape, num_classes=None, *, abstract=False):
  """(x [B, H, W, C], t [B], y [B] or None), concrete or abstract."""
  if abstract:
    x = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.float32)
    y = None if num_classes is None else jax.ShapeDtypeStruct((batch,),
                                                               jnp.int32)
    return x, t, y
  kx, kt, ky = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (batch, *image_shape))
  t = jax.random.uniform(kt, (batch,))
  y = (None if num_classes is None else
       jax.random.randint(ky, (batch,), 0, num_classes + 1))
  return x, t, y


def _abstract_params(model, image_shape, num_classes=None):
  x, t, y = _inputs(2, image_shape, num_classes, abstract=True)
  return jax.eval_shape(model.init, jax.random.key(0), x, t, y)


def _count(params) -> int:
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def _configured(name: str, variant: str = ""):
  """(model, image shape, K or None) of configs/<name>.py:<variant>."""
  c = _config(name, variant)
  num_classes = c.data.num_classes if c.training.conditional else None
  return (config_lib.build_model(c),
          (c.data.image_size, c.data.image_size, c.data.channels), num_classes)


@jax.jit
def _randomized(params, key, scale=0.1):
  """Params (arrays or shapes) replaced by N(0, scale^2) draws: no
  zero-initialised output. One draw cut into the leaves: a draw per leaf
  costs XLA:CPU seconds of compilation per network."""
  leaves, tree = jax.tree.flatten(params)
  sizes = [int(np.prod(p.shape)) for p in leaves]
  flat = scale * jax.random.normal(key, (sum(sizes),))
  parts = jnp.split(flat, np.cumsum(sizes)[:-1])
  return jax.tree.unflatten(tree, [part.reshape(p.shape)
                                   for part, p in zip(parts, leaves)])


# ------------------------------------------------------- parameter counts


def test_organamnist_unet_has_6_8m_parameters():
  model, shape, num_classes = _configured("organamnist")
  assert isinstance(model, models.UNet) and num_classes is None
  n = _count(_abstract_params(model, shape))
  assert 6.78e6 <= n <= 6.82e6, n  # the config's docstring: 6.8M


def test_cifar10_unet_has_ddpm_s_36m_parameters():
  # Ho et al.'s CIFAR-10 U-Net has 35.7M parameters; the label embedding
  # adds 11 x 512.
  model, shape, num_classes = _configured("cifar10")
  n = _count(_abstract_params(model, shape, num_classes))
  assert 35.6e6 <= n <= 35.9e6, n


def _conv(k, c_in, c_out):
  return k * k * c_in * c_out + c_out


def _dense(n_in, n_out):
  return n_in * n_out + n_out


def test_coursework_cnn_parameter_count_follows_from_its_layers():
  model, (h, w, c), _ = _configured("mnist_ddpm")
  assert isinstance(model, models.CNN)
  hidden, k, freqs = (16, 32, 32, 16), 7, 16
  assert (tuple(model.hidden), model.kernel_size, model.last_kernel_size,
          model.time_embeddings) == (hidden, k, 3, freqs)
  # Time MLP: sin and cos of 16 frequencies -> 128 -> 128 -> 128 -> 16.
  time_mlp = (_dense(2 * freqs, 128) + 2 * _dense(128, 128)
              + _dense(128, hidden[0]))
  # Each block: a 7x7 convolution, then LayerNorm over (H, W, C) with a
  # scale and a bias per element.
  widths = (c,) + hidden
  blocks = sum(_conv(k, a, b) + 2 * h * w * b
               for a, b in zip(widths[:-1], widths[1:]))
  out = _conv(3, hidden[-1], c)
  n = _count(_abstract_params(model, (h, w, c)))
  assert n == time_mlp + blocks + out == 291_217


@pytest.mark.parametrize("name,kwargs,emb_dim", [
    ("unet", _TINY_UNET, 4 * _TINY_UNET["ch"]),
    ("cnn", _TINY_CNN, _TINY_CNN["hidden"][0]),
], ids=["unet", "cnn"])
def test_conditioning_adds_one_embedding_row_per_class_and_the_null_class(
    name, kwargs, emb_dim):
  shape, k = (16, 16, 1), 7
  plain = _count(_abstract_params(models.make_model(name, **kwargs), shape))
  cond = _count(_abstract_params(
      models.make_model(name, num_classes=k, **kwargs), shape, k))
  assert cond - plain == (k + 1) * emb_dim


# ------------------------------------------------------ shapes and dtypes


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs", [("unet", _TINY_UNET),
                                         ("cnn", _TINY_CNN)],
                         ids=["unet", "cnn"])
@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3),
                                         (12, 20, 2)],
                         ids=["28x28x1", "32x32x3", "12x20x2"])
def test_output_shape_equals_input_shape(name, kwargs, image_shape):
  model = models.make_model(name, **kwargs)
  x, t, _ = _inputs(2, image_shape)

  @jax.jit
  def forward(key):  # one compilation for the draw and apply
    params = _randomized(jax.eval_shape(model.init, key, x, t), key)
    return model.apply(params, x, t)
  out = forward(jax.random.key(1))
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("name", ["organamnist", "mnist_ddpm", "mnist_cond",
                                  "cifar10"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_configured_networks_trace_to_float32_params_and_output(name, dtype):
  c = _config(name)
  c.model.dtype = dtype
  model = config_lib.build_model(c)
  shape = (c.data.image_size, c.data.image_size, c.data.channels)
  num_classes = c.data.num_classes if c.training.conditional else None
  x, t, y = _inputs(4, shape, num_classes, abstract=True)
  params = jax.eval_shape(model.init, jax.random.key(0), x, t, y)
  # Parameters (and so the optimiser state) stay float32 for either compute
  # dtype; the network returns float32 eps.
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  out = jax.eval_shape(model.apply, params, x, t, y)
  assert out.shape == (4, *shape) and out.dtype == jnp.float32


@pytest.mark.slow
@pytest.mark.parametrize("name", ["organamnist", "mnist_ddpm"])
def test_bfloat16_networks_convolve_in_bfloat16(name):
  c = _config(name, "tiny")
  c.model.dtype = "bfloat16"
  model = config_lib.build_model(c)
  x, t, _ = _inputs(2, (28, 28, 1))
  params = jax.jit(model.init)(jax.random.key(0), x, t)
  _, state = jax.jit(lambda p: model.apply(
      p, x, t, capture_intermediates=lambda m, _: isinstance(m, nn.Conv),
      mutable=["intermediates"]))(params)
  convs = jax.tree.leaves(state["intermediates"])
  assert len(convs) >= 3
  assert {a.dtype for a in convs} == {jnp.dtype("bfloat16")}


# ------------------------------------------------------------ conditioning


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist_cond", "cifar10"])
def test_conditional_networks_take_every_label_and_the_null_class(name):
  model, shape, k = _configured(name, "tiny")
  assert k is not None
  x, t, _ = _inputs(k + 1, shape)
  y = jnp.arange(k + 1, dtype=jnp.int32)  # 0 .. K-1 and the null class K
  params = _randomized(
      jax.eval_shape(model.init, jax.random.key(0), x, t, y), jax.random.key(1))
  apply = jax.jit(model.apply)
  out = apply(params, x, t, y)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  # No label is the null class K.
  np.testing.assert_array_equal(np.asarray(apply(params, x, t, None)),
                                np.asarray(apply(params, x, t,
                                                 jnp.full_like(y, k))))


# GroupNorm with one channel per group (any level of 32 channels or fewer)
# removes the per-channel shift the embedding adds inside a residual block,
# so the label reaches the output only through wider levels: 64 channels.
@pytest.mark.parametrize("name,kwargs", [
    ("cnn", _TINY_CNN),
    ("unet", dict(_TINY_UNET, ch=64, ch_mult=(1,))),
], ids=["cnn", "unet"])
@pytest.mark.slow
def test_each_label_changes_the_prediction(name, kwargs):
  k = 3
  model = models.make_model(name, num_classes=k, **kwargs)
  x, t, _ = _inputs(k + 1, (8, 8, 1))
  y = jnp.arange(k + 1, dtype=jnp.int32)  # 0 .. K-1 and the null class K
  params = _randomized(
      jax.eval_shape(model.init, jax.random.key(0), x, t, y), jax.random.key(1))
  apply = jax.jit(model.apply)
  out, other = apply(params, x, t, y), apply(params, x, t, (y + 1) % (k + 1))
  diff = jnp.max(jnp.abs(out - other), axis=(1, 2, 3))    # [K + 1]
  assert bool(jnp.all(diff > 1e-3)), diff
