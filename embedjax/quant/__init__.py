"""embedjax.quant: embedding quantizers, dimension reducers and their compositions.

Everything is selected by name through plain dicts:

  QUANTIZERS   post-training scalar and binary schemes (ready-made Quantizer records)
  REDUCERS     reducer factories: 'trunc' (absolute dim), 'pca' / 'grp' / 'srp' (percent of D)
  get(name)    a Quantizer from a scheme name:
                 <quantizer>                       e.g. 'int8', 'float8_e4m3', 'binary'
                 <reducer><n>_<quantizer>          e.g. 'pca50_float8', 'trunc128_int8'
                 pq<m> | opq<m>                    product quantization, m bytes per vector
                 rb<u> | rb<u>_asym                recurrent binarization, u bits per dimension
               'float8' is short for 'float8_e4m3'.
  names()      the plain scheme names and aliases (the grammar builds more from them)
"""

from __future__ import annotations

import re

from embedjax.quant.base import Quantizer
from embedjax.quant.binary import BINARY_QUANTIZERS
from embedjax.quant.compose import compose
from embedjax.quant.learned import recurrent_binarizer
from embedjax.quant.pq import product_quantizer
from embedjax.quant.reduce import REDUCERS, Reducer
from embedjax.quant.scalar import SCALAR_QUANTIZERS
from embedjax.registry import unknown_name

QUANTIZERS: dict[str, Quantizer] = {**SCALAR_QUANTIZERS, **BINARY_QUANTIZERS}
ALIASES = {'float8': 'float8_e4m3'}

_COMPOSED = re.compile(r'^(trunc|pca|grp|srp)(\d+)_(.+)$')
_PQ = re.compile(r'^(pq|opq)(\d+)$')
_RB = re.compile(r'^rb(\d+)(_asym)?$')
# The name forms of the grammar, listed in the error for an unknown scheme.
_GRAMMAR = ('<trunc|pca|grp|srp><n>_<scheme>', 'pq<m>', 'opq<m>', 'rb<u>', 'rb<u>_asym')


def reducer(name: str) -> Reducer:
  """'trunc128' (keep 128 dims), 'pca50' / 'grp50' / 'srp50' (50% of D)."""
  m = re.match(r'^(trunc|pca|grp|srp)(\d+)$', name)
  if not m:
    raise unknown_name('reducer', name, [f'{kind}<n>' for kind in REDUCERS])
  kind, n = m.group(1), int(m.group(2))
  if kind == 'trunc':
    return REDUCERS[kind](n)
  return REDUCERS[kind](fraction=n / 100)


def get(name: str, **kwargs) -> Quantizer:
  """The Quantizer for a scheme name (grammar in the module docstring); kwargs go to trained
  schemes (PQ: iters, opq_iters, metric; rb: hidden, steps, batch_size, lr)."""
  base = ALIASES.get(name, name)
  if base in QUANTIZERS:
    return QUANTIZERS[base]
  m = _COMPOSED.match(name)
  if m:
    inner = get(m.group(3), **kwargs)
    return compose(reducer(m.group(1) + m.group(2)), inner, name=name)
  m = _PQ.match(name)
  if m:
    return product_quantizer(int(m.group(2)), opq=m.group(1) == 'opq', **kwargs)
  m = _RB.match(name)
  if m:
    return recurrent_binarizer(int(m.group(1)), asymmetric=bool(m.group(2)), **kwargs)
  raise unknown_name('scheme', name, names() + _GRAMMAR)


def names() -> tuple[str, ...]:
  """The plain scheme names and aliases :func:`get` accepts; composed ('pca50_int8'), PQ
  ('pq16', 'opq16') and recurrent-binarization ('rb2', 'rb2_asym') names follow the grammar."""
  return tuple(QUANTIZERS) + tuple(ALIASES)


__all__ = ['QUANTIZERS', 'REDUCERS', 'ALIASES', 'Quantizer', 'Reducer', 'compose', 'get',
           'names', 'product_quantizer', 'recurrent_binarizer', 'reducer']
