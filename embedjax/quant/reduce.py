"""Dimension reduction before (or instead of) quantization: truncation, PCA, random projections.

A ``Reducer`` is the same kind of record as a ``Quantizer``: ``params = fit(x, key=None)``,
``apply(params, x) -> (N, k)``, ``out_dim(params or D)``. ``embedjax.quant.compose`` chains one
with any quantizer.

  truncate(k)       first k coordinates (Matryoshka). Only meaningful for models trained so that
                    prefixes carry the information; all-MiniLM-L6-v2 was not.
  pca(k | fraction) centred PCA fitted in JAX: eigenvectors of the (D, D) covariance of the
                    calibration set (float32 accumulation at HIGHEST precision), largest first;
                    each component's sign is fixed so that its largest-magnitude entry is positive.
  gaussian(k)       x @ R, R ~ N(0, 1/k) (D, k) (Johnson-Lindenstrauss).
  sparse(k)         x @ R with Li et al.'s very sparse projection (sklearn's
                    SparseRandomProjection): entries +-sqrt(1 / (density k)) with probability
                    density / 2 each, else 0, density = 1 / sqrt(D).

``normalize=True`` (default) re-normalises the reduced vectors to unit length: the embeddings are
compared by cosine, and a reduced vector's norm no longer carries meaning (a truncated or
projected unit vector is shorter by a varying amount).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
from flax import struct

from embedjax.ops import l2_normalize
from embedjax.quant.base import HIGHEST, check_calibration, dim_of


@dataclasses.dataclass(frozen=True)
class Reducer:
  """name; fit (x (N, D), key=None) -> params; apply (params, x) -> (N, k); out_dim."""
  name: str
  fit: Callable[..., Any]
  apply: Callable[[Any, jax.Array], jax.Array]
  out_dim: Callable[[Any], int]


def _maybe_normalize(y: jax.Array, normalize: bool) -> jax.Array:
  return l2_normalize(y) if normalize else y  # a zero vector stays zero


def _resolve_dim(d: int, dim: int | None, fraction: float | None) -> int:
  if (dim is None) == (fraction is None):
    raise ValueError('give exactly one of dim and fraction')
  k = dim if dim is not None else max(1, int(round(fraction * d)))
  if not 1 <= k <= d:
    raise ValueError(f'reduced dimension {k} not in [1, {d}]')
  return k


def _label(kind: str, dim: int | None, fraction: float | None) -> str:
  return f'{kind}{dim}' if dim is not None else f'{kind}{int(round(100 * fraction))}'


# ----------------------------------------------------------------------------------------------
# Truncation


@struct.dataclass
class TruncateParams:
  dim: int = struct.field(pytree_node=False)        # kept prefix length k
  in_dim: int = struct.field(pytree_node=False)     # D


def truncate(dim: int | None = None, *, fraction: float | None = None,
             normalize: bool = True) -> Reducer:
  """Keeps the first ``dim`` (or ``fraction`` of D) coordinates.

  >>> x = jnp.array([[3.0, 4.0, 12.0], [1.0, 0.0, 5.0]])
  >>> r = truncate(2)
  >>> params = r.fit(x)
  >>> r.name, r.out_dim(params)
  ('trunc2', 2)
  >>> print(r.apply(params, x))  # re-normalised (``normalize=True``)
  [[0.6 0.8]
   [1.  0. ]]
  """

  def fit(x, key=None) -> TruncateParams:
    del key
    x = check_calibration(x)
    return TruncateParams(dim=_resolve_dim(x.shape[1], dim, fraction), in_dim=x.shape[1])

  @jax.jit
  def apply(params: TruncateParams, x) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    chex.assert_shape(x, (None, params.in_dim))
    return _maybe_normalize(x[:, :params.dim], normalize)

  def out_dim(params_or_dim) -> int:
    if isinstance(params_or_dim, int):
      return _resolve_dim(params_or_dim, dim, fraction)
    return params_or_dim.dim

  return Reducer(_label('trunc', dim, fraction), fit, apply, out_dim)


# ----------------------------------------------------------------------------------------------
# Linear maps: PCA and random projections share params and apply.


@struct.dataclass
class LinearParams:
  """mean: (D,) subtracted first (zeros for random projections); matrix: (D, k)."""
  mean: jax.Array
  matrix: jax.Array


def _linear_apply(normalize: bool):
  @jax.jit
  def apply(params: LinearParams, x) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    chex.assert_shape(x, (None, params.mean.shape[0]))
    y = jnp.dot(x - params.mean, params.matrix, precision=HIGHEST)
    return _maybe_normalize(y, normalize)
  return apply


def _linear_out_dim(dim, fraction):
  def out_dim(params_or_dim) -> int:
    if isinstance(params_or_dim, int):
      return _resolve_dim(params_or_dim, dim, fraction)
    return params_or_dim.matrix.shape[1]
  return out_dim


@jax.jit
def pca_basis(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Centred PCA of (N, D) x: mean (D,), components (D, D) as columns, variances (D,), largest
  first; each column's largest-|.| entry is positive (a deterministic sign)."""
  mean = jnp.mean(x, axis=0)
  xc = x - mean
  cov = jnp.dot(xc.T, xc, precision=HIGHEST) / x.shape[0]
  var, vec = jnp.linalg.eigh(cov)
  var, vec = var[::-1], vec[:, ::-1]
  pivot = jnp.take_along_axis(vec, jnp.argmax(jnp.abs(vec), axis=0)[None], axis=0)
  return mean, vec * jnp.where(pivot < 0, -1.0, 1.0), var


def pca(dim: int | None = None, *, fraction: float | None = None, center: bool = True,
        normalize: bool = True) -> Reducer:
  """Projects onto the top principal components of the calibration set.

  Example: points on a line (plus a small orthogonal wiggle) keep their order along the line's
  direction, the first component.

  >>> x = jnp.array([[0.0, 0.0], [1.0, 1.1], [2.0, 1.9], [3.0, 3.0]])
  >>> r = pca(1, normalize=False)
  >>> params = r.fit(x)
  >>> [round(v, 2) for v in r.apply(params, x)[:, 0].tolist()]
  [-2.12, -0.64, 0.64, 2.12]
  """

  def fit(x, key=None) -> LinearParams:
    del key
    x = check_calibration(x)
    k = _resolve_dim(x.shape[1], dim, fraction)
    mean, vec, _ = pca_basis(x)
    return LinearParams(mean=mean if center else jnp.zeros_like(mean), matrix=vec[:, :k])

  return Reducer(_label('pca', dim, fraction), fit, _linear_apply(normalize),
                 _linear_out_dim(dim, fraction))


def gaussian(dim: int | None = None, *, fraction: float | None = None,
             normalize: bool = True) -> Reducer:
  """Gaussian random projection; ``fit`` uses only x's width and the key.

  >>> import numpy as np
  >>> x = np.eye(8, dtype=np.float32)
  >>> r = gaussian(fraction=0.5)
  >>> y = np.asarray(r.apply(r.fit(x, key=jax.random.key(0)), x))
  >>> r.name, y.shape, np.allclose(np.linalg.norm(y, axis=1), 1.0)  # re-normalised
  ('grp50', (8, 4), True)
  """

  def fit(x, key=None) -> LinearParams:
    x = check_calibration(x)
    key = jax.random.key(0) if key is None else key
    d = x.shape[1]
    k = _resolve_dim(d, dim, fraction)
    matrix = jax.random.normal(key, (d, k), jnp.float32) / math.sqrt(k)
    return LinearParams(mean=jnp.zeros((d,), jnp.float32), matrix=matrix)

  return Reducer(_label('grp', dim, fraction), fit, _linear_apply(normalize),
                 _linear_out_dim(dim, fraction))


def sparse(dim: int | None = None, *, fraction: float | None = None, density: float | None = None,
           normalize: bool = True) -> Reducer:
  """Very sparse random projection (stored dense: the (D, k) map is shared, not per vector).

  Example: with density 1/2 and k = 2, the entries are 0 or +-sqrt(1 / (1/2 * 2)) = +-1.

  >>> import numpy as np
  >>> r = sparse(2, density=0.5)
  >>> params = r.fit(np.zeros((1, 16)), key=jax.random.key(0))
  >>> sorted(set(params.matrix.ravel().tolist())) == [-1.0, 0.0, 1.0], params.matrix.shape
  (True, (16, 2))
  """

  def fit(x, key=None) -> LinearParams:
    x = check_calibration(x)
    key = jax.random.key(0) if key is None else key
    d = x.shape[1]
    k = _resolve_dim(d, dim, fraction)
    s = density if density is not None else 1.0 / math.sqrt(d)
    u = jax.random.uniform(key, (d, k))
    value = math.sqrt(1.0 / (s * k))
    matrix = jnp.where(u < s / 2, -value, jnp.where(u < s, value, 0.0)).astype(jnp.float32)
    return LinearParams(mean=jnp.zeros((d,), jnp.float32), matrix=matrix)

  return Reducer(_label('srp', dim, fraction), fit, _linear_apply(normalize),
                 _linear_out_dim(dim, fraction))


def reduced_dim(reducer: Reducer, params_or_dim) -> int:
  """``reducer.out_dim`` with the int check of the quantizers."""
  if isinstance(params_or_dim, int):
    dim_of(params_or_dim, lambda p: 0)
  return reducer.out_dim(params_or_dim)


REDUCERS: dict[str, Callable[..., Reducer]] = {
    'trunc': truncate, 'pca': pca, 'grp': gaussian, 'srp': sparse}
