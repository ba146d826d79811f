"""The shape and dtype checks (chex) at the public entry points a user calls
from their own JAX code: a wrong input fails at once, when traced, with an
AssertionError that names the argument and what to pass, instead of a
broadcast error deep inside (or silently wrong numbers); valid inputs trace
once, the checks adding nothing to the compiled program."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import denoiser
from jaxdiff import inverse
from jaxdiff import likelihood
from jaxdiff import losses
from jaxdiff import samplers
from jaxdiff import sde as sde_lib

VP = sde_lib.make_sde("vp")
X = jnp.zeros((2, 4, 4, 1), jnp.float32)  # [B, H, W, C]
T = jnp.full((2,), 0.5, jnp.float32)      # [B]


def _apply(params, x, t, y=None, **kwargs):
  """A network whose output has its input's shape (F = w x)."""
  del t, y, kwargs
  return params["w"] * x


def _one_channel(params, x, t, y=None, **kwargs):
  """A network that drops channels: the wrong output shape."""
  return _apply(params, x, t, y, **kwargs)[..., :1]


def _denoiser(apply_fn=_apply, **kwargs):
  return denoiser.model_denoiser(apply_fn, {"w": jnp.float32(0.1)}, VP,
                                 denoiser.eps_prediction(), **kwargs)


# ---------------------------------------------------------------- denoiser


@pytest.mark.parametrize("t, message", [
    (0.5, "t must be \\[B\\], one time per example"),
    (jnp.full((3,), 0.5), "t has 3 times for a batch of 2"),
    (jnp.full((2, 1), 0.5), "t must be \\[B\\]"),
])
def test_denoiser_time_must_be_one_per_example(t, message):
  for fn in (_denoiser(), denoiser.eps_denoiser(VP, lambda x, t: 0.0 * x)):
    with pytest.raises(AssertionError, match=message):
      fn(X, t)
    with pytest.raises(AssertionError, match=message):  # the same under jit
      jax.jit(fn)(X, t)


def test_denoiser_output_must_have_the_input_shape():
  x = jnp.zeros((2, 4, 4, 3))
  with pytest.raises(AssertionError,
                     match="network's output .* got \\(2, 4, 4, 1\\)"):
    _denoiser(_one_channel)(x, T)
  with pytest.raises(AssertionError, match="eps_fn\\(x, t\\) must have"):
    denoiser.eps_denoiser(VP, lambda x, t: x[..., :1])(x, T)


def test_denoiser_labels_one_per_example():
  fn = _denoiser(labels=jnp.zeros((3,), jnp.int32), num_classes=10,
                 guidance_scale=1.0)
  with pytest.raises(AssertionError, match="labels must be \\[B\\]"):
    fn(X, T)


def test_valid_denoiser_calls_are_unchanged():
  pred = _denoiser()(X + 1.0, T)
  want = denoiser.from_eps(VP, X + 1.0, T, 0.1 * (X + 1.0))
  np.testing.assert_array_equal(pred.eps, want.eps)
  np.testing.assert_array_equal(pred.x0, want.x0)


# ---------------------------------------------------------------- samplers


def test_samplers_surface_the_denoiser_checks():
  """Every sampler step calls the denoiser at (x, t [B]), the boundary the
  samplers share: a network that does not return its input's shape fails
  there, while tracing, with the denoiser's message."""
  with pytest.raises(AssertionError, match="network's output"):
    jax.jit(lambda key: samplers.sample(
        "ddim", VP, _denoiser(_one_channel), key, (2, 4, 4, 3), steps=3))(
            jax.random.key(0))


# ------------------------------------------------------------------ losses


@pytest.mark.parametrize("x0, kwargs, message", [
    (jnp.zeros((2, 4, 4, 1), jnp.uint8), {}, "x0 must be float images"),
    (jnp.zeros((2, 16)), dict(lambda_freq=0.1), "needs x0 \\[B, H, W, C\\]"),
    (X, dict(labels=jnp.zeros((3,), jnp.int32), num_classes=10),
     "labels must be \\[B\\]"),
])
def test_diffusion_loss_checks_its_inputs(x0, kwargs, message):
  with pytest.raises(AssertionError, match=message):
    losses.diffusion_loss(_apply, {"w": 0.1}, VP, x0, jax.random.key(0),
                          **kwargs)


def test_diffusion_loss_checks_the_network_output():
  with pytest.raises(AssertionError,
                     match="diffusion_loss: the network's output must have"):
    jax.jit(lambda x0: losses.diffusion_loss(
        _one_channel, {"w": 0.1}, VP, x0, jax.random.key(0)))(
            jnp.zeros((2, 4, 4, 3)))


# ----------------------------------------------------------------- inverse


def _sr2_problem():
  """2x super-resolution of 8x8 images: measurements [B, 4, 4, 1]."""
  return inverse.InverseProblem(inverse.make_operator("sr2", (8, 8, 1)),
                                sigma=0.1, noise_model="gaussian")


def test_dps_measurements_must_fit_the_operator():
  problem = _sr2_problem()
  assert problem.measurement_shape == (4, 4, 1)
  image_sized = jnp.zeros((2, 8, 8, 1))  # y given as an image: a mix-up
  with pytest.raises(AssertionError,
                     match="dps_stepper: y must be \\[B, 4, 4, 1\\].*'sr2'"):
    inverse.dps_stepper("ddim", VP, _denoiser(), problem, image_sized,
                        zeta=1.0)
  method = inverse.make_method("tweedie", VP, problem)
  with pytest.raises(AssertionError, match="'tweedie'.*y must be"):
    method(_denoiser(), image_sized, jax.random.key(0))


def test_dps_samples_and_measurements_share_the_batch():
  problem = _sr2_problem()
  y = jnp.zeros((2, 4, 4, 1))
  stepper = inverse.dps_stepper("ddim", VP, _denoiser(), problem, y,
                                zeta=1.0)
  with pytest.raises(AssertionError, match="the same batch size"):
    samplers.integrate(stepper, jnp.zeros((3, 8, 8, 1)),
                       samplers.time_grid(VP, 2, end_at_zero=False),
                       jax.random.key(0))


# -------------------------------------------------------------- likelihood


def test_likelihoods_check_the_kind_of_data():
  levels = jnp.zeros((2, 4), jnp.uint8)
  dn = denoiser.eps_denoiser(VP, lambda x, t: 0.0 * x)
  key = jax.random.key(0)
  with pytest.raises(AssertionError, match="use ode_bits_per_dim"):
    likelihood.ode_log_likelihood(VP, dn, levels, key)
  with pytest.raises(AssertionError, match="x must be integer levels"):
    likelihood.ode_bits_per_dim(VP, dn, levels / 127.5 - 1.0, key)
  chain = sde_lib.make_sde("vp", num_steps=4)
  with pytest.raises(AssertionError, match="x / 127.5 - 1"):
    likelihood.chain_bound(chain, denoiser.eps_denoiser(
        chain, lambda x, t: 0.0 * x), levels, key)


# ----------------------------------------------------- one trace, no more


def test_checked_entry_points_trace_once():
  """New parameters, data and keys of the same shapes reuse the trace: the
  checks are trace-time only and cause no retracing."""

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, x0, key):
    denoise_fn = denoiser.model_denoiser(_apply, params, VP,
                                         denoiser.eps_prediction())
    x = samplers.sample("ddim", VP, denoise_fn, key, x0.shape, steps=3)
    loss, _ = losses.diffusion_loss(_apply, params, VP, x0, key,
                                    lambda_freq=0.1)
    return x, loss

  for i in range(3):
    x, loss = step({"w": jnp.float32(0.1 * i)},
                   jax.random.normal(jax.random.key(i), X.shape),
                   jax.random.key(i))
    assert x.shape == X.shape and np.isfinite(float(loss))
