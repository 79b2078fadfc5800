"""Similarity functions between embeddings, as sentence-transformers defines them.

``SIMILARITIES[name](a, b)`` maps (N, D) and (M, D) embeddings to (N, M) float64 scores, larger =
more similar; a (D,) vector counts as one row:

  cosine     a_i . b_j / (|a_i| |b_j|)        (norms floored at 1e-12, as torch's normalize)
  dot        a_i . b_j
  euclidean  -|a_i - b_j|_2                    (negative distance)
  manhattan  -|a_i - b_j|_1                    (negative distance)

Computed on the host in float64 from the float32 embeddings: these are for comparing a few
embeddings, not for search (``embedjax.search`` is the blocked, jitted path over corpora).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from embedjax.registry import lookup

_BLOCK_BYTES = 64 << 20  # float64 (rows, M, D) differences per step of the Manhattan distance


def _rows(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim == 1:
    x = x[None, :]
  if x.ndim != 2:
    raise ValueError(f'embeddings must be (N, D) or (D,), got shape {x.shape}')
  return x


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine(a, b) -> np.ndarray:
  """(N, D), (M, D) -> (N, M) cosine similarities.

  >>> cosine([[1.0, 0.0], [3.0, 3.0]], [[2.0, 0.0]]).round(4)
  array([[1.    ],
         [0.7071]])
  """
  a, b = _pair(a, b)
  return _unit(a) @ _unit(b).T


def dot(a, b) -> np.ndarray:
  """(N, D), (M, D) -> (N, M) inner products."""
  a, b = _pair(a, b)
  return a @ b.T


def euclidean(a, b) -> np.ndarray:
  """(N, D), (M, D) -> (N, M) negative Euclidean distances.

  >>> euclidean([[0.0, 0.0]], [[3.0, 4.0], [0.0, 0.0]])
  array([[-5., -0.]])
  """
  a, b = _pair(a, b)
  # |a|^2 + |b|^2 - 2 a.b in float64: exact enough for float32 inputs, and (N, M) memory only.
  sq = np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * (a @ b.T)
  return -np.sqrt(np.maximum(sq, 0.0))


def manhattan(a, b) -> np.ndarray:
  """(N, D), (M, D) -> (N, M) negative L1 distances (blocked over rows of ``a``).

  >>> manhattan([[0.0, 0.0]], [[3.0, -4.0]])
  array([[-7.]])
  """
  a, b = _pair(a, b)
  out = np.empty((a.shape[0], b.shape[0]), np.float64)
  step = max(1, _BLOCK_BYTES // max(1, 8 * b.size))
  for start in range(0, a.shape[0], step):
    block = a[start:start + step]
    out[start:start + step] = -np.abs(block[:, None, :] - b[None, :, :]).sum(-1)
  return out


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
  a, b = _rows(a), _rows(b)
  if a.shape[1] != b.shape[1]:
    raise ValueError(f'embeddings have dimensions {a.shape[1]} and {b.shape[1]}')
  return a, b


SIMILARITIES: dict[str, Callable[..., np.ndarray]] = {
    'cosine': cosine, 'dot': dot, 'euclidean': euclidean, 'manhattan': manhattan}


def get(name: str) -> Callable[..., np.ndarray]:
  """The similarity function called ``name`` (one of ``SIMILARITIES``)."""
  return lookup(SIMILARITIES, name, 'similarity function')


def names() -> tuple[str, ...]:
  return tuple(SIMILARITIES)
