"""embedjax.search: exact top-k over float, int8, binary and quantized corpora, single-device or
sharded over a mesh axis.

  SEARCHES     {name: search function}; every one returns (scores, indices), each (Q, k):
    flat                 topk_blocked(queries, corpus, k)                   exact inner product
    int8                 int8_topk(query_codes, corpus_codes, k)            integer inner product
    hamming              hamming_topk(query_codes, corpus_codes, k)         packed bits (distances)
    asymmetric           asymmetric_topk(quantizer, params, queries, codes, k)  float queries vs
                         codes of any ``embedjax.quant`` quantizer (PQ, int4, float8, ...)
    binary_rescore       binary_rescore(queries, query_codes, corpus_codes, k)  Hamming + rescore
    filtered             filtered_topk(queries, corpus, k, predicate=..., ...)  attribute filters
    maxsim               topk_maxsim(queries, query_mask, docs, doc_mask, k)  multi-vector late
                         interaction (ColBERT MaxSim) over padded token vectors
    sharded_flat, sharded_int8, sharded_hamming, sharded_asymmetric:
                         the same searches over a corpus sharded on a mesh axis (``sharded.py``)
    sparse               sparse_topk(SparseIndex.build(doc_weights), query_weights, k)  learned
                         sparse (SPLADE) vectors through an inverted index (scipy)
  plaid        (module) ColBERTv2 residual compression of token vectors and PLAID-style search:
               fit_codec, build_index, search
  ALIASES      'exact' -> 'flat', 'binary' -> 'hamming', 'pq' -> 'asymmetric' (the benchmarks'
               index names; PQ search is the asymmetric search with ``quant.get('pq16')``)
  get(name)    the search function, or a one-line error listing the choices
  names()      every name get accepts
"""

from __future__ import annotations

from typing import Callable

from embedjax.registry import lookup
from embedjax.search.exact import plan, topk_blocked, topk_blocked_by
from embedjax.search.filtered import PREDICATES, filtered_recall, filtered_topk
from embedjax.search.hamming import hamming_topk
from embedjax.search.multivector import maxsim_paired, maxsim_scores, topk_maxsim
from embedjax.search.quantized import asymmetric_topk, int8_topk
from embedjax.search.rescore import binary_rescore, rescore, rescore_with
from embedjax.search.sharded import (SHARDED_PREDICATES, place_rows, process_rows, rows_per_shard,
                                     sharded_asymmetric_topk, sharded_hamming_topk,
                                     sharded_int8_topk, sharded_topk, sharded_topk_by)
from embedjax.search.sparse import SparseIndex, sparse_topk

SEARCHES: dict[str, Callable] = {
    'flat': topk_blocked,
    'int8': int8_topk,
    'hamming': hamming_topk,
    'asymmetric': asymmetric_topk,
    'binary_rescore': binary_rescore,
    'filtered': filtered_topk,
    'maxsim': topk_maxsim,
    'sparse': sparse_topk,
    'sharded_flat': sharded_topk,
    'sharded_int8': sharded_int8_topk,
    'sharded_hamming': sharded_hamming_topk,
    'sharded_asymmetric': sharded_asymmetric_topk,
}
ALIASES = {'exact': 'flat', 'binary': 'hamming', 'pq': 'asymmetric'}
_BY_NAME = {**SEARCHES, **{alias: SEARCHES[target] for alias, target in ALIASES.items()}}


def get(name: str) -> Callable:
  """The search function called ``name`` (a key of SEARCHES or ALIASES), e.g. ``get('flat')``."""
  return lookup(_BY_NAME, name, 'search')


def names() -> tuple[str, ...]:
  """Names accepted by :func:`get`."""
  return tuple(_BY_NAME)


__all__ = ['ALIASES', 'asymmetric_topk', 'binary_rescore', 'filtered_recall', 'filtered_topk',
           'get', 'hamming_topk', 'int8_topk', 'maxsim_paired', 'maxsim_scores', 'names',
           'place_rows', 'plan', 'PREDICATES', 'process_rows', 'rescore', 'rescore_with',
           'rows_per_shard', 'SEARCHES', 'sharded_asymmetric_topk', 'sharded_hamming_topk',
           'sharded_int8_topk', 'SHARDED_PREDICATES', 'sharded_topk', 'sharded_topk_by',
           'sparse_topk', 'SparseIndex', 'topk_blocked', 'topk_blocked_by', 'topk_maxsim']
