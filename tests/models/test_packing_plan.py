"""Length classes and batch shapes of the packed encoder (host-side planning only, no model)."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from embedjax.encoding import make_batch, pack, pack_rows, plan_batches, row_length_ladder


def test_ladder():
  assert row_length_ladder(256) == (64, 128, 256)
  assert row_length_ladder(384) == (64, 128, 256, 384)
  assert row_length_ladder(128) == (64, 128)
  assert row_length_ladder(32, 32) == (32,)


def _check_plan(lengths, plan, max_segments):
  seen = collections.Counter(i for _, _, rows in plan for row in rows for i in row)
  assert seen == collections.Counter(range(len(lengths)))  # every text exactly once
  for row_length, num_rows, rows in plan:
    assert len(rows) <= num_rows
    for row in rows:
      assert 1 <= len(row) <= max_segments
      assert sum(lengths[i] for i in row) <= row_length


def test_short_texts_get_short_rows_and_only_the_longest_class_has_a_partial_batch():
  rng = np.random.default_rng(0)
  lengths = list(rng.integers(3, 60, 3000)) + list(rng.integers(65, 128, 300)) + [256] * 70
  rows_for = lambda row_length: 4096 // row_length
  plan = plan_batches(lengths, row_length_ladder(256), rows_for, 32)
  _check_plan(lengths, plan, 32)
  shapes = collections.Counter((row_length, num_rows) for row_length, num_rows, _ in plan)
  assert {row_length for row_length, _ in shapes} == {64, 128, 256}
  for (row_length, num_rows), count in shapes.items():
    if row_length < 256:
      assert num_rows == rows_for(row_length)   # full batches only
  partial = [num_rows for row_length, num_rows in shapes if num_rows != rows_for(row_length)]
  assert len(partial) <= 1 and all(n % (rows_for(256) // 4) == 0 for n in partial)


def test_a_class_too_small_for_a_batch_moves_up():
  lengths = [10] * 5 + [200] * 40        # five short texts cannot fill 64 rows of 64
  plan = plan_batches(lengths, (64, 128, 256), lambda row_length: 4096 // row_length, 8)
  _check_plan(lengths, plan, 8)
  assert {row_length for row_length, _, _ in plan} == {256}


def test_tail_is_cut_to_a_quarter_batch_multiple():
  lengths = [60] * 5                      # 5 rows of 64; batches of 64 rows -> tail of 16
  plan = plan_batches(lengths, (64, 128, 256), lambda row_length: 64, 32)
  assert [(row_length, num_rows) for row_length, num_rows, _ in plan] == [(64, 16)]


def test_explicit_rows_and_tiny_batches():
  lengths = [5, 7, 3, 9]
  plan = plan_batches(lengths, (64,), lambda row_length: 2, 4)
  _check_plan(lengths, plan, 4)
  assert all(num_rows <= 2 for _, num_rows, _ in plan)


def test_too_long_text_is_an_error():
  with pytest.raises(ValueError, match='longest row'):
    plan_batches([300], (64, 128, 256), lambda row_length: 8, 4)


def test_make_batch_and_pack_layout():
  ids = [[101, 5, 102], [101, 6, 7, 102], [101, 102]]
  rows = pack_rows([len(t) for t in ids], 8, 4)
  batch = make_batch(ids, rows, 8, 2, 4)
  assert batch.input_ids.shape == (2, 8) and batch.text_index.shape == (2, 4)
  for r, row in enumerate(rows):
    for s, i in enumerate(row):
      assert batch.text_index[r, s] == i
      toks = batch.input_ids[r][batch.segment_ids[r] == s + 1]
      assert list(toks) == ids[i]
      assert list(batch.position_ids[r][batch.segment_ids[r] == s + 1]) == list(range(len(ids[i])))
  assert (batch.text_index[len(rows):] == -1).all()
  assert len(pack(ids, 8, 1, 4)) == len(rows)
