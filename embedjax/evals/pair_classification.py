"""Pair classification (MTEB-style): is a pair a duplicate/paraphrase, judged by a similarity score.

Reports average precision (sklearn ``average_precision_score`` semantics: one step per distinct
score) and the best accuracy and F1 over all thresholds, with the threshold, precision and recall.
Everything comes from one descending sort and cumulative counts, O(N log N).

Thresholds: a pair is predicted positive when ``score >= threshold``. Only cuts between distinct
scores are considered (tied scores cannot be split by a threshold), plus predicting everything
positive (threshold = lowest score) and, for accuracy, nothing positive (threshold = +inf). Among
equally good cuts the highest threshold wins. The threshold between two scores is their midpoint.
Deviation from MTEB: MTEB's loop also cuts inside runs of tied scores and never tries the
all-positive or all-negative cuts, so it can differ from the exact optimum in those cases.
"""

from __future__ import annotations

import chex
import numpy as np

from embedjax.evals import sts


def _sorted_counts(scores, labels):
  """Descending sort; returns (sorted scores, cumulative tp at each tie-group end, group ends)."""
  s = np.asarray(scores, np.float64)
  y = np.asarray(labels)
  chex.assert_rank([s, y], 1)
  chex.assert_equal_shape([s, y])
  if s.shape[0] == 0:
    raise ValueError('no pairs')
  if not np.isin(y, (0, 1)).all():
    raise ValueError('labels must be 0/1')
  if np.isnan(s).any():
    raise ValueError('scores contain NaN')
  order = np.argsort(-s, kind='stable')
  s, y = s[order], y[order].astype(np.int64)
  tp = np.cumsum(y)
  # Last position of each run of equal scores: the only places a threshold can cut.
  ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
  return s, tp, ends


def _thresholds(s, ends):
  """Threshold that keeps exactly s[:end + 1] positive under ``score >= threshold``."""
  nxt = s[np.minimum(ends + 1, len(s) - 1)]
  mid = 0.5 * (s[ends] + nxt)
  # The midpoint can round onto the lower score when the two are adjacent floats; at the last
  # position nxt == s[end], so the all-positive cut gets the lowest score.
  thr = np.where(mid > nxt, mid, s[ends])
  return thr


def average_precision(scores, labels) -> float:
  """Average precision of (N,) scores for (N,) 0/1 labels, sklearn semantics."""
  s, tp, ends = _sorted_counts(scores, labels)
  positives = tp[-1]
  if positives == 0:
    raise ValueError('average precision needs at least one positive pair')
  tp_at = tp[ends].astype(np.float64)
  precision = tp_at / (ends + 1)
  recall = tp_at / positives
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_accuracy(scores, labels) -> tuple[float, float]:
  """(best accuracy, its threshold) over all cuts, nothing-positive included."""
  s, tp, ends = _sorted_counts(scores, labels)
  n = len(s)
  negatives = n - tp[-1]
  fp = ends + 1 - tp[ends]
  acc = np.r_[negatives, tp[ends] + negatives - fp] / n
  thr = np.r_[np.inf, _thresholds(s, ends)]
  best = int(np.argmax(acc))
  return float(acc[best]), float(thr[best])


def best_f1(scores, labels) -> tuple[float, float, float, float]:
  """(best F1, its precision, its recall, its threshold) over all cuts."""
  s, tp, ends = _sorted_counts(scores, labels)
  positives = tp[-1]
  if positives == 0:
    return 0.0, 0.0, 0.0, float('inf')
  tp_at = tp[ends].astype(np.float64)
  f1 = 2 * tp_at / (ends + 1 + positives)
  best = int(np.argmax(f1))
  precision = tp_at[best] / (ends[best] + 1)
  recall = tp_at[best] / positives
  return float(f1[best]), float(precision), float(recall), float(_thresholds(s, ends)[best])


def binary_scores(scores, labels) -> dict[str, float]:
  """All pair-classification numbers for raw (N,) scores (higher = more likely positive).

  Returns:
    {'ap', 'accuracy', 'accuracy_threshold', 'f1', 'f1_threshold', 'precision', 'recall'}.

  Raises:
    ValueError: no positive pair (average precision is undefined).
  """
  acc, acc_thr = best_accuracy(scores, labels)
  f1, precision, recall, f1_thr = best_f1(scores, labels)
  return {'ap': average_precision(scores, labels), 'accuracy': acc, 'accuracy_threshold': acc_thr,
          'f1': f1, 'f1_threshold': f1_thr, 'precision': precision, 'recall': recall}


def pair_classification_scores(emb1, emb2, labels, *, similarity: str = 'cosine'
                               ) -> dict[str, float]:
  """``binary_scores`` of the per-pair similarity of (N, D) embeddings.

  Args:
    emb1, emb2: (N, D) embeddings (numpy or jax).
    labels: (N,) 0/1.
    similarity: 'cosine' (MTEB's main score), 'dot', or negated 'euclidean'/'manhattan' distance.
  """
  sims = sts.pair_similarities(emb1, emb2)
  if similarity not in sims:
    raise ValueError(f'unknown similarity {similarity!r}; choose from {sorted(sims)}')
  return binary_scores(sims[similarity], labels)
