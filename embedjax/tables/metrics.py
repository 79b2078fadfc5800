"""CTR evaluation: ROC AUC (ties handled as sklearn does) and log-loss, on the host in float64.

AUC is the Mann-Whitney statistic: the probability that a random positive scores above a random
negative, a tie counting one half. That is exactly the area under sklearn's ROC curve, which puts
tied scores on one threshold (a diagonal segment). Computed from average ranks in O(n log n).

>>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
"""

from __future__ import annotations

import numpy as np


def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
  y = np.asarray(labels).ravel()
  s = np.asarray(scores, np.float64).ravel()
  if y.shape != s.shape:
    raise ValueError(f'labels {y.shape} and scores {s.shape} differ in length')
  if not np.isin(y, (0, 1)).all():
    raise ValueError('labels must be 0 or 1')
  if not np.isfinite(s).all():
    raise ValueError('scores must be finite')
  return y.astype(bool), s


def auc(labels, scores) -> float:
  """ROC AUC of ``scores`` (N,) for binary ``labels`` (N,); ValueError if only one class occurs."""
  y, s = _as_arrays(labels, scores)
  n_pos = int(y.sum())
  n_neg = y.size - n_pos
  if n_pos == 0 or n_neg == 0:
    raise ValueError('AUC is undefined when only one class is present')
  order = np.argsort(s, kind='mergesort')
  _, inverse, counts = np.unique(s[order], return_inverse=True, return_counts=True)
  ends = np.cumsum(counts)
  avg_rank = (ends - counts + 1 + ends) / 2.0  # 1-based mean rank of each tie group
  rank_sum = avg_rank[inverse][y[order]].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels, logits) -> float:
  """Mean binary cross-entropy of ``logits`` (N,) (pre-sigmoid), computed stably in float64.

  Equals ``sklearn.metrics.log_loss(labels, sigmoid(logits))`` while the probabilities stay
  away from 0 and 1 (sklearn clips them to [eps, 1 - eps]; the logit form needs no clipping).
  """
  y, z = _as_arrays(labels, logits)
  return float(np.mean(np.logaddexp(0.0, z) - y * z))
