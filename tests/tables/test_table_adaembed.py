"""AdaEmbed: re-allocation against a numpy reference, lookups of held and evicted ids, the
importance it accumulates, the served form, and a short training run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from embedjax.tables import adaembed, base, ctr_models, methods
from embedjax.tables import train as tr

VOCAB = (50, 7, 2, 300, 13)
DIM = 8
N = sum(VOCAB)


def _reference(slot, importance, rows):
  """The allocation rule, written plainly."""
  top = sorted(range(len(slot)), key=lambda i: (-importance[i], i))[:rows]
  chosen = set(top)
  new = np.full(len(slot), -1)
  taken = set()
  for i in range(len(slot)):
    if i in chosen and slot[i] >= 0:
      new[i] = slot[i]
      taken.add(int(slot[i]))
  free = [r for r in range(rows) if r not in taken]
  for i in sorted(i for i in chosen if slot[i] < 0):
    new[i] = free.pop(0)
  return new


@pytest.mark.parametrize('seed', range(4))
def test_reallocation_matches_the_rule(seed):
  rng = np.random.default_rng(seed)
  n, rows = 40, 9
  slot = np.full(n, -1)
  slot[rng.choice(n, rows, replace=False)] = rng.permutation(rows)
  importance = rng.integers(0, 6, n).astype(np.float32)  # many ties
  got, fresh = adaembed.reallocate(jnp.asarray(slot, jnp.float32), jnp.asarray(importance), rows)
  want = _reference(slot, importance, rows)
  np.testing.assert_array_equal(np.asarray(got), want)
  moved_in = want[(want >= 0) & (slot < 0)]
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(fresh)), np.sort(moved_in))


def test_lookup_reads_held_rows_and_zero_for_the_rest_and_serves_the_same():
  table = adaembed.adaembed(VOCAB, DIM, rows=20)
  params = table.init(jax.random.key(0))
  slot = -np.ones(N, np.float32)
  slot[[3, 60, 65]] = [7, 0, 19]
  params = {**params, 'slot': jnp.asarray(slot)}
  ids = jnp.asarray([[3, 0, 0, 1, 0], [4, 0, 1, 6, 12]], jnp.int32)  # globals 3, 60 / 65 held
  out = np.asarray(table.lookup(params, ids))
  rows = np.asarray(params['rows'])
  held = slot[np.asarray(ids) + base.field_offsets(VOCAB)].astype(int)
  want = np.where((held >= 0)[..., None], rows[np.maximum(held, 0)], 0.0)
  assert (held >= 0).sum() == 3
  np.testing.assert_array_equal(out, want)
  # Gradient: the rows read, nothing else (the slots are held by stop_gradient).
  g = jax.grad(lambda p: jnp.sum(table.lookup(p, ids)))(params)
  want_g = np.zeros((20, DIM), np.float32)
  want_g[[7, 0, 19]] = 1.0
  np.testing.assert_array_equal(np.asarray(g['rows']), want_g)
  assert not np.asarray(g['slot']).any()
  served = table.finalize(params)
  assert table.param_bytes(served) == 3 * (DIM * 4 + 4)
  np.testing.assert_array_equal(np.asarray(table.lookup(served, ids)), out)


def test_importance_is_the_gradient_norm_at_each_vector_read_and_training_learns():
  vocab = (30, 5)
  rng = np.random.default_rng(0)
  ids = np.stack([rng.integers(0, v, 2048) for v in vocab], 1).astype(np.int32)
  labels = (ids[:, 0] < 10).astype(np.float32)  # field 0 decides: its ids matter
  table = adaembed.adaembed(vocab, 4, rows=12, period=8, decay=1.0)
  model = ctr_models.MODELS['lr'](2, 4)
  opt = optax.adam(0.05)
  step = adaembed.make_train_step(table, model, opt)
  state = adaembed.init_state(table, model, opt, jax.random.key(0))
  batch, key = jnp.asarray(ids[:64]), jax.random.key(1)
  # One step's importance, recomputed by hand: |dL/d vector| summed per global id.
  vectors = table.lookup(state.params['table'], batch)
  g = jax.grad(lambda v: optax.sigmoid_binary_cross_entropy(
      model.apply(state.params['model'], v), jnp.asarray(labels[:64])).mean())(vectors)
  want = np.zeros(35)
  np.add.at(want, (np.asarray(batch) + base.field_offsets(vocab)).ravel(),
            np.linalg.norm(np.asarray(g, np.float64), axis=-1).ravel())
  state, _ = step(state, batch, jnp.asarray(labels[:64]), key)
  np.testing.assert_allclose(np.asarray(state.opt_state['importance']), want, rtol=1e-5, atol=1e-8)
  # A short fit: rows are allocated (12 ids hold one), and the model separates the classes.
  params, log = tr.fit(table, model, (ids, labels), (ids, labels), epochs=5, batch_size=64,
                       optimizer='adam', lr=0.05, step_fn=step, init_fn=adaembed.init_state)
  assert (np.asarray(params['table']['slot']) >= 0).sum() == 12
  # which 12 ids hold rows at the end depends on the path (AUC 0.87 - 1.0 from epoch 3 on)
  assert max(h['valid_auc'] for h in log['history']) > 0.9


def test_for_budget_and_refusals():
  table = methods.for_budget('adaembed', VOCAB, DIM, 36 * 10)
  assert table.config['rows'] == 10
  with pytest.raises(base.Infeasible):
    methods.for_budget('adaembed', VOCAB, DIM, 35)
  with pytest.raises(ValueError, match='rows must be'):
    adaembed.adaembed(VOCAB, DIM, rows=0)


@pytest.mark.parametrize('warmup', [True, False])
def test_warmup_gives_rows_from_the_first_step(warmup):
  """With warmup the pool is re-allocated at steps 1, 2, 4, ... below the period (8 here) and
  at no other step: after step 1 the rows go to ids of the first batch; without it no id holds
  one before step 8. Each step reads another batch, so the allocation moves when it is made."""
  vocab = (30, 5)
  rng = np.random.default_rng(0)
  table = adaembed.adaembed(vocab, 4, rows=6, period=8, warmup=warmup)
  model = ctr_models.MODELS['lr'](2, 4)
  opt = optax.adam(0.05)
  step = adaembed.make_train_step(table, model, opt)
  state = adaembed.init_state(table, model, opt, jax.random.key(0))
  slots, first = [np.asarray(state.params['table']['slot'])], None
  for i in range(8):
    ids = np.stack([rng.integers(0, v, 4) for v in vocab], 1).astype(np.int32)
    first = ids if first is None else first
    state, _ = step(state, jnp.asarray(ids), jnp.asarray(rng.integers(0, 2, 4), jnp.float32),
                    jax.random.key(i))
    slots.append(np.asarray(state.params['table']['slot']))
  changed = [s for s in range(1, 9) if (slots[s] != slots[s - 1]).any()]
  if warmup:
    assert set(changed) <= {1, 2, 4, 8} and {1, 8} <= set(changed)
    held = np.flatnonzero(slots[1] >= 0)
    assert len(held) == 6 and set(held) <= set((first + base.field_offsets(vocab)).ravel())
  else:
    assert changed == [8]
