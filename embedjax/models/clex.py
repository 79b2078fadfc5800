"""CLEX: rotary frequencies scaled by a learned continuous dynamics over the scale factor.

CLEX (Chen et al., 2024, "CLEX: Continuous Length Extrapolation for Large Language Models")
generalises the fixed frequency scalings (PI, NTK-aware, YaRN) to a neural ODE over the scaling
factor t = length / trained length. The state is the log of the rotary inverse frequencies
``z(t) = log inv_freq(t)`` (``head_dim / 2`` of them), from ``z(1) = log inv_freq`` of the plain
RoPE, and

    dz/dt = act((z + log ntk(t)) @ W_up) @ W_down + d/dt log ntk(t)

where ``ntk(t)`` are the NTK-aware frequencies at base ``theta * alpha^(d / (d - 2))`` with
``alpha = 2t - 1`` (so ``ntk(1)`` is the plain RoPE) and ``W_up`` (d/2, factor d), ``W_down``
(factor d, d/2) are learned. ``W_down`` starts at zero, so an untrained CLEX integrates to exactly
the NTK-aware frequencies at ``alpha = 2t - 1``; training (with t sampled per step and the
positions of a sampled longer range squeezed into the trained one) learns the correction. The
integration is fixed-step RK4 in the 3/8-rule form (the reference implementation's
``torchdiffeq`` ``'rk4'`` with ``step_size``: the same grid, the last step shorter), written so
that t may be a traced value below a static ``max_t``: steps beyond t have length 0.

This module gives the frequencies; a decoder reads them as its ``inv_freq`` (``rope.apply_rope``).
Tests: tests/models/test_clex.py (the untrained dynamics against the closed form, and the learned
one against the same ODE solved by torchdiffeq).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

ACTIVATIONS = {'tanh': jnp.tanh, 'silu': jax.nn.silu}


def init_clex(key: jax.Array, head_dim: int, param_factor: int = 1) -> dict:
  """The dynamics' parameters: ``up`` (d/2, factor d) Kaiming-uniform as torch's Linear default
  (bound ``1 / sqrt(fan_in)`` for ``fan_in = factor d``, the reference's layout), ``down``
  (factor d, d/2) zero."""
  if head_dim % 2 or head_dim < 4:
    raise ValueError(f'head_dim must be even and >= 4, got {head_dim}')
  width = param_factor * head_dim
  # torch's kaiming_uniform_(a=sqrt(5)) on a (d/2, width) tensor: fan_in = its second dimension
  bound = 1.0 / math.sqrt(width)
  return {'up': jax.random.uniform(key, (head_dim // 2, width), jnp.float32, -bound, bound),
          'down': jnp.zeros((width, head_dim // 2), jnp.float32)}


def ntk_time_embedding(t: jax.Array, theta: float, head_dim: int) -> tuple[jax.Array, jax.Array]:
  """(d/dt ntk(t), ntk(t)), each (d/2,): the NTK-aware inverse frequencies at ``alpha = 2t - 1``
  (alpha = 1 for t < 1) and their derivative in t."""
  t = jnp.asarray(t, jnp.float32)
  alpha = jnp.where(t < 1, 1.0, 2 * t - 1)
  index = jnp.arange(0, head_dim, 2, dtype=jnp.float32)
  exponent = index / (head_dim - 2)
  inv_freq = 1.0 / (theta * alpha ** (head_dim / (head_dim - 2))) ** (index / head_dim)
  # d/dt alpha^(-i/(d-2)) theta^(-i/d) = -2 i/(d-2) theta^(-i/d) alpha^(-i/(d-2) - 1), for t >= 1
  delta = -2 * exponent / (theta ** (index / head_dim) * alpha ** (exponent + 1))
  return jnp.where(t < 1, 0.0, delta), inv_freq


def dynamics(params: dict, t: jax.Array, z: jax.Array, theta: float, head_dim: int,
             act: str = 'tanh') -> jax.Array:
  """dz/dt at (t, z), z (d/2,) the log inverse frequencies."""
  delta, ntk = ntk_time_embedding(t, theta, head_dim)
  hidden = ACTIVATIONS[act]((z + jnp.log(ntk)) @ params['up'])
  return hidden @ params['down'] + delta / ntk


def clex_frequencies(params: dict, t: jax.Array, *, theta: float, head_dim: int, max_t: float,
                     time_dt: float = 0.01, act: str = 'tanh') -> jax.Array:
  """(d/2,) inverse frequencies at scale ``t`` in [1, max_t]: RK4 (3/8 rule) from 1 to t in steps
  of ``time_dt`` (the last one shorter), differentiable in ``params`` and in t.

  Args:
    params: ``init_clex``'s pytree (trained or not).
    t: the scale factor (a traced scalar is fine); t <= 1 gives the plain RoPE frequencies.
    theta, head_dim: the plain RoPE's base and head width.
    max_t: a static upper bound of t (sets the number of steps: ceil((max_t - 1) / time_dt)).
    time_dt, act: the reference's step size and activation.
  """
  if act not in ACTIVATIONS:
    raise ValueError(f'act must be one of {sorted(ACTIVATIONS)}, got {act!r}')
  chex.assert_shape(params['up'], (head_dim // 2, None))
  t = jnp.asarray(t, jnp.float32)
  steps = max(int(math.ceil((max_t - 1.0) / time_dt - 1e-9)), 0)
  z0 = -(jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim) * math.log(theta)
  f = lambda s, z: dynamics(params, s, z, theta, head_dim, act)

  def step(i, z):
    s = 1.0 + i * time_dt
    h = jnp.clip(t - s, 0.0, time_dt)  # 0 past t: the step changes nothing
    # RK4 in its 3/8-rule form, which torchdiffeq's 'rk4' uses (the reference's solver)
    k1 = f(s, z)
    k2 = f(s + h / 3, z + h * k1 / 3)
    k3 = f(s + 2 * h / 3, z + h * (k2 - k1 / 3))
    k4 = f(s + h, z + h * (k1 - k2 + k3))
    return z + (k1 + 3 * (k2 + k3) + k4) * h / 8

  return jnp.exp(jax.lax.fori_loop(0, steps, step, z0))
