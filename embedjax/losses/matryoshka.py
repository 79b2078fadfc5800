"""Matryoshka representation learning: apply an embedding loss at several truncated dimensions.

A higher-order function: ``matryoshka(loss_fn, dims)`` returns a loss with the same signature that
sums ``weight * loss_fn`` over prefixes ``x[..., :dim]`` (re-normalised, as sentence-transformers'
MatryoshkaLoss does). Reference: Kusupati et al. 2022, "Matryoshka Representation Learning".
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp


def truncate(x: jax.Array | None, dim: int, renormalize: bool = True) -> jax.Array | None:
  """x[..., :dim], L2-normalised along the last axis when ``renormalize``."""
  if x is None:
    return None
  if dim > x.shape[-1]:
    raise ValueError(f'matryoshka dim {dim} exceeds the embedding dimension {x.shape[-1]}')
  x = x[..., :dim]
  if renormalize:
    x = x / jnp.maximum(jnp.linalg.norm(x.astype(jnp.float32), axis=-1, keepdims=True), 1e-12).astype(x.dtype)
  return x


def matryoshka(loss_fn: Callable, dims: Sequence[int], weights: Sequence[float] | None = None,
               renormalize: bool = True) -> Callable:
  """Wraps ``loss_fn(q, d, *, hard_negatives=None, **kw) -> (loss, metrics)``.

  The wrapped loss returns (sum_i w_i * loss_i, metrics) with metrics of every dim suffixed
  ``@dim`` and the plain keys taken from the largest dim.
  """
  if not dims or any(int(x) <= 0 for x in dims):
    raise ValueError(f'matryoshka dims must be positive, got {dims}')
  weights = [1.0] * len(dims) if weights is None else list(weights)
  if len(weights) != len(dims):
    raise ValueError(f'{len(weights)} weights for {len(dims)} matryoshka dims')
  pairs = sorted(zip((int(x) for x in dims), weights), reverse=True)

  def wrapped(q, d, *, hard_negatives=None, **kwargs):
    total = 0.0
    metrics = {}
    for dim, weight in pairs:
      loss, m = loss_fn(truncate(q, dim, renormalize), truncate(d, dim, renormalize),
                        hard_negatives=truncate(hard_negatives, dim, renormalize), **kwargs)
      total = total + weight * loss
      metrics.update({f'{k}@{dim}': v for k, v in m.items()})
      if dim == pairs[0][0]:
        metrics.update(m)
    metrics['loss'] = total
    return total, metrics

  return wrapped
