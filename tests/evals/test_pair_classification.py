"""Pair classification against sklearn average precision and a brute-force threshold sweep."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, average_precision_score, f1_score
from sklearn.metrics.pairwise import paired_cosine_distances

from embedjax.evals import pair_classification as pc


def _brute_force(scores, labels):
  """Best accuracy / F1 over every threshold t in the scores and +inf, predicting score >= t."""
  best_acc, best_f1 = 0.0, 0.0
  for t in np.r_[np.unique(scores), np.inf]:
    pred = (scores >= t).astype(int)
    tp = np.sum(pred & labels)
    best_acc = max(best_acc, np.mean(pred == labels))
    best_f1 = max(best_f1, 2 * tp / (pred.sum() + labels.sum()))
  return best_acc, best_f1


def _check(scores, labels):
  if not labels.any():
    with pytest.raises(ValueError, match='positive'):
      pc.binary_scores(scores, labels)
    return None
  out = pc.binary_scores(scores, labels)
  if labels.any():
    assert out['ap'] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
  acc, f1 = _brute_force(scores, labels)
  assert out['accuracy'] == pytest.approx(acc, abs=1e-12)
  assert out['f1'] == pytest.approx(f1, abs=1e-12)
  # The reported thresholds reproduce the reported numbers.
  pred = (scores >= out['accuracy_threshold']).astype(int)
  assert accuracy_score(labels, pred) == pytest.approx(out['accuracy'], abs=1e-12)
  if labels.any():
    pred = (scores >= out['f1_threshold']).astype(int)
    tp = int(np.sum(pred * labels))
    assert f1_score(labels, pred) == pytest.approx(out['f1'], abs=1e-12)
    assert out['precision'] == pytest.approx(tp / pred.sum(), abs=1e-12)
    assert out['recall'] == pytest.approx(tp / labels.sum(), abs=1e-12)
  return out


@pytest.mark.parametrize('seed', range(3))
def test_embeddings_against_sklearn_and_sweep(seed):
  rng = np.random.default_rng(seed)
  n, d = 400, 12
  labels = (rng.random(n) < 0.6).astype(int)
  a = rng.standard_normal((n, d))
  noise = np.where(labels[:, None] == 1, 0.8, 2.0)
  b = a + noise * rng.standard_normal((n, d))
  out = pc.pair_classification_scores(a.astype(np.float32), b.astype(np.float32), labels)
  cosine = 1 - paired_cosine_distances(a.astype(np.float32).astype(np.float64),
                                       b.astype(np.float32).astype(np.float64))
  ref = _check(cosine, labels)
  for key in ref:
    assert out[key] == pytest.approx(ref[key], abs=1e-9), key
  assert 0.6 < out['accuracy'] <= 1.0 and 0.7 < out['ap'] <= 1.0


def test_hand_case():
  scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
  labels = np.array([1, 0, 1, 1, 0])
  out = pc.binary_scores(scores, labels)
  # Cuts: {0.9}: tp1 fp0; {0.9,0.8,0.8}: tp2 fp1; + 0.3: tp3 fp1; all: tp3 fp2.
  assert out['ap'] == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 4)
  assert out['accuracy'] == pytest.approx(4 / 5)        # threshold between 0.3 and 0.1
  assert out['accuracy_threshold'] == pytest.approx(0.2)
  assert out['f1'] == pytest.approx(2 * 3 / (4 + 3))
  assert (out['precision'], out['recall']) == (pytest.approx(0.75), pytest.approx(1.0))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=1, max_size=40))
def test_tied_scores_property(rows):
  # Few distinct scores -> many ties, which no threshold may split.
  scores = np.array([r[0] for r in rows], np.float64) / 3.0
  labels = np.array([int(r[1]) for r in rows])
  _check(scores, labels)


def test_bad_labels():
  with pytest.raises(ValueError, match='0/1'):
    pc.binary_scores(np.array([0.1, 0.2]), np.array([0, 2]))
