"""CTR models on top of any table: logistic regression, FM, DeepFM and a DLRM-style dot interaction.

A model reads the table's output ``emb (B, F, D)`` and returns logits ``(B,)``. All parameters of
the features live in the table (so a compressed table compresses the whole feature side): the
first-order term of LR / FM / DeepFM is a per-field linear read-out of the same embeddings,
``sum_f w_f . e_f``, instead of a separate (N, 1) weight table.

* ``lr``: ``b + sum_f w_f . e_f``  (logistic regression on the embedded features).
* ``fm``: lr + ``sum_{f<g} <e_f, e_g>`` (Rendle 2010), by the O(F D) square-of-sum identity.
* ``deepfm``: fm + MLP(concat_f e_f) (Guo et al. 2017).
* ``dlrm``: top MLP over [the F(F-1)/2 pairwise dots, concat_f e_f] (Naumov et al. 2019). There
  are no dense features here (dense Criteo counts are bucketed into categorical fields), so the
  concatenated embeddings take the place of the bottom MLP's output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """``init(key) -> params``; ``apply(params, emb (B, F, D)) -> logits (B,)``."""

  name: str
  init: Callable
  apply: Callable
  config: dict = dataclasses.field(default_factory=dict)


def _dense_init(key, a, b):
  return {'w': jax.random.normal(key, (a, b), jnp.float32) * np.sqrt(2.0 / a),
          'b': jnp.zeros((b,), jnp.float32)}


def mlp_init(key, widths: Sequence[int]) -> list[dict]:
  keys = jax.random.split(key, len(widths) - 1)
  return [_dense_init(k, a, b) for k, a, b in zip(keys, widths[:-1], widths[1:])]


def mlp_apply(layers: list[dict], x: jax.Array) -> jax.Array:
  for i, layer in enumerate(layers):
    x = x @ layer['w'] + layer['b']
    if i < len(layers) - 1:
      x = jax.nn.relu(x)
  return x


def _linear_init(key, num_fields, dim):
  return {'w': jax.random.normal(key, (num_fields, dim), jnp.float32) / np.sqrt(dim),
          'bias': jnp.zeros((), jnp.float32)}


def _linear(params, emb):
  return jnp.einsum('bfd,fd->b', emb, params['w']) + params['bias']


def fm_interaction(emb: jax.Array) -> jax.Array:
  """(B, F, D) -> (B,) sum over field pairs f < g of <e_f, e_g>."""
  s = emb.sum(axis=1)
  return 0.5 * (jnp.sum(s * s, axis=-1) - jnp.sum(emb * emb, axis=(1, 2)))


def dot_interaction(emb: jax.Array) -> jax.Array:
  """(B, F, D) -> (B, F(F-1)/2) pairwise dots, strict upper triangle in row-major order."""
  f = emb.shape[1]
  gram = jnp.einsum('bfd,bgd->bfg', emb, emb)
  rows, cols = np.triu_indices(f, k=1)
  return gram[:, rows, cols]


def _check(emb, num_fields, dim):
  chex.assert_rank(emb, 3)
  chex.assert_axis_dimension(emb, 1, num_fields)
  chex.assert_axis_dimension(emb, 2, dim)


def lr(num_fields: int, dim: int) -> Model:
  def apply(params, emb):
    _check(emb, num_fields, dim)
    return _linear(params, emb)
  return Model('lr', lambda key: _linear_init(key, num_fields, dim), apply)


def fm(num_fields: int, dim: int) -> Model:
  def apply(params, emb):
    _check(emb, num_fields, dim)
    return _linear(params, emb) + fm_interaction(emb)
  return Model('fm', lambda key: _linear_init(key, num_fields, dim), apply)


def deepfm(num_fields: int, dim: int, hidden: Sequence[int] = (64, 32)) -> Model:
  widths = [num_fields * dim, *hidden, 1]

  def init(key):
    k1, k2 = jax.random.split(key)
    return {'linear': _linear_init(k1, num_fields, dim), 'mlp': mlp_init(k2, widths)}

  def apply(params, emb):
    _check(emb, num_fields, dim)
    deep = mlp_apply(params['mlp'], emb.reshape(emb.shape[0], -1))[:, 0]
    return _linear(params['linear'], emb) + fm_interaction(emb) + deep

  return Model('deepfm', init, apply, {'hidden': list(hidden)})


def dlrm(num_fields: int, dim: int, hidden: Sequence[int] = (64, 32)) -> Model:
  widths = [num_fields * (num_fields - 1) // 2 + num_fields * dim, *hidden, 1]

  def init(key):
    return {'top': mlp_init(key, widths)}

  def apply(params, emb):
    _check(emb, num_fields, dim)
    x = jnp.concatenate([dot_interaction(emb), emb.reshape(emb.shape[0], -1)], axis=1)
    return mlp_apply(params['top'], x)[:, 0]

  return Model('dlrm', init, apply, {'hidden': list(hidden)})


MODELS = {'lr': lr, 'fm': fm, 'deepfm': deepfm, 'dlrm': dlrm}
