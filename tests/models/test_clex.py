"""CLEX's frequencies (embedjax.models.clex): an untrained dynamics integrates to the NTK-aware
frequencies at alpha = 2t - 1 (closed form, float64 numpy); a trained-looking one equals the same
ODE written in torch and solved by torchdiffeq's rk4 (the reference implementation's solver);
gradients reach the dynamics' parameters; t <= 1 is the plain RoPE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.models import clex

D, THETA = 16, 10000.0


def _ntk64(t: float) -> np.ndarray:
  alpha = 2 * t - 1
  index = np.arange(0, D, 2, dtype=np.float64)
  return 1.0 / (THETA * alpha ** (D / (D - 2))) ** (index / D)


@pytest.mark.parametrize('t', [1.0, 1.5, 2.0, 3.37, 8.0])
def test_untrained_clex_is_ntk_aware_scaling_at_alpha_2t_minus_1(t):
  params = clex.init_clex(jax.random.key(0), D, param_factor=2)
  got = clex.clex_frequencies(params, t, theta=THETA, head_dim=D, max_t=8.0, time_dt=0.05)
  np.testing.assert_allclose(np.asarray(got), _ntk64(t), rtol=2e-5)
  delta, ntk = clex.ntk_time_embedding(t, THETA, D)
  np.testing.assert_allclose(np.asarray(ntk), _ntk64(t), rtol=1e-6)
  eps = 1e-4  # the derivative against a central difference of the closed form
  if t > 1:
    np.testing.assert_allclose(np.asarray(delta), (_ntk64(t + eps) - _ntk64(t - eps)) / (2 * eps),
                               rtol=1e-4, atol=1e-9)


def test_scale_at_most_one_is_the_plain_rope():
  params = clex.init_clex(jax.random.key(1), D)
  params['down'] = jax.random.normal(jax.random.key(2), params['down'].shape)  # not the identity
  got = clex.clex_frequencies(params, 1.0, theta=THETA, head_dim=D, max_t=4.0)
  np.testing.assert_allclose(np.asarray(got), _ntk64(1.0), rtol=1e-6)


def test_learned_dynamics_equal_torchdiffeq_rk4():
  torch = pytest.importorskip('torch')
  torchdiffeq = pytest.importorskip('torchdiffeq')
  rng = np.random.default_rng(0)
  up = rng.normal(0, 0.3, (D // 2, 2 * D)).astype(np.float32)
  down = rng.normal(0, 0.05, (2 * D, D // 2)).astype(np.float32)
  t_end, dt = 3.3, 0.1

  class Dynamics(torch.nn.Module):  # the CLEX dynamics, written out in torch (float64)
    def forward(self, t, z):
      alpha = 2 * t - 1
      index = torch.arange(0, D, 2, dtype=torch.float64)
      ntk = 1.0 / (THETA * alpha ** (D / (D - 2))) ** (index / D)
      delta = -2 * index / (D - 2) / (THETA ** (index / D) * alpha ** (index / (D - 2) + 1))
      hidden = torch.tanh((z + torch.log(ntk)) @ torch.from_numpy(up).double())
      return hidden @ torch.from_numpy(down).double() + delta / ntk

  z0 = -torch.arange(0, D, 2, dtype=torch.float64) / D * np.log(THETA)
  sol = torchdiffeq.odeint(Dynamics(), z0, torch.tensor([1.0, t_end], dtype=torch.float64),
                           method='rk4', options={'step_size': dt})
  want = np.exp(sol[1].numpy())
  got = clex.clex_frequencies({'up': jnp.asarray(up), 'down': jnp.asarray(down)}, t_end,
                              theta=THETA, head_dim=D, max_t=4.0, time_dt=dt)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5)
  assert np.abs(np.log(want) - np.log(_ntk64(t_end))).max() > 1e-2  # the learned part matters


def test_gradients_reach_the_dynamics_and_t_may_be_traced():
  params = clex.init_clex(jax.random.key(3), D)

  def loss(p, t):
    return jnp.sum(clex.clex_frequencies(p, t, theta=THETA, head_dim=D, max_t=4.0, time_dt=0.1))

  grads = jax.jit(jax.grad(loss))(params, 2.5)
  assert float(jnp.abs(grads['down']).max()) > 0  # W_down starts at zero but is trained
  a = jax.jit(loss)(params, 2.5)
  b = loss(params, 2.5)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
  with pytest.raises(ValueError, match='act'):
    clex.clex_frequencies(params, 2.0, theta=THETA, head_dim=D, max_t=4.0, act='relu')
