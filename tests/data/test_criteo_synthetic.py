"""The synthetic Criteo-shaped generator: its sizes, its id law, its click rate, and its rows
read back through the Criteo reader."""

from __future__ import annotations

import numpy as np
import pytest

from embedjax.data import criteo_synthetic as cs
from embedjax.data.ctr import read_criteo_tsv
from embedjax.tables.metrics import auc


@pytest.fixture(scope='module')
def sample():
  return cs.generate(60_000, seed=3, total_ids=400_000)


def test_sizes_keep_small_fields_and_the_ratios_of_large_ones():
  real = np.asarray(cs.KAGGLE_CARDINALITIES)
  assert real.sum() == 33_762_577 and len(real) == 26
  sizes = np.asarray(cs.criteo_vocab_sizes(2_000_000))
  assert abs(sizes.sum() - 2_000_000) <= 26
  small = real <= cs.KEEP_BELOW
  np.testing.assert_array_equal(sizes[small], real[small])
  scaled = (sizes > cs.KEEP_BELOW) & ~small  # above the floor: plain s * real, rounded
  factor = sizes[scaled] / real[scaled]
  np.testing.assert_allclose(factor, factor.mean(), rtol=1e-3)
  assert (sizes[~small] >= cs.KEEP_BELOW).all()
  with pytest.raises(ValueError, match='below the smallest Criteo shape'):
    cs.criteo_vocab_sizes(10_000)


def test_rows_are_deterministic_in_range_and_click_at_the_stated_rate(sample):
  data, logits = sample
  again, _ = cs.generate(60_000, seed=3, total_ids=400_000)
  np.testing.assert_array_equal(again.ids, data.ids)
  np.testing.assert_array_equal(again.labels, data.labels)
  assert (data.ids >= 0).all() and (data.ids < np.asarray(data.vocab_sizes)).all()
  assert abs(data.labels.mean() - 0.256) < 0.01
  # The true logits rank clicks well, and noise keeps them from ranking perfectly.
  assert 0.7 < auc(data.labels, logits) < 0.95
  other, _ = cs.generate(60_000, seed=4, total_ids=400_000)
  assert (other.ids != data.ids).mean() > 0.5


def test_ids_follow_the_zipf_law_of_the_stated_exponent(sample):
  """Rank-frequency slope on log-log axes over the ranks 1..100 of the largest field."""
  data, _ = sample
  f = int(np.argmax(data.vocab_sizes))
  counts = np.sort(np.bincount(data.ids[:, f]))[::-1][:100]
  slope = np.polyfit(np.log(np.arange(1, 101)), np.log(counts), 1)[0]
  assert -1.3 < slope < -0.9, slope


def test_written_rows_read_back_through_the_criteo_reader(tmp_path, sample):
  data, _ = sample
  head = data.take(np.arange(300))
  path = cs.write_tsv(tmp_path / 'train.txt', head, seed=3)
  rows = read_criteo_tsv(path)
  np.testing.assert_array_equal(rows.labels, head.labels)
  for f in (0, 2, 8, 25):
    np.testing.assert_array_equal(rows.categorical[:, f].astype(str), cs.hex_values(head.ids[:, f], f, 3))
  # Distinct ids stay distinct strings (the hash is a bijection on 32 bits).
  f = int(np.argmax(data.vocab_sizes))
  assert len(set(rows.categorical[:, f])) == len(set(head.ids[:, f]))
  assert 0.05 < np.isnan(rows.dense).mean() < 0.35 and not (tmp_path / 'train.txt.tmp').exists()


def test_command_line_writes_the_file_and_says_so(tmp_path, capsys):
  out = tmp_path / 'c.tsv'
  assert cs.main(['--rows', '500', '--total-ids', '300000', '--out', str(out)]) == 0
  assert len(read_criteo_tsv(out)) == 500 and 'click rate' in capsys.readouterr().out


def test_bad_command_line_values_are_one_line_errors(capsys):
  for argv, says in ((['--rows', '0'], '--rows must be >= 1'),
                     (['--total-ids', '10'], '--total-ids 10 is below')):
    with pytest.raises(SystemExit) as e:
      cs.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert says in err and 'Traceback' not in err
