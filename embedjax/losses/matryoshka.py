"""Matryoshka representation learning: apply an embedding loss at several truncated dimensions.

A higher-order function: ``matryoshka(loss_fn, dims)`` returns a loss with the same signature that
sums ``weight * loss_fn`` over prefixes ``x[..., :dim]`` (re-normalised, as sentence-transformers'
MatryoshkaLoss does). Reference: Kusupati et al. 2022, "Matryoshka Representation Learning".
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax

from embedjax.ops import l2_normalize


def _prefix(x: jax.Array, dim: int) -> jax.Array:
  if dim > x.shape[-1]:
    raise ValueError(f'matryoshka dim {dim} exceeds the embedding dimension {x.shape[-1]}')
  return x[..., :dim]


def truncate_and_renormalize(x: jax.Array, dim: int) -> jax.Array:
  """x[..., :dim], L2-normalised along the last axis: a Matryoshka embedding at ``dim``.

  Accepts numpy (returns numpy) or jax arrays; the norm of bfloat16/float16 inputs is computed in
  float32 (``embedjax.ops.l2_normalize``).

  >>> import numpy as np
  >>> truncate_and_renormalize(np.array([[3.0, 4.0, 12.0]]), 2)
  array([[0.6, 0.8]])
  """
  return l2_normalize(_prefix(x, dim))


def matryoshka(loss_fn: Callable, dims: Sequence[int], weights: Sequence[float] | None = None,
               renormalize: bool = True) -> Callable:
  """Wraps ``loss_fn(q, d, *, hard_negatives=None, **kw) -> (loss, metrics)``.

  The wrapped loss returns (sum_i w_i * loss_i, metrics) with metrics of every dim suffixed
  ``@dim`` and the plain keys taken from the largest dim.

  Example: InfoNCE at dims 4 and 2, on queries equal to their positives whose first two
  coordinates already separate them: both terms are ~0.

  >>> import jax.numpy as jnp
  >>> from embedjax.losses.contrastive import info_nce
  >>> q = jnp.array([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.0, 0.5]])
  >>> loss, metrics = jax.jit(matryoshka(info_nce, dims=(4, 2)))(q, q)
  >>> float(loss) < 1e-6, sorted(k for k in metrics if k.startswith('loss@'))
  (True, ['loss@2', 'loss@4'])
  """
  if not dims or any(int(x) <= 0 for x in dims):
    raise ValueError(f'matryoshka dims must be positive, got {dims}')
  weights = [1.0] * len(dims) if weights is None else list(weights)
  if len(weights) != len(dims):
    raise ValueError(f'{len(weights)} weights for {len(dims)} matryoshka dims')
  pairs = sorted(zip((int(x) for x in dims), weights), reverse=True)

  cut = truncate_and_renormalize if renormalize else _prefix

  def wrapped(q, d, *, hard_negatives=None, **kwargs):
    total = 0.0
    metrics = {}
    for dim, weight in pairs:
      # Only given when there are some: losses on scored pairs take no hard negatives.
      negatives = {} if hard_negatives is None else {'hard_negatives': cut(hard_negatives, dim)}
      loss, m = loss_fn(cut(q, dim), cut(d, dim), **negatives, **kwargs)
      total = total + weight * loss
      metrics.update({f'{k}@{dim}': v for k, v in m.items()})
      if dim == pairs[0][0]:
        metrics.update(m)
    metrics['loss'] = total
    return total, metrics

  return wrapped
