"""MGQE: frequency tiers, nearest allowed centroids against float64 numpy, gradients to the
centroids chosen and the query rows read, the served codes, bytes by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.tables import base, methods, mgqe

VOCAB = (50, 7, 2, 300, 13)
DIM = 8
N = sum(VOCAB)


def test_tiers_rank_ids_by_count():
  counts = np.asarray([5, 0, 9, 9, 1, 3, 0, 2, 7, 4])
  # 20% most frequent: ids 2 and 3 (tie to the lower id first); the rest tier 1.
  np.testing.assert_array_equal(mgqe.tiers_of(counts, 10, (0.2, 0.8)),
                                [1, 1, 0, 0, 1, 1, 1, 1, 1, 1])
  assert (mgqe.tiers_of(None, 10, (0.2, 0.8)) == 0).all()


@pytest.fixture(scope='module')
def trained():
  counts = np.random.default_rng(0).zipf(1.5, N).astype(np.float64)
  table = mgqe.mgqe(VOCAB, DIM, subspaces=4, tier_codes=(16, 4), tiers=(0.1, 0.9), counts=counts)
  params = table.init(jax.random.key(0))
  rng = np.random.default_rng(1)
  params = {'embedding': jnp.asarray(rng.normal(0, 1, (N, DIM)), jnp.float32),
            'codebooks': jnp.asarray(rng.normal(0, 1, (4, 16, 2)), jnp.float32)}
  return table, params, mgqe.tiers_of(counts, N, (0.1, 0.9))


def _ids(batch=32, seed=2):
  rng = np.random.default_rng(seed)
  return jnp.asarray(np.stack([rng.integers(0, v, batch) for v in VOCAB], axis=1), jnp.int32)


def test_lookup_is_the_nearest_allowed_centroid_per_subspace(trained):
  table, params, tier = trained
  ids = _ids()
  g = np.asarray(ids) + base.field_offsets(VOCAB)
  e = np.asarray(params['embedding'], np.float64)[g].reshape(*g.shape, 4, 2)
  books = np.asarray(params['codebooks'], np.float64)
  want = np.empty(e.shape)
  for idx in np.ndindex(*g.shape):
    allowed = 16 if tier[g[idx]] == 0 else 4
    for m in range(4):
      d = ((books[m, :allowed] - e[idx][m]) ** 2).sum(-1)
      want[idx][m] = books[m, np.argmin(d)]
  got = np.asarray(jax.jit(table.lookup)(params, ids))
  np.testing.assert_allclose(got, want.reshape(*g.shape, DIM), rtol=1e-6)
  assert (tier[g] == 1).any() and (tier[g] == 0).any()


def test_gradient_reaches_the_centroids_chosen_and_the_rows_read(trained):
  table, params, _ = trained
  ids = _ids(4)
  grads = jax.grad(lambda p: jnp.sum(table.lookup(p, ids)))(params)
  rows = np.unique(np.asarray(ids) + base.field_offsets(VOCAB))
  ge = np.asarray(grads['embedding'])
  assert (ge[rows] != 0).all() and not np.delete(ge, rows, axis=0).any()
  served = table.finalize(params)
  chosen = np.zeros((4, 16), bool)
  for m in range(4):
    chosen[m, np.asarray(served['codes'])[rows, m]] = True
  gc = np.abs(np.asarray(grads['codebooks'])).sum(-1)
  np.testing.assert_array_equal(gc > 0, chosen)


def test_served_codes_read_back_the_training_forward_and_bytes(trained):
  table, params, tier = trained
  served = table.finalize(params)
  ids = _ids()
  # (training reads q + e - e: equal up to float rounding)
  np.testing.assert_allclose(np.asarray(table.lookup(served, ids)),
                             np.asarray(table.lookup(params, ids)), rtol=0, atol=1e-6)
  codes = np.asarray(served['codes'])
  assert (codes[tier == 1] < 4).all()
  frequent = int((tier == 0).sum())
  # tier 0: 4 codes x 4 bits = 2 bytes per id; tier 1: 4 x 2 bits = 1 byte; codebooks 16 x 8 x 4;
  # the tier map: 1 bit per id (372 ids: 47 bytes) and an int32 offset per 64 ids (6 of them).
  assert table.param_bytes(served) == frequent * 2 + (N - frequent) * 1 + 16 * 8 * 4 + 47 + 24
  one_tier = mgqe.mgqe(VOCAB, DIM, subspaces=4, tier_codes=(16,), tiers=(1.0,))
  assert one_tier.param_bytes(served) == N * 2 + 16 * 8 * 4  # one width: no map


def test_served_codes_are_computed_in_chunks_as_in_one_pass(trained, monkeypatch):
  """Serving assigns codes in chunks of ids (memory); every id's code is its nearest allowed
  centroid, float64 numpy, whatever the chunk (here 50: 372 ids, the last chunk padded)."""
  table, params, tier = trained
  monkeypatch.setattr(mgqe, 'FINALIZE_CHUNK', 50)
  codes = np.asarray(table.finalize(params)['codes'])
  e = np.asarray(params['embedding'], np.float64).reshape(N, 4, 2)
  books = np.asarray(params['codebooks'], np.float64)
  d = ((e[:, :, None, :] - books[None]) ** 2).sum(-1)  # (N, 4, 16)
  d[tier == 1, :, 4:] = np.inf
  np.testing.assert_array_equal(codes, d.argmin(-1))


def test_for_budget_and_refusals():
  full = base.full_table_bytes(VOCAB, DIM)
  table = methods.for_budget('mgqe', VOCAB, DIM, full // 2)
  served = table.finalize(table.init(jax.random.key(0)))
  assert table.param_bytes(served) <= full // 2
  with pytest.raises(base.Infeasible):
    methods.for_budget('mgqe', VOCAB, DIM, 100)
  with pytest.raises(ValueError, match='divide'):
    mgqe.mgqe(VOCAB, DIM, subspaces=3)
