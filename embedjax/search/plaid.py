"""Compressed multi-vector indexes: ColBERTv2 residual compression and PLAID-style search.

Residual compression (Santhanam et al., ColBERTv2, 2022). Token vectors are clustered by k-means
(random or k-means++ seeds, Lloyd steps) and the centroids normalised; a token is stored as the id of its
centroid (largest inner product) and its residual ``token - centroid``, every residual coordinate
quantised to ``bits`` bits by buckets shared by all dimensions: the cutoffs are the
``i / 2**bits`` quantiles of the fitted residual values, and a bucket decodes to its ``(i + 0.5) /
2**bits`` quantile. A coordinate inside the fitted range is therefore read back within its
bucket's width (the outer buckets end at the fitted minimum and maximum). Stored bytes per token:
2 for the centroid id (4 beyond 65,536 centroids) and ``dim * bits / 8`` for the packed residual.

PLAID-style search (Santhanam et al., PLAID, 2022), per query:
  1. candidates: for every query token, the ``nprobe`` centroids of largest score; the candidate
     documents are those holding a token assigned to any of them (inverted lists, numpy);
  2. centroid interaction: each candidate scored by MaxSim over its tokens' centroids instead of
     the tokens (``centroid_threshold``: tokens whose centroid scores below it against every query
     token are left out, PLAID's centroid pruning); the ``ndocs`` best are kept;
  3. exact MaxSim of those ``ndocs`` on their decompressed tokens (or on the float tokens when the
     index keeps them), top-k.
With every centroid probed, no threshold and ``ndocs >= N`` this is the exact search of the same
token vectors (``multivector.topk_maxsim``): same ids, same order (ties by lower index).

What the defaults keep (ColBERTv2's settings for k = 100: nprobe 2, ndocs 1024, threshold 0.45):
tests/search/test_plaid.py checks recall@10 >= 0.95 of the exhaustive search over the same codes
on a synthetic corpus of SciFact's size. Against MaxSim over float tokens the loss is mostly
compression's, which the search cannot recover: results/bench_multivector_sweep_cpu.json and the
beyond-single-vector study's PLAID rows record both shares (``recall@10_of_exhaustive_compressed``
and ``exhaustive_compressed_recall@10_of_exact``).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from embedjax.kmeans_seeding import kmeans_plusplus
from embedjax.search.multivector import check_corpus, maxsim_scores

_CANDIDATE_BLOCK = 256  # candidates scored at once in stage 2 (also the padding granularity)
_ROW_BLOCK = 4096  # token rows scored against every centroid at once (k-means, assignment)


@struct.dataclass
class ResidualCodec:
  """centroids (K, d) float32 unit rows; cutoffs (2**bits - 1,) and weights (2**bits,) float32."""
  centroids: jax.Array
  cutoffs: jax.Array
  weights: jax.Array
  bits: int = struct.field(pytree_node=False)


def fit_codec(key: jax.Array, tokens, num_centroids: int, *, bits: int = 2, iters: int = 20,
              sample: int | None = None, init: str = 'random') -> ResidualCodec:
  """Fits centroids and residual buckets on token vectors (M, d), float; ``sample`` rows at most
  (drawn with ``key``) for k-means, every row for the buckets.

  ``init``: 'random' seeds k-means with ``num_centroids`` distinct training rows (faiss's default,
  which ColBERTv2 uses; ColBERTv2 then runs 4 Lloyd steps), 'kmeans++' with k-means++ (better
  seeds, but K sequential passes over the rows: too slow for a corpus's 16k centroids over a
  million tokens on a CPU). Lloyd steps and assignment are blocked over the rows, so no (M, K)
  array is built.
  """
  if bits not in (1, 2, 4, 8):
    raise ValueError(f'bits must be 1, 2, 4 or 8, got {bits}')
  if init not in ('random', 'kmeans++'):
    raise ValueError(f"init must be 'random' or 'kmeans++', got {init!r}")
  tokens = jnp.asarray(tokens, jnp.float32)
  chex.assert_rank(tokens, 2)
  m = tokens.shape[0]
  if not 1 <= num_centroids <= m:
    raise ValueError(f'num_centroids must be in [1, {m}] (the token count), got {num_centroids}')
  seed_key, sample_key = jax.random.split(key)
  train = tokens
  if sample is not None and sample < m:
    train = tokens[jax.random.choice(sample_key, m, (sample,), replace=False)]
  if init == 'random':
    seeds = train[jax.random.choice(seed_key, train.shape[0], (num_centroids,), replace=False)]
  else:
    seeds = kmeans_plusplus(seed_key, train, num_centroids)
  centers = blocked_lloyd(train, seeds, iters)
  centers = centers / jnp.maximum(jnp.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
  residuals = tokens - centers[assign(centers, tokens)]
  levels = 2 ** bits
  values = residuals.reshape(-1)
  cutoffs = jnp.quantile(values, jnp.arange(1, levels) / levels)
  weights = jnp.quantile(values, (jnp.arange(levels) + 0.5) / levels)
  return ResidualCodec(centroids=centers, cutoffs=cutoffs.astype(jnp.float32),
                       weights=weights.astype(jnp.float32), bits=bits)


def _best_centroid(x: jax.Array, centroids: jax.Array, bias: jax.Array | None
                   ) -> tuple[jax.Array, jax.Array]:
  """(M, d), (K, d), optional (K,) -> each row's argmax of ``x c + bias`` (M,) int32 and that
  maximum (M,), scored ``_ROW_BLOCK`` rows at a time (a (block, K) array, never (M, K)); ties go
  to the lower centroid."""
  m, d = x.shape
  pad = -m % _ROW_BLOCK
  blocks = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, _ROW_BLOCK, d)

  def one(xb):
    s = jnp.dot(xb, centroids.T, precision=jax.lax.Precision.HIGHEST)
    if bias is not None:
      s = s + bias
    return jnp.argmax(s, axis=1).astype(jnp.int32), jnp.max(s, axis=1)

  labels, best = jax.lax.map(one, blocks)
  return labels.reshape(-1)[:m], best.reshape(-1)[:m]


@functools.partial(jax.jit, static_argnames=('iters',))
def blocked_lloyd(x: jax.Array, centers: jax.Array, iters: int) -> jax.Array:
  """``iters`` Lloyd steps (squared Euclidean) from ``centers`` (K, d) over rows x (M, d).

  The same steps as ``quant.pq.lloyd`` (an empty cluster takes the e-th farthest point from its
  own centroid), but the nearest centroid is found block by block: pq's (M, K) distance array is
  72 GB for a corpus's 1.1M tokens and 16k centroids.
  """
  k = centers.shape[0]
  sq_x = jnp.sum(x * x, axis=1)

  def step(_, centers):
    # argmin |x - c|^2 = argmax (x c - |c|^2 / 2)
    labels, best = _best_centroid(x, centers, -0.5 * jnp.sum(centers * centers, axis=1))
    own = sq_x - 2.0 * best
    sums = jax.ops.segment_sum(x, labels, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones_like(own), labels, num_segments=k)
    empty = counts == 0
    means = sums / jnp.maximum(counts, 1.0)[:, None]

    def reseed(means):
      _, far = jax.lax.top_k(own, min(k, own.shape[0]))
      seed = x[far[jnp.clip(jnp.cumsum(empty) - 1, 0, far.shape[0] - 1)]]
      return jnp.where(empty[:, None], seed, means)

    return jax.lax.cond(jnp.any(empty), reseed, lambda m: m, means)

  return jax.lax.fori_loop(0, iters, step, centers)


@jax.jit
def assign(centroids: jax.Array, tokens: jax.Array) -> jax.Array:
  """(K, d), (M, d) -> (M,) int32: each token's centroid of largest inner product."""
  return _best_centroid(tokens, centroids, None)[0]


def id_dtype(num_centroids: int):
  return jnp.uint16 if num_centroids <= 1 << 16 else jnp.int32


def bytes_per_token(codec: ResidualCodec) -> int:
  """Stored bytes of one token: its centroid id and its packed residual."""
  k, d = codec.centroids.shape
  return jnp.dtype(id_dtype(k)).itemsize + math.ceil(d * codec.bits / 8)


@functools.partial(jax.jit, static_argnames=('bits',))
def _pack(levels_: jax.Array, bits: int) -> jax.Array:
  """(M, d) levels < 2**bits -> (M, ceil(d * bits / 8)) uint8, low bits first."""
  per_byte = 8 // bits
  m, d = levels_.shape
  pad = -d % per_byte
  lv = jnp.pad(levels_.astype(jnp.uint8), ((0, 0), (0, pad))).reshape(m, -1, per_byte)
  shifts = (jnp.arange(per_byte, dtype=jnp.uint8) * bits).astype(jnp.uint8)
  return jnp.sum(lv << shifts, axis=2, dtype=jnp.uint32).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=('bits', 'dim'))
def _unpack(packed: jax.Array, bits: int, dim: int) -> jax.Array:
  per_byte = 8 // bits
  shifts = (jnp.arange(per_byte, dtype=jnp.uint8) * bits).astype(jnp.uint8)
  lv = (packed[..., None] >> shifts) & jnp.uint8(2 ** bits - 1)
  return lv.reshape(*packed.shape[:-1], -1)[..., :dim].astype(jnp.int32)


def compress(codec: ResidualCodec, tokens) -> tuple[jax.Array, jax.Array]:
  """(M, d) float -> (centroid ids (M,) uint16|int32, packed residuals (M, ceil(d*bits/8)) uint8)."""
  tokens = jnp.asarray(tokens, jnp.float32)
  ids = assign(codec.centroids, tokens)
  levels_ = jnp.searchsorted(codec.cutoffs, tokens - codec.centroids[ids], side='right')
  return ids.astype(id_dtype(codec.centroids.shape[0])), _pack(levels_, codec.bits)


@jax.jit
def decompress(codec: ResidualCodec, ids: jax.Array, packed: jax.Array) -> jax.Array:
  """(..., ) ids and (..., bytes) residuals -> (..., d) float32 token vectors."""
  dim = codec.centroids.shape[1]
  levels_ = _unpack(packed, codec.bits, dim)
  return codec.centroids[ids.astype(jnp.int32)] + codec.weights[levels_]


@dataclasses.dataclass(frozen=True)
class MultiVectorIndex:
  """A corpus of N documents of at most Td tokens, compressed.

  ids (N, Td) centroid ids, residuals (N, Td, bytes) uint8, mask (N, Td) bool (padding and pruned
  tokens False); ``lists``: for centroid c, ``lists_docs[lists_start[c]:lists_start[c + 1]]`` are
  the documents holding a token of c, ascending. ``tokens``: the float (N, Td, d) vectors when
  kept for exact re-scoring (not counted as stored bytes), else None.
  """
  codec: ResidualCodec
  ids: jax.Array
  residuals: jax.Array
  mask: np.ndarray
  lists_start: np.ndarray
  lists_docs: np.ndarray
  tokens: jax.Array | None = None

  @property
  def num_docs(self) -> int:
    return self.mask.shape[0]

  def bytes_per_doc(self) -> float:
    """Mean stored bytes of a document: its counted tokens times ``bytes_per_token``."""
    return float(self.mask.sum(axis=1).mean()) * bytes_per_token(self.codec)


def build_index(codec: ResidualCodec, docs, doc_mask, *, keep_float: bool = False
                ) -> MultiVectorIndex:
  """Compresses padded token vectors (N, Td, d) with masks (N, Td) and builds inverted lists."""
  docs = np.asarray(docs, np.float32)
  mask = np.asarray(doc_mask).astype(bool)
  chex.assert_rank([docs, mask], [3, 2])
  check_corpus(mask)
  n, td, d = docs.shape
  ids, residuals = compress(codec, docs.reshape(n * td, d))
  ids = ids.reshape(n, td)
  k = codec.centroids.shape[0]
  pairs = np.unique(np.asarray(ids, np.int64)[mask] * n + np.nonzero(mask)[0])  # c * n + doc
  lists_docs = (pairs % n).astype(np.int32)
  lists_start = np.searchsorted(pairs // n, np.arange(k + 1)).astype(np.int64)
  return MultiVectorIndex(codec=codec, ids=ids, residuals=residuals.reshape(n, td, -1), mask=mask,
                          lists_start=lists_start, lists_docs=lists_docs,
                          tokens=jnp.asarray(docs) if keep_float else None)


@functools.partial(jax.jit, static_argnames=('use_threshold',))
def _centroid_interaction(cscores, query_mask, cand_ids, cand_mask, threshold, use_threshold):
  """Stage 2: (Tq, K) centroid scores, (Tq,) mask, (C, Td) candidates' ids / mask -> (C,)."""
  if use_threshold:  # PLAID's pruning: tokens whose centroid no query token scores well
    keep = jnp.max(jnp.where(query_mask[:, None] != 0, cscores, -jnp.inf), axis=0) >= threshold
    cand_mask = cand_mask & keep[cand_ids]
  sims = cscores[:, cand_ids]  # (Tq, C, Td)
  best = jnp.max(jnp.where(cand_mask[None], sims, -jnp.inf), axis=2)  # (Tq, C)
  best = jnp.where(jnp.isneginf(best), 0.0, best)  # a candidate with every token pruned
  return jnp.sum(jnp.where(query_mask[:, None] != 0, best, 0.0), axis=0)


@jax.jit
def _exact(codec, query, query_mask, ids, residuals, mask):
  return maxsim_scores(query[None], query_mask[None], decompress(codec, ids, residuals), mask)[0]


@jax.jit
def _exact_float(query, query_mask, tokens, mask):
  return maxsim_scores(query[None], query_mask[None], tokens, mask)[0]


def _padded(n: int) -> int:
  return max(_CANDIDATE_BLOCK, -(-n // _CANDIDATE_BLOCK) * _CANDIDATE_BLOCK)


def search(index: MultiVectorIndex, queries, query_mask, k: int, *, nprobe: int = 2,
           ndocs: int = 1024, centroid_threshold: float | None = 0.45
           ) -> tuple[np.ndarray, np.ndarray]:
  """PLAID-style top-k for every query (see the module docstring).

  Args:
    index: ``build_index``'s result.
    queries: (Q, Tq, d) float token vectors; query_mask (Q, Tq).
    k: results per query (fewer when fewer documents are candidates; missing entries are
      score -inf and index -1).
    nprobe: centroids probed per query token (all of them: the exact candidate set).
    ndocs: candidates kept after centroid interaction and re-scored exactly.
    centroid_threshold: PLAID's centroid pruning in stage 2, or None.

  Returns:
    scores (Q, k) float32 descending and indices (Q, k) int32 (numpy); ties by lower index.
  """
  queries = np.asarray(queries, np.float32)
  query_mask = np.asarray(query_mask)
  chex.assert_rank([queries, query_mask], [3, 2])
  num_k = index.codec.centroids.shape[0]
  if queries.shape[2] != index.codec.centroids.shape[1]:
    raise ValueError(f'query tokens have dimension {queries.shape[2]} but the index '
                     f'{index.codec.centroids.shape[1]}')
  if k < 1 or nprobe < 1 or ndocs < 1:
    raise ValueError(f'k, nprobe and ndocs must be >= 1, got {k}, {nprobe}, {ndocs}')
  nprobe = min(nprobe, num_k)
  out_scores = np.full((len(queries), k), -np.inf, np.float32)
  out_ids = np.full((len(queries), k), -1, np.int32)
  all_cscores = np.asarray(jnp.einsum('qid,kd->qik', queries, index.codec.centroids,
                                      precision=jax.lax.Precision.HIGHEST))
  for qi in range(len(queries)):
    cscores, qmask = all_cscores[qi], query_mask[qi]
    probed = np.argpartition(-cscores[qmask != 0], nprobe - 1, axis=1)[:, :nprobe]
    probed = np.unique(probed)
    if probed.size == 0:  # a query without counted tokens matches nothing
      continue
    cands = np.unique(np.concatenate(
        [index.lists_docs[index.lists_start[c]:index.lists_start[c + 1]] for c in probed]))
    if cands.size == 0:
      continue
    if cands.size > ndocs:
      padded = np.zeros(_padded(cands.size), np.int32)
      padded[:cands.size] = cands
      approx = np.asarray(_centroid_interaction(
          jnp.asarray(cscores), jnp.asarray(qmask), index.ids[padded].astype(jnp.int32),
          jnp.asarray(index.mask[padded]), jnp.float32(centroid_threshold or 0.0),
          use_threshold=centroid_threshold is not None))[:cands.size]
      keep = np.argsort(-approx, kind='stable')[:ndocs]
      cands = np.sort(cands[keep])  # index order again: exact ties go to the lower index
    padded = np.zeros(_padded(cands.size), np.int32)
    padded[:cands.size] = cands
    mask = np.zeros((padded.size, index.mask.shape[1]), bool)
    mask[:cands.size] = index.mask[cands]
    mask[cands.size:, 0] = True  # padding rows: one token, scored then dropped
    if index.tokens is not None:
      exact = _exact_float(jnp.asarray(queries[qi]), jnp.asarray(qmask), index.tokens[padded],
                           jnp.asarray(mask))
    else:
      exact = _exact(index.codec, jnp.asarray(queries[qi]), jnp.asarray(qmask), index.ids[padded],
                     index.residuals[padded], jnp.asarray(mask))
    exact = np.asarray(exact)[:cands.size]
    order = np.argsort(-exact, kind='stable')[:k]
    out_scores[qi, :order.size] = exact[order]
    out_ids[qi, :order.size] = cands[order]
  return out_scores, out_ids
