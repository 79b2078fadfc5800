"""The quantizer contract: plain functions over a params pytree, bundled as a frozen record.

Every scheme (scalar casts, calibrated integers, binary, product quantization, trained binarizers,
and reduction-then-quantization pipelines) is a ``Quantizer``:

  params = q.fit(calibration, key=None)      # ranges / codebooks / weights, as data
  codes  = q.encode(params, x)               # (N, D) float -> (N, ...) codes
  x_hat  = q.decode(params, codes)           # (N, ...) codes -> (N, D') float32 reconstruction
  s      = q.score(params, queries, codes)   # (Q, D) float queries vs stored codes -> (Q, N)
  nbytes = q.bytes_per_vector(params or D)   # exact stored bytes of one vector's code

``score`` is split in two so that search loops can do the query-side work once per query block:
``prepare_query(params, queries)`` (e.g. PQ distance tables, a reduced projection, a binarised
query for symmetric schemes) and ``score_prepared(params, prepared, codes)``. All of them are pure
and jit-able; ``score_prepared`` is a module-level function, hence hashable, so it can be a static
argument of the blocked top-k in ``embedjax.search``.

Scores are "larger is more similar" (inner products on decoded vectors, or negated distances), so
they rank like the float32 inner product the embeddings were trained for.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

Params = Any
HIGHEST = jax.lax.Precision.HIGHEST


def identity_query(params: Params, queries: jax.Array) -> jax.Array:
  """The default ``prepare_query``: the float32 queries themselves."""
  del params
  return jnp.asarray(queries, jnp.float32)


def dot_scores(a: jax.Array, b: jax.Array) -> jax.Array:
  """(Q, D) x (N, D) -> (Q, N) float32 inner products at full float32 precision."""
  return jnp.dot(a, b.T, precision=HIGHEST, preferred_element_type=jnp.float32)


@dataclasses.dataclass(frozen=True)
class Quantizer:
  """A named storage scheme; see the module docstring for the contract.

  Attributes:
    name: the scheme's name as used in result tables (e.g. 'int8', 'pca50_float8_e4m3').
    fit: (calibration (N, D), key=None) -> params.
    encode: (params, x (N, D)) -> codes (N, ...).
    decode: (params, codes) -> (N, D') float32.
    prepare_query: (params, queries (Q, D)) -> query representation.
    score_prepared: (params, prepared, codes (N, ...)) -> (Q, N) float32 scores.
    bytes_per_vector: (params or int D) -> int, exact bytes of one stored code.
  """
  name: str
  fit: Callable[..., Params]
  encode: Callable[[Params, jax.Array], jax.Array]
  decode: Callable[[Params, jax.Array], jax.Array]
  score_prepared: Callable[[Params, Any, Any], jax.Array]
  bytes_per_vector: Callable[[Any], int]
  prepare_query: Callable[[Params, jax.Array], Any] = identity_query

  def score(self, params: Params, queries: jax.Array, codes) -> jax.Array:
    """(Q, D) float queries vs (N, ...) codes -> (Q, N) float32, larger = more similar."""
    return self.score_prepared(params, self.prepare_query(params, queries), codes)

  def roundtrip(self, params: Params, x: jax.Array) -> jax.Array:
    """``decode(params, encode(params, x))``: what a stored vector looks like when read back."""
    return self.decode(params, self.encode(params, x))


def dim_of(params_or_dim, params_dim: Callable[[Params], int]) -> int:
  """An int dimension as given, or read from params with ``params_dim``."""
  if isinstance(params_or_dim, int):
    if params_or_dim < 1:
      raise ValueError(f'dimension must be >= 1, got {params_or_dim}')
    return params_or_dim
  return int(params_dim(params_or_dim))


def check_calibration(x) -> jax.Array:
  """(N, D) float32 with N >= 1, the shape every ``fit`` expects."""
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
    raise ValueError(f'calibration must be (N >= 1, D >= 1), got shape {x.shape}')
  return x
