"""Post-hoc transforms: whitening against sklearn's PCA, DECOR's projection and QDC's map against
float64 numpy, ADR's identity start and its training on a distorted-query problem."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from embedjax import posthoc


def _correlated(rng, n=400, d=6):
  mixing = rng.standard_normal((d, d))
  return (rng.standard_normal((n, d)) @ mixing + rng.standard_normal(d)).astype(np.float32)


def test_whitening_gives_identity_covariance_and_matches_sklearn_pca():
  sklearn = pytest.importorskip('sklearn.decomposition')
  x = _correlated(np.random.default_rng(0))
  params = posthoc.whitening_fit(x)
  y = np.asarray(posthoc.apply_whitening(params, x), np.float64)
  np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(6), atol=1e-4)
  pca = sklearn.PCA(n_components=3, whiten=True).fit(x.astype(np.float64))
  want = pca.transform(x.astype(np.float64)) * np.sqrt(len(x) / (len(x) - 1))  # its n-1 vs n
  got = np.asarray(posthoc.apply_whitening(posthoc.whitening_fit(x, dims=3), x), np.float64)
  signs = np.sign(np.sum(got * want, axis=0))  # eigenvectors are defined up to sign
  np.testing.assert_allclose(got * signs, want, rtol=1e-3, atol=1e-3)


def test_decor_removes_exactly_the_unwanted_span():
  rng = np.random.default_rng(1)
  v = rng.standard_normal((2, 5))
  p = np.asarray(posthoc.decor_projection(v), np.float64)
  x = rng.standard_normal((7, 5))
  np.testing.assert_allclose((x @ p) @ v.T, 0, atol=1e-5)
  np.testing.assert_allclose(p @ p, p, atol=1e-5)
  ortho = x - x @ v.T @ np.linalg.solve(v @ v.T, v)  # already in the complement
  np.testing.assert_allclose(ortho @ p, ortho, atol=1e-5)
  with pytest.raises(ValueError, match='linearly dependent'):
    posthoc.decor_projection(np.stack([v[0], 2 * v[0]]))


def test_qdc_recovers_a_rotation_and_equals_ridge_least_squares():
  rng = np.random.default_rng(2)
  old = rng.standard_normal((300, 8))
  rotation, _ = np.linalg.qr(rng.standard_normal((8, 8)))
  new = old @ rotation  # the new model's queries: the old ones rotated
  w = np.asarray(posthoc.qdc_fit(new, old, ridge=0.0), np.float64)
  np.testing.assert_allclose(new @ w, old, atol=1e-4)
  noisy = new[:, :6] + 0.1 * rng.standard_normal((300, 6))  # and a narrower new model
  w = np.asarray(posthoc.qdc_fit(noisy, old, ridge=0.01), np.float64)
  want = np.linalg.solve(noisy.T @ noisy + 0.01 * 300 * np.eye(6), noisy.T @ old)
  np.testing.assert_allclose(w, want, rtol=1e-4, atol=1e-6)


def test_adr_starts_as_identity_and_learns_a_query_distortion():
  rng = np.random.default_rng(3)
  docs = rng.standard_normal((256, 16)).astype(np.float32)
  docs /= np.linalg.norm(docs, axis=1, keepdims=True)
  distortion = np.eye(16) + 0.8 * rng.standard_normal((16, 16)) / 4
  queries = (docs @ distortion + 0.05 * rng.standard_normal((256, 16))).astype(np.float32)
  init = posthoc.adr_init(jax.random.key(0), 16, 4)
  np.testing.assert_array_equal(np.asarray(posthoc.adr_apply(init, queries)), queries)
  params, losses = posthoc.adr_fit(jax.random.key(1), queries, docs, rank=8, steps=150, lr=1e-2)
  assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
  a, b = np.asarray(params['a'], np.float64), np.asarray(params['b'], np.float64)
  np.testing.assert_allclose(np.asarray(posthoc.adr_apply(params, queries)),
                             queries + queries @ a.T @ b.T, rtol=1e-4, atol=1e-5)

  def recall_at_1(q):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return np.mean(np.argmax(q @ docs.T, axis=1) == np.arange(256))
  assert recall_at_1(np.asarray(posthoc.adr_apply(params, queries))) > recall_at_1(queries)
