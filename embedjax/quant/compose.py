"""Reduction followed by quantization, as one Quantizer (e.g. PCA to 50% then float8).

``compose(reducer, quantizer)`` fits the reducer on the calibration set, then the quantizer on the
reduced calibration set; encode = quantize(reduce(x)); queries are reduced the same way before the
quantizer's own query preparation, so asymmetric scores are computed in the reduced space.
``decode`` returns reduced-space vectors (what is stored, read back): cosine similarities between
decoded vectors are the scheme's similarities. Storage is the quantizer's bytes at the reduced
dimension; the reducer's own parameters (a D x k matrix) are shared by all vectors and not counted.
"""

from __future__ import annotations

import jax
from flax import struct

from embedjax.quant.base import Quantizer
from embedjax.quant.reduce import Reducer


@struct.dataclass
class ComposedParams:
  reduce: object
  quant: object


def compose(reducer: Reducer, quantizer: Quantizer, name: str | None = None) -> Quantizer:
  """The pipeline reducer -> quantizer as a Quantizer named '<reducer>_<quantizer>'.

  Example: keep 2 of 4 dimensions, then store them as int8: 2 bytes per vector.

  >>> import jax.numpy as jnp
  >>> from embedjax.ops import l2_normalize
  >>> from embedjax.quant import reduce, scalar
  >>> q = compose(reduce.truncate(2), scalar.int8)
  >>> x = jnp.array([[3.0, 4.0, 1.0, 1.0], [-4.0, 3.0, 1.0, 1.0], [0.0, 5.0, 1.0, 1.0]])
  >>> params = q.fit(x)
  >>> q.name, q.bytes_per_vector(4), q.encode(params, x).shape
  ('trunc2_int8', 2, (3, 2))
  >>> float(jnp.max(jnp.abs(q.roundtrip(params, x) - l2_normalize(x[:, :2])))) < 0.01
  True
  """

  def fit(calibration, key=None) -> ComposedParams:
    key = jax.random.key(0) if key is None else key
    k_reduce, k_quant = jax.random.split(key)
    rp = reducer.fit(calibration, key=k_reduce)
    qp = quantizer.fit(reducer.apply(rp, calibration), key=k_quant)
    return ComposedParams(reduce=rp, quant=qp)

  def encode(params: ComposedParams, x):
    return quantizer.encode(params.quant, reducer.apply(params.reduce, x))

  def decode(params: ComposedParams, codes):
    return quantizer.decode(params.quant, codes)

  def prepare_query(params: ComposedParams, queries):
    return quantizer.prepare_query(params.quant, reducer.apply(params.reduce, queries))

  def score_prepared(params: ComposedParams, prepared, codes):
    return quantizer.score_prepared(params.quant, prepared, codes)

  def bytes_per_vector(params_or_dim) -> int:
    if isinstance(params_or_dim, int):
      return quantizer.bytes_per_vector(reducer.out_dim(params_or_dim))
    return quantizer.bytes_per_vector(params_or_dim.quant)

  return Quantizer(name=name or f'{reducer.name}_{quantizer.name}', fit=fit, encode=encode,
                   decode=decode, score_prepared=score_prepared,
                   bytes_per_vector=bytes_per_vector, prepare_query=prepare_query)
