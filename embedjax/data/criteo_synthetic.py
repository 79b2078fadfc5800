"""Synthetic Criteo-shaped click data, large enough for table-compression studies to mean something.

The shared Criteo and Avazu samples have 1,000 rows; table methods are about millions of ids. This
generator makes rows with the Kaggle Criteo (Display Advertising Challenge) layout: a label, 13
integer counts I1..I13 and 26 categorical fields C1..C26, which :func:`write_tsv` writes in the
raw ``train.txt`` format (categoricals as 8 hex digits) that ``embedjax.data.ctr.read_criteo_tsv``
reads.

Cardinalities (:func:`criteo_vocab_sizes`). The 26 distinct-value counts of the Kaggle train set
(45,840,617 rows, 33,762,577 ids; ``KAGGLE_CARDINALITIES``) are scaled to about ``total_ids``:
fields with at most 1,000 values keep their size (device types and the like do not grow with the
data), larger fields are multiplied by one factor s (ratios among them kept), never below 1,000.

Ids. Field f's ids follow a truncated Zipf law with exponent ``zipf_a`` over its vocabulary, the
popular ranks scattered over ids by an affine bijection (``ctr.zipf_ranks``). The real per-field
exponents are not published and cannot be fitted from 1,000 rows: ``zipf_a`` (default 1.1, one
for every field) is an assumption, not a measurement.

Clicks: a logistic model, stated so that results can be read against it:

    logit = b + sum_f w_f(id_f) + sum_{(f, g) in CROSSES} u_fg(id_f, id_g) + eps

with per-id effects w_f ~ N(0, ``main_std``^2) on every field, per-pair effects u_fg ~
N(0, ``cross_std``^2) on the four crosses of ``CROSSES`` (drawn by hashing the ids: nothing of the
vocabulary's size is stored), eps ~ N(0, ``noise_std``^2) per row, and b solved so that the mean
click rate is ``ctr`` (Criteo's is about 0.256). Which table method wins on this data depends on
this label model: per-id main effects reward memorising frequent ids, the crosses reward models
that combine fields, and the noise caps every AUC. The dense counts carry no signal (log-normal,
20% missing).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from embedjax.data.ctr import (CRITEO_CATEGORICAL, CTRData, _coprime_multiplier, _hash_normal,
                               zipf_ranks)

KAGGLE_CARDINALITIES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593,
                        3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105,
                        142572)
KEEP_BELOW = 1000  # fields with at most this many values keep their real size
# Field pairs (0-based: C2 x C6, C7 x C14, C10 x C18, C3 x C9) with a per-pair click effect: a
# medium or large field crossed with a small one, as an ad's id crossed with a device type.
CROSSES = ((1, 5), (6, 13), (9, 17), (2, 8))


def criteo_vocab_sizes(total_ids: int = 2_000_000) -> tuple[int, ...]:
  """The 26 field sizes scaled to about ``total_ids`` (module docstring); at least the small
  fields' real sizes plus 1,000 per large field."""
  real = np.asarray(KAGGLE_CARDINALITIES, np.int64)
  small = real <= KEEP_BELOW
  room = total_ids - int(real[small].sum())
  if room < KEEP_BELOW * int((~small).sum()):
    raise ValueError(f'total_ids {total_ids} is below the smallest Criteo shape '
                     f'({int(real[small].sum()) + KEEP_BELOW * int((~small).sum())})')
  lo, hi = 0.0, 1.0  # the factor s whose sizes sum to the target (monotone in s)
  for _ in range(100):
    s = (lo + hi) / 2
    if np.maximum(KEEP_BELOW, np.round(real[~small] * s)).sum() > room:
      hi = s
    else:
      lo = s
  sizes = real.copy()
  sizes[~small] = np.maximum(KEEP_BELOW, np.round(real[~small] * lo))
  return tuple(int(v) for v in sizes)


def _logits(ids: np.ndarray, vocab: tuple[int, ...], seed: int, main_std: float,
            cross_std: float) -> np.ndarray:
  logit = np.zeros(len(ids), np.float64)
  for f in range(ids.shape[1]):
    logit += main_std * _hash_normal(ids[:, f].astype(np.int64), stream=seed * 1000 + f)
  for c, (f, g) in enumerate(CROSSES):
    pair = ids[:, f].astype(np.int64) * vocab[g] + ids[:, g]
    logit += cross_std * _hash_normal(pair, stream=seed * 1000 + 100 + c)
  return logit


def generate(num_rows: int, *, seed: int = 0, total_ids: int = 2_000_000, zipf_a: float = 1.1,
             main_std: float = 0.3, cross_std: float = 0.6, noise_std: float = 0.5,
             ctr: float = 0.256, chunk_rows: int = 1_000_000, progress=None
             ) -> tuple[CTRData, np.ndarray]:
  """(data with 26 fields C1..C26, true logits (N,) float64, noise excluded).

  Deterministic: the same arguments give the same rows. Rows are made ``chunk_rows`` at a time
  (bounded temporary memory), each chunk from its own generator keyed by (seed, its first row).
  ``progress(rows done)`` is called after each chunk.
  """
  if num_rows < 1:
    raise ValueError(f'num_rows must be >= 1, got {num_rows}')
  if not 0 < ctr < 1:
    raise ValueError(f'ctr must be in (0, 1), got {ctr}')
  vocab = criteo_vocab_sizes(total_ids)
  setup = np.random.default_rng([seed, 0])
  perms = [(_coprime_multiplier(n, setup), int(setup.integers(0, n))) for n in vocab]
  ids = np.empty((num_rows, len(vocab)), np.int32)
  logits = np.empty(num_rows, np.float64)
  noise = np.empty(num_rows, np.float64)
  for start in range(0, num_rows, chunk_rows):
    stop = min(num_rows, start + chunk_rows)
    rng = np.random.default_rng([seed, 1, start])
    for f, (n, (mult, offset)) in enumerate(zip(vocab, perms)):
      ranks = zipf_ranks(rng, n, stop - start, zipf_a)
      ids[start:stop, f] = ((ranks * mult + offset) % n).astype(np.int32)
    logits[start:stop] = _logits(ids[start:stop], vocab, seed, main_std, cross_std)
    noise[start:stop] = noise_std * rng.standard_normal(stop - start)
    if progress is not None:
      progress(stop)
  bias = _solve_bias(logits + noise, ctr)
  rng = np.random.default_rng([seed, 2])
  labels = (rng.random(num_rows) < 1.0 / (1.0 + np.exp(-(logits + noise + bias)))).astype(np.int8)
  return CTRData(ids, labels, CRITEO_CATEGORICAL, vocab), logits + bias


def _solve_bias(logits: np.ndarray, ctr: float) -> float:
  """b with mean(sigmoid(logits + b)) = ctr (bisection; the mean is increasing in b)."""
  lo, hi = -20.0, 20.0
  for _ in range(60):
    mid = (lo + hi) / 2
    if np.mean(1.0 / (1.0 + np.exp(-(logits + mid)))) > ctr:
      hi = mid
    else:
      lo = mid
  return (lo + hi) / 2


def hex_values(ids: np.ndarray, field: int, seed: int = 0) -> np.ndarray:
  """Field ``field``'s ids as Criteo's 8-hex-digit strings: a bijective 32-bit hash of the id, so
  distinct ids stay distinct (as in the real data, whose values are hashed)."""
  from embedjax.tables.base import hash_u32
  return np.char.mod('%08x', hash_u32(np.asarray(ids, np.int64), seed * 100 + field, np))


def write_tsv(path, data: CTRData, *, seed: int = 0, progress=None) -> Path:
  """Writes ``data`` as Kaggle ``train.txt`` (label, I1..I13, C1..C26, tab separated), atomically.

  The dense counts are drawn from ``seed`` (log-normal, 20% missing: they carry no signal).
  """
  if data.ids.shape[1] != len(CRITEO_CATEGORICAL):
    raise ValueError(f'expected {len(CRITEO_CATEGORICAL)} categorical fields, got {data.ids.shape[1]}')
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp')
  rng = np.random.default_rng([seed, 3])
  with open(tmp, 'w') as out:
    for start in range(0, len(data), 100_000):
      stop = min(len(data), start + 100_000)
      counts = np.floor(np.exp(rng.normal(1.5, 1.5, (stop - start, 13)))).astype(np.int64)
      dense = np.where(rng.random((stop - start, 13)) < 0.2, '', counts.astype(str))
      cats = [hex_values(data.ids[start:stop, f], f, seed) for f in range(data.ids.shape[1])]
      columns = [data.labels[start:stop].astype(str)] + list(dense.T) + cats
      out.write('\n'.join('\t'.join(row) for row in zip(*columns)) + '\n')
      if progress is not None:
        progress(stop)
    out.flush()
    os.fsync(out.fileno())
  os.replace(tmp, path)
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rows', type=int, default=5_000_000)
  parser.add_argument('--total-ids', type=int, default=2_000_000)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default='runs/data/criteo_synthetic.tsv')
  args = parser.parse_args(argv)
  try:  # bad values: one line naming the flag (argparse's own form), no traceback
    if args.rows < 1:
      raise ValueError(f'--rows must be >= 1, got {args.rows}')
    criteo_vocab_sizes(args.total_ids)
  except ValueError as e:
    parser.error(str(e).replace('total_ids', '--total-ids'))
  say = lambda what: (lambda done: print(f'{what}: {done:,} / {args.rows:,} rows', flush=True))
  data, _ = generate(args.rows, seed=args.seed, total_ids=args.total_ids, progress=say('generated'))
  write_tsv(args.out, data, seed=args.seed, progress=say('written'))
  print(f'{args.out}: {data.summary()} click rate {data.labels.mean():.4f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
