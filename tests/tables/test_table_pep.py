"""PEP: the soft threshold against float64 numpy at every granularity, the budget cut, and the
served sparse form equal to the masked dense table."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.tables import base, methods, pep

VOCAB = (50, 7, 2, 300, 13)
DIM = 8
N = sum(VOCAB)


def _ids(batch=24, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(np.stack([rng.integers(0, v, batch) for v in VOCAB], axis=1), jnp.int32)


@pytest.mark.parametrize('granularity', pep.GRANULARITIES)
def test_soft_threshold_lookup_equals_float64_numpy(granularity):
  table = pep.pep(VOCAB, DIM, granularity=granularity)
  params = table.init(jax.random.key(0))
  rng = np.random.default_rng(1)
  params['embedding'] = jnp.asarray(rng.normal(0, 0.5, (N, DIM)), jnp.float32)
  params['threshold'] = jnp.asarray(rng.normal(-1, 1, params['threshold'].shape), jnp.float32)
  ids = _ids()
  g = np.asarray(ids) + base.field_offsets(VOCAB)
  v = np.asarray(params['embedding'], np.float64)[g]
  s = np.asarray(params['threshold'], np.float64)
  s = s[g] if s.shape[0] == N else s[0]
  want = np.sign(v) * np.maximum(np.abs(v) - 1 / (1 + np.exp(-s)), 0)
  got = np.asarray(jax.jit(table.lookup)(params, ids))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert (got == 0).any() and (got != 0).any()
  # The thresholds are trained: the loss reaches them.
  grad = jax.grad(lambda p: jnp.sum(table.lookup(p, ids) ** 2))(params)['threshold']
  assert float(jnp.abs(grad).sum()) > 0


def test_budget_mask_keeps_learned_survivors_and_cuts_by_magnitude():
  values = np.zeros((4, 3))
  values[0] = [0.5, -0.1, 0.0]
  values[2] = [0.0, -0.7, 0.2]
  np.testing.assert_array_equal(pep.budget_mask(values, 8 * 10), values != 0)  # 4 fit
  cut = pep.budget_mask(values, 8 * 2 + 7)  # room for two: -0.7 and 0.5
  assert cut.sum() == 2 and cut[2, 1] and cut[0, 0]


@pytest.mark.parametrize('budget_entries', [1, 7, 40, 95, 96, 200])
def test_budget_mask_equals_a_full_sort_with_ties_to_the_lower_index(budget_entries):
  # the reference: sort every entry by magnitude, largest first, ties by flat index
  rng = np.random.default_rng(budget_entries)
  values = rng.choice([0.0, 0.1, -0.1, 0.2, -0.3, 0.05], size=(16, 8))  # many ties, some zeros
  flat = np.abs(values).ravel()
  order = sorted(np.flatnonzero(flat), key=lambda i: (-flat[i], i))[:budget_entries]
  want = np.zeros(flat.size, bool)
  want[order] = True
  got = pep.budget_mask(values, 8 * budget_entries + 3)
  np.testing.assert_array_equal(got, want.reshape(values.shape))
  assert got.sum() == min(budget_entries, int((values != 0).sum()))


def test_served_sparse_form_equals_the_masked_dense_table():
  mask = np.random.default_rng(2).random((N, DIM)) < 0.2
  mask[10] = False  # a row with nothing kept reads zeros
  table = pep.pruned(VOCAB, DIM, mask=mask)
  params = table.init(jax.random.key(3))
  params = {'embedding': params['embedding'] + 0.3 * jnp.asarray(mask, jnp.float32)}  # "trained"
  served = table.finalize(params)
  assert table.param_bytes(served) == 8 * int(mask.sum())
  ids = jnp.concatenate([_ids(), jnp.asarray([[10, 0, 0, 0, 0]], jnp.int32)])
  dense = np.asarray(params['embedding']) * mask
  want = dense[np.asarray(ids) + base.field_offsets(VOCAB)]
  np.testing.assert_array_equal(np.asarray(jax.jit(table.lookup)(served, ids)), want)
  np.testing.assert_array_equal(np.asarray(table.lookup(params, ids)), want)
  # Pruned entries start at zero and get no gradient; the restart draws pep's initial table.
  grad = np.asarray(jax.grad(lambda p: jnp.sum(table.lookup(p, ids)))(params)['embedding'])
  assert (grad[~mask] == 0).all() and (grad[mask] != 0).any()
  first = pep.pep(VOCAB, DIM).init(jax.random.key(3))['embedding']
  np.testing.assert_array_equal(np.asarray(table.init(jax.random.key(3))['embedding']),
                                np.asarray(first) * mask)


def test_for_budget_and_refusals():
  table = methods.for_budget('pep', VOCAB, DIM, 1000)
  assert table.config['budget_bytes'] == 1000 and table.config['granularity'] == 'feature'
  with pytest.raises(base.Infeasible):
    methods.for_budget('pep', VOCAB, DIM, 7)
  with pytest.raises(ValueError, match='granularity'):
    pep.pep(VOCAB, DIM, granularity='row')
  with pytest.raises(ValueError, match='mask'):
    pep.pruned(VOCAB, DIM, mask=np.ones((3, DIM), bool))
