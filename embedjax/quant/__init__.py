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

QUANTIZERS: dict[str, Quantizer] = {**SCALAR_QUANTIZERS, **BINARY_QUANTIZERS}
ALIASES = {'float8': 'float8_e4m3'}

_COMPOSED = re.compile(r'^(trunc|pca|grp|srp)(\d+)_(.+)$')
_PQ = re.compile(r'^(pq|opq)(\d+)$')
_RB = re.compile(r'^rb(\d+)(_asym)?$')


def reducer(name: str) -> Reducer:
  """'trunc128' (keep 128 dims), 'pca50' / 'grp50' / 'srp50' (50% of D)."""
  m = re.match(r'^(trunc|pca|grp|srp)(\d+)$', name)
  if not m:
    raise ValueError(f'unknown reducer {name!r}')
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
  raise ValueError(f'unknown scheme {name!r}; plain schemes: {", ".join(QUANTIZERS)}')


__all__ = ['QUANTIZERS', 'REDUCERS', 'ALIASES', 'Quantizer', 'Reducer', 'compose', 'get',
           'product_quantizer', 'recurrent_binarizer', 'reducer']
