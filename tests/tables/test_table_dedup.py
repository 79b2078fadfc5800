"""Deduplication: exact duplicates stored once, nothing changed at threshold 0 otherwise, the
shared table reads the right block, gradients reach the blocks read, bytes by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.tables import base, dedup, methods

VOCAB = (50, 7, 2, 300, 13)  # 372 rows: 93 blocks of 4
DIM = 8


def _table(seed=0):
  return np.random.default_rng(seed).normal(0, 0.1, (sum(VOCAB), DIM)).astype(np.float32)


def _all_ids():
  n = max(VOCAB)
  return jnp.asarray(np.stack([np.arange(n) % v for v in VOCAB], axis=1), jnp.int32)


def test_threshold_zero_changes_nothing_without_repeated_blocks():
  emb = _table()
  blocks, block_map = dedup.deduplicate(emb, 4, max_blocks=1, tolerance=0.0, similarity=1.0)
  np.testing.assert_array_equal(block_map, np.arange(93))
  np.testing.assert_array_equal(blocks.reshape(-1, DIM)[:372], emb)


def test_identical_blocks_are_stored_once_and_read_back_exactly():
  emb = _table()
  emb[12:16] = emb[0:4]    # block 3 = block 0
  emb[20:24] = emb[0:4]    # block 5 = block 0
  emb[40:44] = emb[80:84]  # block 10 = block 20
  blocks, block_map = dedup.deduplicate(emb, 4, max_blocks=1, tolerance=0.0, similarity=1.0)
  assert len(blocks) == 90
  assert block_map[0] == block_map[3] == block_map[5] and block_map[10] == block_map[20]
  table = dedup.shared(VOCAB, DIM, blocks=blocks, block_map=block_map, rows_per_block=4)
  params = table.init(jax.random.key(0))
  ids = _all_ids()
  want = emb[np.asarray(ids) + base.field_offsets(VOCAB)]
  np.testing.assert_array_equal(np.asarray(jax.jit(table.lookup)(params, ids)), want)
  # 90 distinct blocks of 4 x 8 floats, and 93 one-byte block ids.
  assert table.param_bytes(params) == 90 * 4 * 8 * 4 + 93 * 1


def test_near_duplicates_merge_within_tolerance_and_stop_at_the_budget():
  emb = _table()
  for b in (7, 9, 11):  # three near-copies of block 30 (every entry within 0.005)
    emb[4 * b:4 * b + 4] = emb[120:124] + np.float32(0.005)
  blocks, block_map = dedup.deduplicate(emb, 4, max_blocks=93 - 2)
  assert len(blocks) == 91  # stops once two references fit the budget
  blocks, block_map = dedup.deduplicate(emb, 4, max_blocks=1)
  assert len(blocks) == 90 and len({block_map[b] for b in (7, 9, 11, 30)}) == 1
  # Within 0.001: the three copies are identical to each other, but 0.005 from block 30.
  _, strict = dedup.deduplicate(emb, 4, max_blocks=1, tolerance=0.001)
  assert strict[7] == strict[9] == strict[11] != strict[30] and len(set(strict.tolist())) == 91


def test_gradient_reaches_exactly_the_blocks_read():
  emb = _table()
  emb[12:16] = emb[0:4]
  blocks, block_map = dedup.deduplicate(emb, 4, max_blocks=1, tolerance=0.0, similarity=1.0)
  table = dedup.shared(VOCAB, DIM, blocks=blocks, block_map=block_map, rows_per_block=4)
  params = table.init(jax.random.key(0))
  ids = jnp.asarray([[1, 0, 0, 0, 0], [13, 0, 1, 5, 12]], jnp.int32)  # rows 1 and 13 share a block
  g = np.asarray(jax.grad(lambda p: jnp.sum(table.lookup(p, ids)))(params)['blocks'])
  rows = (np.asarray(ids) + base.field_offsets(VOCAB)).ravel()
  want = np.zeros(blocks.shape[:2], np.float32)
  np.add.at(want, (block_map[rows // 4], rows % 4), 1.0)
  np.testing.assert_array_equal(g, np.broadcast_to(want[..., None], g.shape))


def test_for_budget_sizes_the_blocks_and_refuses_what_cannot_fit():
  full = base.full_table_bytes(VOCAB, DIM)
  table = methods.for_budget('dedup', VOCAB, DIM, full // 2)
  most = table.config['max_blocks']
  assert dedup.served_bytes(93, most, 4, DIM) <= full // 2 < dedup.served_bytes(93, most + 1, 4, DIM)
  assert table.row_reads is not None  # stage 1 is the full table
  with pytest.raises(base.Infeasible, match='block map alone'):
    methods.for_budget('dedup', VOCAB, DIM, 93 + 100)
  with pytest.raises(ValueError, match='do not fit'):
    dedup.shared(VOCAB, DIM, blocks=np.zeros((3, 4, DIM)), block_map=np.zeros(90, np.int32),
                 rows_per_block=4)


def test_deduplicate_to_budget_raises_the_tolerance_until_the_blocks_fit():
  emb = _table()
  for b in (7, 9, 11):  # near-copies of block 30, 0.05 away: not within 0.01
    emb[4 * b:4 * b + 4] = emb[120:124] + np.float32(0.05)
  blocks, block_map, tol = dedup.deduplicate_to_budget(emb, 4, 93 - 3, tolerance=0.01)
  assert len(blocks) == 90 and tol == pytest.approx(0.08)  # 0.01, 0.02, 0.04 too tight
  _, _, tol = dedup.deduplicate_to_budget(emb, 4, 93 - 3, tolerance=0.01, attempts=1)
  assert tol == 0.01  # one attempt: the fixed tolerance, and the caller sees it does not fit


def _one_tolerance_after_another(emb, rows, most, tolerance, attempts, **kw):
  """The budget search as first written: deduplicate at each tolerance of the series in turn."""
  for attempt in range(attempts):
    tol = tolerance * 2.0 ** attempt
    blocks, block_map = dedup.deduplicate(emb, rows, most, tolerance=tol, **kw)
    if len(blocks) <= most:
      break
  return blocks, block_map, tol


@pytest.mark.parametrize('seed', range(3))
def test_the_one_pass_budget_search_equals_trying_each_tolerance(seed):
  """Choosing the tolerance from each block's merge tolerance (one pass) gives what trying the
  series in turn gives: blocks, map and tolerance, at every budget, a padded last block
  included (211 rows in blocks of 4)."""
  rng = np.random.default_rng(seed)
  emb = rng.normal(0, 0.02, (211, 3)).astype(np.float32)
  emb[100:140] = emb[60:100] + rng.normal(0, 0.003, (40, 3)).astype(np.float32)  # near-copies
  kw = dict(num_tables=8, width=0.2, similarity=0.7, seed=seed)
  merge = dedup.merge_tolerances(emb, 4, **kw)
  assert np.isfinite(merge).sum() > 20 and np.isinf(merge).any()
  # tolerances 0.001 to 0.032 chosen; with 3 attempts the last budgets are not met (the last
  # attempt's blocks come back, as before)
  for most, attempts in ((53, 8), (50, 8), (45, 8), (35, 8), (20, 8), (5, 8), (20, 3), (5, 3)):
    want = _one_tolerance_after_another(emb, 4, most, 0.001, attempts, **kw)
    got = dedup.deduplicate_to_budget(emb, 4, most, tolerance=0.001, attempts=attempts, **kw)
    assert got[2] == want[2], most
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
