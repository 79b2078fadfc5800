"""JAX logistic probe against sklearn LogisticRegression (lbfgs) with the same objective."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from embedjax.evals import classification


# Every fit below uses N=600, D=16 and 2 or 5 classes, so the jitted solver compiles twice.
N_TRAIN, DIM = 600, 16


def _blobs(seed, n_classes, spread=0.6, offset=3.0):
  """Overlapping Gaussian blobs, not centred (like real features); 600 train + 300 test rows."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((n_classes, DIM)) * spread
  y = rng.integers(0, n_classes, N_TRAIN + 300)
  x = (centres[y] + rng.standard_normal((len(y), DIM)) + offset).astype(np.float32)
  return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def _sklearn(x, y, l2):
  model = LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-12, max_iter=20000)
  return model.fit(x.astype(np.float64), y)


@pytest.mark.parametrize('n_classes,l2', [(2, None), (5, None), (5, 0.05), (5, 1e-3)])
def test_matches_sklearn(n_classes, l2):
  x, y, xt, yt = _blobs(n_classes, n_classes)
  scores, params = classification.logistic_probe(x, y, xt, yt, l2=l2)
  ref = _sklearn(x, y, 1.0 / len(y) if l2 is None else l2)
  probs = np.asarray(classification.predict_proba(params, xt))
  np.testing.assert_allclose(probs, ref.predict_proba(xt.astype(np.float64)), atol=1e-4)
  ref_pred = ref.predict(xt.astype(np.float64))
  assert scores['accuracy'] == pytest.approx(np.mean(ref_pred == yt), abs=1e-12)
  assert scores['f1_macro'] == pytest.approx(f1_score(yt, ref_pred, average='macro'), abs=1e-12)
  # The (unique) weights agree too; multinomial intercepts only up to a common shift.
  np.testing.assert_allclose(np.asarray(params.weights), ref.coef_.T, atol=2e-3, rtol=1e-3)
  bias = np.asarray(params.bias)
  np.testing.assert_allclose(bias - bias.mean(), ref.intercept_ - ref.intercept_.mean(),
                             atol=2e-3, rtol=1e-3)
  assert params.grad_norm < 1e-4
  assert 0.5 < scores['accuracy'] < 0.99  # overlapping blobs: a non-trivial problem


def test_standardize_matches_sklearn_on_scaled_features():
  x, y, _, _ = _blobs(11, 5)
  x = x * np.linspace(0.1, 20, DIM, dtype=np.float32)  # very different feature scales
  scaler = StandardScaler().fit(x.astype(np.float64))
  l2 = 0.01
  _, params = classification.logistic_probe(x, y, x, y, l2=l2, standardize=True)
  ref = _sklearn(scaler.transform(x.astype(np.float64)), y, l2)
  np.testing.assert_allclose(np.asarray(classification.predict_proba(params, x)),
                             ref.predict_proba(scaler.transform(x.astype(np.float64))), atol=1e-4)


def test_string_labels_and_unseen_test_label():
  x, y, xt, yt = _blobs(3, 5)
  names = np.array(['ant', 'bee', 'cat', 'dog', 'eel'])
  test_names = names[yt]
  test_names[:5] = 'fox'  # never predicted
  scores, params = classification.logistic_probe(x, names[y], xt, test_names)
  pred = classification.predict(params, xt)
  assert list(params.classes) == list(names)
  assert scores['accuracy'] == pytest.approx(np.mean(pred == test_names))
  assert scores['f1_macro'] == pytest.approx(f1_score(test_names, pred, average='macro'))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=50))
def test_f1_macro_matches_sklearn(pairs):
  y_true = np.array([p[0] for p in pairs])
  y_pred = np.array([p[1] for p in pairs])
  expected = f1_score(y_true, y_pred, average='macro', zero_division=0)
  assert classification.f1_macro(y_true, y_pred) == pytest.approx(expected, abs=1e-12)
