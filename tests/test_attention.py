"""The U-Net's attention implementations (config.model.kwargs.attention):
"matmul" (the default) and "xla" (`jax.nn.dot_product_attention`) give the
same outputs and gradients with the same parameters, "cudnn" is refused with
a one-line error where JAX has no GPU, and the choice changes no parameter
(checkpoints load whichever is used)."""
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff.models import unet as unet_lib

# A U-Net small enough to trace in seconds, with attention at both levels
# (8x8 and the 4x4 middle block) and two heads.
TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
            num_heads=2, dropout=0.0)
SHAPE = (2, 8, 8, 1)


def _inputs():
  x = jax.random.normal(jax.random.key(1), SHAPE)
  t = jnp.array([0.3, 0.8])
  return x, t


def _random_params(model, seed=0):
  """Parameters of the model's shapes, every leaf random (the zero-initialised
  attention output kernels would otherwise hide the attention entirely)."""
  x, t = _inputs()
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    z = rng.normal(size=leaf.shape).astype(np.float32)
    if path[-1].key == "scale":
      return jnp.asarray(1.0 + 0.1 * z)
    if path[-1].key == "kernel":
      return jnp.asarray(z / np.sqrt(np.prod(leaf.shape[:-1])))
    return jnp.asarray(0.1 * z)

  return jax.tree_util.tree_map_with_path(draw, shapes["params"])


def _model_and_params(attention, dtype=jnp.float32):
  model = unet_lib.UNet(**TINY, dtype=dtype, attention=attention)
  return model, _random_params(model)


@functools.lru_cache(maxsize=None)
def _forward(attention, dtype=jnp.float32):
  model, params = _model_and_params(attention, dtype)
  x, t = _inputs()
  return jax.jit(lambda p: model.apply({"params": p}, x, t))(params)


def _grads(attention):
  model, params = _model_and_params(attention)
  x, t = _inputs()
  return jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(
      model.apply({"params": p}, x, t)))))(params)


def test_matmul_and_xla_agree_in_float32():
  out_m, out_x = _forward("matmul"), _forward("xla")
  assert float(jnp.std(out_m)) > 0.1  # the attention is not a no-op
  np.testing.assert_allclose(out_x, out_m, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(_grads("xla")),
                  jax.tree.leaves(_grads("matmul"))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_matmul_and_xla_agree_in_bfloat16():
  out_m = _forward("matmul", jnp.bfloat16)
  out_x = _forward("xla", jnp.bfloat16)
  out_32 = _forward("matmul")
  scale = float(jnp.max(jnp.abs(out_32)))
  # bf16 keeps 8 bits of mantissa (eps 2^-8 = 0.004); through the network's
  # layers the two orders of arithmetic differ by a few eps of the scale,
  # about as much as either differs from float32.
  np.testing.assert_allclose(out_x, out_m, atol=0.03 * scale)
  np.testing.assert_allclose(out_x, out_32, atol=0.03 * scale)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN is here")
def test_cudnn_without_a_gpu_is_a_one_line_error():
  model = unet_lib.UNet(**TINY, attention="cudnn")
  x, t = _inputs()
  with pytest.raises(ValueError, match="needs an NVIDIA GPU") as e:
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, t))
  message = str(e.value)
  assert "\n" not in message
  assert "'xla'" in message and "'matmul'" in message


def test_the_default_is_matmul_and_the_parameters_are_the_same():
  assert unet_lib.UNet().attention == "matmul"
  assert unet_lib.AttnBlock(2).attention == "matmul"
  x, t = _inputs()

  def tree(**kwargs):
    model = unet_lib.UNet(**TINY, **kwargs)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t))
    return jax.tree.map(lambda a: (a.shape, a.dtype), params)

  default = tree()
  assert tree(attention="matmul") == default
  assert tree(attention="xla") == default
  # The config without the key builds the default network, whose parameters
  # are those of the shipped configs' checkpoints.
  config = importlib.import_module("configs.organamnist").get_config("tiny")
  assert "attention" not in config.model.kwargs
  assert config_lib.build_model(config).attention == "matmul"


def test_the_config_chooses_the_implementation():
  config = importlib.import_module("configs.organamnist").get_config("tiny")
  config.model.kwargs.attention = "xla"
  assert config_lib.build_model(config).attention == "xla"
  config.model.kwargs.attention = "flash"
  with pytest.raises(ValueError, match="kwargs.attention='flash' must be one"):
    config_lib.build_model(config)
