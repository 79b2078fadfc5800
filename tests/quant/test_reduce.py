"""Reducers (truncation, PCA vs sklearn, random projections) and reducer -> quantizer pipelines."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from embedjax import quant
from embedjax.quant import reduce

N, D = 200, 32


def _data(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((N, D)) @ np.diag(np.linspace(3, 0.1, D)) + 0.5
  return x.astype(np.float32)


def test_pca_matches_sklearn_up_to_sign():
  from sklearn.decomposition import PCA
  x = _data(1)
  r = reduce.pca(12, normalize=False)
  p = r.fit(x)
  ours = np.asarray(r.apply(p, x))
  ref = PCA(12, svd_solver='full').fit(x).transform(x)
  signs = np.sign(np.sum(ours * ref, axis=0))
  np.testing.assert_allclose(ours, ref * signs, atol=2e-4)
  # Components are orthonormal and sorted by explained variance.
  m = np.asarray(p.matrix)
  np.testing.assert_allclose(m.T @ m, np.eye(12), atol=1e-5)
  var = ours.var(axis=0)
  assert np.all(np.diff(var) <= 1e-4)


def test_truncation_and_normalisation():
  x = _data(2)
  r = quant.reducer('trunc10')
  y = np.asarray(r.apply(r.fit(x), x))
  expect = x[:, :10] / np.linalg.norm(x[:, :10], axis=1, keepdims=True)
  np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)
  assert r.out_dim(D) == 10 and quant.reducer('pca25').out_dim(D) == 8


@pytest.mark.parametrize('name', ['grp50', 'srp50'])
def test_random_projections_preserve_inner_products_on_average(name):
  rng = np.random.default_rng(3)
  x = rng.standard_normal((N, 256)).astype(np.float32)
  r = reduce.REDUCERS[name[:3]](fraction=0.5, normalize=False)
  p = r.fit(x, key=jax.random.key(1))
  y = np.asarray(r.apply(p, x))
  assert y.shape == (N, 128)
  # JL: squared norms kept in expectation, with relative spread ~ sqrt(2 / k).
  ratio = (y ** 2).sum(1) / (x ** 2).sum(1)
  assert abs(ratio.mean() - 1) < 0.05 and ratio.std() < 0.25
  if name == 'srp50':
    density = (np.asarray(p.matrix) != 0).mean()
    assert abs(density - 1 / 16) < 0.01


def test_composed_pipeline_contract():
  x = _data(4)
  q = quant.get('pca50_float8')
  p = q.fit(x)
  codes = q.encode(p, x)
  assert codes.shape == (N, 16) and codes.dtype == np.dtype('float8_e4m3fn')
  assert q.bytes_per_vector(p) == q.bytes_per_vector(D) == 16
  # Scores are the reduced query against the decoded reduced vectors.
  red = quant.reducer('pca50')
  rp = red.fit(x)
  qr = np.asarray(red.apply(rp, x[:7]), np.float64)
  ref = qr @ np.asarray(q.decode(p, codes), np.float64).T
  np.testing.assert_allclose(np.asarray(q.score(p, x[:7], codes)), ref, atol=1e-5)
  assert quant.get('trunc8_int4').bytes_per_vector(D) == 4
  assert quant.get('srp25_binary').bytes_per_vector(D) == 1
  with pytest.raises(ValueError, match='unknown scheme'):
    quant.get('pca50_float7')
