"""AutoDim: the supernet's weighted sum against float64 numpy, alpha and every candidate trained,
and the budgeted choice of widths against brute force."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.tables import autodim, base, methods, mixed_dim

VOCAB = (50, 7, 2, 300, 13)
DIM = 8


def _ids(batch=16, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(np.stack([rng.integers(0, v, batch) for v in VOCAB], axis=1), jnp.int32)


def test_supernet_is_the_softmax_weighted_sum_of_projected_candidates():
  table = autodim.supernet(VOCAB, DIM, choices=(2, 4, 8))
  assert autodim.supernet(VOCAB, DIM).config['choices'] == [1, 2, 4, 8]
  params = table.init(jax.random.key(0))
  params['alpha'] = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)), jnp.float32)
  ids = np.asarray(_ids())
  a = np.asarray(params['alpha'], np.float64)
  w = np.exp(a) / np.exp(a).sum(1, keepdims=True)
  want = np.zeros(ids.shape + (DIM,))
  for f in range(5):
    for k, d in enumerate((2, 4, 8)):
      e = np.asarray(params[f'table{f}_{k}'], np.float64)[ids[:, f]]
      if d < DIM:
        e = e @ np.asarray(params[f'proj{f}_{k}'], np.float64)
      want[:, f] += w[f, k] * e
  np.testing.assert_allclose(np.asarray(table.lookup(params, jnp.asarray(ids))), want, rtol=1e-5,
                             atol=1e-7)
  # Training (a key): Gumbel noise on alpha; alpha and every candidate receive gradient.
  grads = jax.grad(lambda p: jnp.sum(table.lookup(p, jnp.asarray(ids), key=jax.random.key(2)) ** 2))(params)
  for name, g in grads.items():
    assert float(jnp.abs(g).sum()) > 0, name


def test_choose_dims_keeps_argmax_when_it_fits_and_matches_brute_force_when_cut():
  rng = np.random.default_rng(3)
  choices = (2, 4, 8)
  for trial in range(20):
    alpha = rng.normal(size=(5, 3))
    big = autodim.choose_dims(alpha, choices, VOCAB, DIM, 10 ** 9)
    assert big == [choices[k] for k in np.argmax(alpha, 1)]
    budget = int(rng.integers(4 * 400, base.full_table_bytes(VOCAB, DIM)))
    got = autodim.choose_dims(alpha, choices, VOCAB, DIM, budget)
    fits = [p for p in itertools.product(range(3), repeat=5)
            if mixed_dim.mixed_dim_bytes(VOCAB, DIM, [choices[k] for k in p]) <= budget]
    if got is None:
      assert not fits
      continue
    assert mixed_dim.mixed_dim_bytes(VOCAB, DIM, got) <= budget
    # Locally optimal: no single field can move to a candidate of larger alpha and still fit.
    for f in range(5):
      for k, d in enumerate(choices):
        if alpha[f, k] > alpha[f, choices.index(got[f])]:
          trial = got[:f] + [d] + got[f + 1:]
          assert mixed_dim.mixed_dim_bytes(VOCAB, DIM, trial) > budget, (trial, budget)


def test_for_budget_and_refusals():
  full = base.full_table_bytes(VOCAB, DIM)
  assert methods.for_budget('autodim', VOCAB, DIM, full // 2).config['budget_bytes'] == full // 2
  with pytest.raises(base.Infeasible):
    methods.for_budget('autodim', VOCAB, DIM, 100)
  with pytest.raises(ValueError, match='choices'):
    autodim.supernet(VOCAB, DIM, choices=(4, 16))
