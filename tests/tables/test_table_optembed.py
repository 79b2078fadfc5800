"""OptEmbed: surrogate gradient, threshold pruning, budget pruning, search, compact served form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from embedjax.tables import base, optembed

VOCAB = (50, 7, 2, 300, 13)
DIM = 8


def test_long_tail_step_forward_and_surrogate_gradient():
  x = jnp.asarray([-2.0, -0.7, -0.2, 0.0, 0.1, 0.5, 3.0])
  np.testing.assert_array_equal(np.asarray(optembed.long_tail_step(x)), [0, 0, 0, 0, 1, 1, 1])
  g = jax.vmap(jax.grad(optembed.long_tail_step))(x)
  np.testing.assert_allclose(np.asarray(g), [0.0, 0.4, 1.2, 2.0, 1.6, 0.4, 0.0], rtol=1e-6)


def test_supernet_prunes_rows_below_threshold_and_gradient_reaches_threshold():
  table = optembed.supernet(VOCAB, DIM, alpha=1e-3)
  params = table.init(jax.random.key(0))
  norms = np.abs(np.asarray(params['embedding'])).mean(axis=1)
  params = {**params, 'threshold': jnp.full((len(VOCAB),), float(np.median(norms)))}
  ids = jnp.asarray(np.stack([np.arange(50) % v for v in VOCAB], axis=1), jnp.int32)
  out = table.lookup(params, ids)
  g = np.asarray(ids) + base.field_offsets(VOCAB)
  kept = norms[g] > float(np.median(norms))
  np.testing.assert_array_equal(np.asarray(jnp.abs(out).sum(-1) > 0), kept)
  grads = jax.grad(lambda p: jnp.sum(table.lookup(p, ids)) + table.regularizer(p))(params)
  assert np.all(np.asarray(grads['threshold']) != 0)
  keep, _ = optembed.learned_keep(params, VOCAB)
  assert keep.sum() == (norms > float(np.median(norms))).sum()


def test_supernet_samples_per_field_dims_only_when_training():
  table = optembed.supernet(VOCAB, DIM, dim_choices=(2, 4, 8))
  params = table.init(jax.random.key(0))
  ids = jnp.zeros((3, len(VOCAB)), jnp.int32)
  full = table.lookup(params, ids)
  assert bool((full != 0).all())
  widths = set()
  for s in range(6):
    out = np.asarray(table.lookup(params, ids, key=jax.random.key(s)))
    nonzero = (out != 0).sum(-1)[0]  # (F,) width of each field in this step
    assert set(nonzero.tolist()) <= {2, 4, 8}
    widths |= set(nonzero.tolist())
  assert len(widths) > 1


def test_budget_keep_and_served_bytes():
  n = sum(VOCAB)
  rng = np.random.default_rng(0)
  norms = rng.random(n)
  keep = norms > 0.2
  dims = (4, 8, 8, 2, 1)
  unlimited = optembed.budget_keep(VOCAB, keep, norms, dims, 10**9)
  np.testing.assert_array_equal(unlimited, keep)
  budget = optembed.served_bytes(VOCAB, keep, dims) // 2
  pruned = optembed.budget_keep(VOCAB, keep, norms, dims, budget)
  assert optembed.served_bytes(VOCAB, pruned, dims) <= budget
  assert not np.any(pruned & ~keep)
  # What was dropped has smaller norms than what was kept, per byte-ranking by norm.
  assert norms[pruned].min() >= norms[keep & ~pruned].max()
  assert optembed.budget_keep(VOCAB, keep, norms, dims, 10) is None


def test_fixed_table_compact_form_matches_masked_training_lookup_and_bytes():
  n = sum(VOCAB)
  rng = np.random.default_rng(1)
  keep = rng.random(n) < 0.6
  keep[50:57] = False  # a field with nothing kept
  dims = (4, 8, 8, 2, 1)
  table = optembed.fixed(VOCAB, DIM, keep=keep, dims=dims)
  params = table.init(jax.random.key(0))
  served = table.finalize(params)
  ids = jnp.asarray(np.stack([np.arange(300) % v for v in VOCAB], axis=1), jnp.int32)
  train_view = np.asarray(table.lookup(params, ids))
  served_view = np.asarray(jax.jit(table.lookup)(served, ids))
  np.testing.assert_allclose(served_view, train_view, rtol=1e-6)
  # Widths and pruning as configured.
  g = np.asarray(ids) + base.field_offsets(VOCAB)
  assert np.all(np.abs(served_view).sum(-1)[~keep[g]] == 0)
  for f, d in enumerate(dims):
    assert np.all(served_view[:, f, d:] == 0)
  assert table.param_bytes(served) == optembed.served_bytes(VOCAB, keep, dims)
  expected = (4 * sum(int(keep[o:o + v].sum()) * d for o, v, d in zip(base.field_offsets(VOCAB), VOCAB, dims))
              + -(-n // 8) + 4 * -(-n // 64) + 4 * len(VOCAB))
  assert table.param_bytes(served) == expected
  # Gradients reach only kept rows and only their first d_f columns.
  grads = jax.grad(lambda p: jnp.sum(table.lookup(p, ids)))(params)['embedding']
  touched = np.abs(np.asarray(grads)) > 0
  assert not touched[~keep].any()


def test_served_rank_index_over_many_blocks():
  vocab = (700, 3, 450)
  n = sum(vocab)
  keep = np.random.default_rng(2).random(n) < 0.3
  table = optembed.fixed(vocab, 4, keep=keep, dims=(4, 2, 3))
  params = table.init(jax.random.key(3))
  ids = jnp.asarray(np.stack([np.arange(700) % v for v in vocab], axis=1), jnp.int32)
  np.testing.assert_allclose(np.asarray(jax.jit(table.lookup)(table.finalize(params), ids)),
                             np.asarray(table.lookup(params, ids)), rtol=1e-6)


def test_evolutionary_search_is_deterministic_and_finds_optimum():
  target = (4, 1, 8, 2, 2)

  def score(dims):
    return -sum(abs(a - b) for a, b in zip(dims, target))

  a = optembed.evolutionary_search(score, 5, (1, 2, 4, 8), seed=0, population=16, generations=12)
  b = optembed.evolutionary_search(score, 5, (1, 2, 4, 8), seed=0, population=16, generations=12)
  assert a[0] == b[0] and a[2] == b[2]
  assert a[1] >= -3  # near the optimum of 0
  assert a[1] == max(h['score'] for h in a[2])
