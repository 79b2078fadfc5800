"""Semantic textual similarity: correlation of pair similarities with gold scores (MTEB-style).

Similarities are computed per pair in float64 on the host: cosine, negative manhattan and negative
euclidean distance (negated so that larger means more similar, as MTEB does) and the dot product.
Correlations are returned as fractions in [-1, 1] (MTEB's x100 is not applied). A zero embedding
has cosine similarity 0 with anything (sklearn's ``paired_cosine_distances``, used by MTEB, gives
0.5). A constant similarity or gold vector has no correlation: NaN, as scipy returns.
"""

from __future__ import annotations

import chex
import numpy as np

from embedjax.ops import l2_normalize


def rank_average(x) -> np.ndarray:
  """(N,) float64 ranks 1..N of a (N,) vector, ties get the average of their ranks."""
  x = np.asarray(x)
  chex.assert_rank(x, 1)
  n = x.shape[0]
  order = np.argsort(x, kind='stable')
  sorted_x = x[order]
  starts_group = np.r_[True, sorted_x[1:] != sorted_x[:-1]] if n else np.zeros(0, bool)
  group = np.cumsum(starts_group) - 1
  starts = np.flatnonzero(starts_group)
  ends = np.r_[starts[1:], n]  # exclusive
  # A tie group covering sorted positions start..end-1 holds ranks start+1..end.
  mean_rank = (starts + 1 + ends) / 2.0
  ranks = np.empty(n, np.float64)
  ranks[order] = mean_rank[group]
  return ranks


def pearson(x, y) -> float:
  """Pearson correlation of two (N,) vectors in float64; NaN if either is constant."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  chex.assert_rank([x, y], 1)
  chex.assert_equal_shape([x, y])
  xc = x - x.mean()
  yc = y - y.mean()
  # Normalise before the dot product (as scipy does) so that the result stays within [-1, 1].
  nx, ny = np.linalg.norm(xc), np.linalg.norm(yc)
  if nx == 0 or ny == 0:
    return float('nan')
  return float(np.clip(np.dot(xc / nx, yc / ny), -1.0, 1.0))


def spearman(x, y) -> float:
  """Spearman rank correlation (average ranks for ties) of two (N,) vectors."""
  return pearson(rank_average(x), rank_average(y))


def pair_similarities(emb1, emb2) -> dict[str, np.ndarray]:
  """Per-pair similarities of (N, D) embeddings.

  Returns:
    {'cosine', 'manhattan', 'euclidean', 'dot'} -> (N,) float64; the distances are negated.
  """
  a = np.asarray(emb1, np.float64)
  b = np.asarray(emb2, np.float64)
  chex.assert_rank([a, b], 2)
  chex.assert_equal_shape([a, b])
  na = np.linalg.norm(a, axis=1, keepdims=True)
  nb = np.linalg.norm(b, axis=1, keepdims=True)
  unit_a, unit_b = l2_normalize(a, axis=1), l2_normalize(b, axis=1)  # zero rows stay zero
  unit_diff = unit_a - unit_b
  # 1 - |a^ - b^|^2 / 2 (sklearn's paired cosine form) rather than a^.b^: identical pairs get
  # exactly 1, so they tie exactly, as in the reference, instead of differing in the last bit.
  cosine = 1.0 - 0.5 * np.sum(unit_diff * unit_diff, axis=1)
  cosine = np.where((na[:, 0] == 0) | (nb[:, 0] == 0), 0.0, cosine)
  diff = a - b
  return {
      'cosine': cosine,
      'manhattan': -np.sum(np.abs(diff), axis=1),
      'euclidean': -np.sqrt(np.sum(diff * diff, axis=1)),
      'dot': np.sum(a * b, axis=1),
  }


def sts_scores(emb1, emb2, gold) -> dict[str, float]:
  """Correlations of pair similarities with gold scores.

  Args:
    emb1: (N, D) embeddings of the first sentences (numpy or jax).
    emb2: (N, D) embeddings of the second sentences.
    gold: (N,) gold similarity scores.

  Returns:
    {'spearman', 'pearson'} (cosine) and '{cosine,manhattan,euclidean,dot}_{spearman,pearson}'.
  """
  gold = np.asarray(gold, np.float64)
  chex.assert_rank(gold, 1)
  if gold.shape[0] != np.shape(emb1)[0]:
    raise ValueError(f'{gold.shape[0]} gold scores for {np.shape(emb1)[0]} pairs')
  out = {}
  gold_ranks = rank_average(gold)
  for name, sim in pair_similarities(emb1, emb2).items():
    out[f'{name}_pearson'] = pearson(sim, gold)
    out[f'{name}_spearman'] = pearson(rank_average(sim), gold_ranks)
  out['spearman'] = out['cosine_spearman']
  out['pearson'] = out['cosine_pearson']
  return out
