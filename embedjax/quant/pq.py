"""Product quantization (Jegou et al. 2011) with optional OPQ rotation (Ge et al. 2013), in JAX.

D is split into M contiguous sub-vectors of D / M dimensions; each is replaced by the index of the
nearest of K = 256 centroids of its subspace, so a vector costs M bytes. Codebooks are trained by
k-means per subspace (k-means++ seeding, a fixed number of Lloyd iterations, empty clusters reseeded
with the points farthest from their centroid), subspaces one after another with ``lax.map`` so
that only one (N, K) distance matrix is alive, on at most 256 x K training points (faiss'
``max_points_per_centroid`` default), all jitted.

Search is asymmetric (ADC): per query, a (M, K) table of inner products (or negated squared L2
distances) between the query's sub-vectors and every centroid; a code's score is the sum of M
table entries. With ``opq=True`` an orthogonal (D, D) rotation R is learned first (non-parametric
OPQ: alternate PQ training on X R and the orthogonal Procrustes solution R = U V^T of
X^T Y = U S V^T, Y the PQ reconstruction), and vectors and queries are rotated by R; inner products
and L2 distances are unchanged by R, only the quantization error drops.

Only 8-bit codes (K = 256, uint8) are implemented; code sizes vary through M.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
from flax import struct

from embedjax.kmeans_seeding import kmeans_plusplus, sq_distances
from embedjax.quant.base import HIGHEST, Quantizer, check_calibration

K = 256
_ENCODE_CHUNK = 16384  # rows encoded per call: a (chunk, K) distance matrix per subspace


@struct.dataclass
class PQParams:
  """codebooks: (M, K, D / M) float32; rotation: (D, D) orthogonal (OPQ) or None."""
  codebooks: jax.Array
  rotation: jax.Array | None = None


def lloyd(x: jax.Array, centers: jax.Array, iters) -> jax.Array:
  """``iters`` Lloyd steps from ``centers`` (K, d); returns the final centres.

  An empty cluster takes a far point: the e-th empty one gets the e-th farthest point from its
  own centroid.
  """
  k = centers.shape[0]

  def step(_, centers):
    d = sq_distances(x, centers)
    labels = jnp.argmin(d, axis=1)
    own = jnp.take_along_axis(d, labels[:, None], axis=1)[:, 0]
    sums = jax.ops.segment_sum(x, labels, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones_like(own), labels, num_segments=k)
    empty = counts == 0
    means = sums / jnp.maximum(counts, 1.0)[:, None]

    def reseed(means):
      _, far = jax.lax.top_k(own, k)
      seed = x[far[jnp.clip(jnp.cumsum(empty) - 1, 0, k - 1)]]
      return jnp.where(empty[:, None], seed, means)

    # Empty clusters are rare; the (N, K) top_k that reseeds them costs more than the Lloyd step
    # itself, so it only runs when needed.
    return jax.lax.cond(jnp.any(empty), reseed, lambda m: m, means)

  return jax.lax.fori_loop(0, iters, step, centers)


@functools.partial(jax.jit, static_argnames=('m',))
def train_codebooks(key: jax.Array, x: jax.Array, m: int, iters,
                    init: jax.Array | None = None) -> jax.Array:
  """Per-subspace k-means. x (N, D) -> codebooks (M, K, D / M); ``init`` warm-starts Lloyd.

  Subspaces run one after another (``lax.map``), each with plain 2-D GEMMs: XLA's CPU batched
  dot over all subspaces at once measured much slower than the loop (BENCHMARKS.md). ``iters`` is
  traced (a loop bound), so one compilation serves every iteration count.
  """
  n, d = x.shape
  sub = x.reshape(n, m, d // m).transpose(1, 0, 2)  # (M, N, ds)
  keys = jax.random.split(key, m)
  if init is None:
    # Plain k-means++ (one candidate per centre), as faiss seeds its PQ codebooks.
    seed = lambda key, xs: kmeans_plusplus(key, xs, K, trials=1)
    return jax.lax.map(lambda a: lloyd(a[1], seed(a[0], a[1]), iters), (keys, sub))
  return jax.lax.map(lambda a: lloyd(a[0], a[1], iters), (sub, init))


@jax.jit
def _encode_rotated(codebooks: jax.Array, x: jax.Array) -> jax.Array:
  """(N, D) already-rotated -> (N, M) uint8 nearest-centroid indices."""
  m, _, ds = codebooks.shape
  sub = x.reshape(x.shape[0], m, ds).transpose(1, 0, 2)
  idx = jax.lax.map(lambda a: jnp.argmin(sq_distances(a[0], a[1]), axis=1), (sub, codebooks))
  return idx.T.astype(jnp.uint8)


@jax.jit
def _decode_rotated(codebooks: jax.Array, codes: jax.Array) -> jax.Array:
  """(N, M) codes -> (N, D) reconstruction in the rotated space."""
  m = codebooks.shape[0]
  parts = codebooks[jnp.arange(m)[None, :], codes.astype(jnp.int32)]  # (N, M, ds)
  return parts.reshape(codes.shape[0], -1)


def _rotate(params: PQParams, x: jax.Array) -> jax.Array:
  if params.rotation is None:
    return x
  return jnp.dot(x, params.rotation, precision=HIGHEST)


def encode(params: PQParams, x) -> jax.Array:
  """(N, D) float -> (N, M) uint8 codes, in row chunks that keep (chunk, K) distances small."""
  x = jnp.asarray(x, jnp.float32)
  m, _, ds = params.codebooks.shape
  chex.assert_shape(x, (None, m * ds))
  xr = _rotate(params, x)
  chunk = _ENCODE_CHUNK
  if x.shape[0] <= chunk:
    return _encode_rotated(params.codebooks, xr)
  return jnp.concatenate([_encode_rotated(params.codebooks, xr[s:s + chunk])
                          for s in range(0, x.shape[0], chunk)])


@jax.jit
def decode(params: PQParams, codes) -> jax.Array:
  """(N, M) codes -> (N, D) float32 reconstruction (rotated back)."""
  y = _decode_rotated(params.codebooks, jnp.asarray(codes))
  if params.rotation is None:
    return y
  return jnp.dot(y, params.rotation.T, precision=HIGHEST)


@functools.partial(jax.jit, static_argnames=('metric',))
def distance_tables(params: PQParams, queries, metric: str = 'ip') -> jax.Array:
  """(Q, D) queries -> (Q, M, K) per-subspace scores: q_m . c_mk ('ip') or -|q_m - c_mk|^2."""
  q = _rotate(params, jnp.asarray(queries, jnp.float32))
  m, _, ds = params.codebooks.shape
  qs = q.reshape(q.shape[0], m, ds)
  ip = jnp.einsum('qmd,mkd->qmk', qs, params.codebooks, precision=HIGHEST)
  if metric == 'ip':
    return ip
  if metric == 'l2':
    qq = jnp.sum(qs * qs, axis=2)[:, :, None]
    cc = jnp.sum(params.codebooks ** 2, axis=2)[None]
    return -(qq - 2.0 * ip + cc)
  raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")


@jax.jit
def lut_scores(params: PQParams, tables: jax.Array, codes: jax.Array) -> jax.Array:
  """(B, M, K) tables x (N, M) codes -> (B, N) float32: sum over m of tables[b, m, codes[n, m]].

  Gathered as rows: with the tables laid out (M, K, B), each code fetches a contiguous B-vector,
  which XLA's CPU gather does faster than fetching one column entry per (b, n) pair
  (measurements: BENCHMARKS.md).
  """
  del params
  codes = codes.astype(jnp.int32)
  by_code = jnp.transpose(tables, (1, 2, 0))  # (M, K, B)

  def add(m, acc):
    return acc + jnp.take(by_code[m], codes[:, m], axis=0)

  init = jnp.zeros((codes.shape[0], tables.shape[0]), jnp.float32)
  return jax.lax.fori_loop(0, tables.shape[1], add, init).T


@jax.jit
def gemm_scores_ip(params: PQParams, queries_rotated: jax.Array, codes: jax.Array) -> jax.Array:
  """(B, D) rotated queries x (N, M) codes -> (B, N): the same inner products as ``lut_scores``.

  ``sum_m q_m . c_m[code_m] = q . decode(code)``, so decoding the block (N x D gathers, shared by
  every query) and one matrix product replace B x N x M table look-ups. For a batch of queries the
  product runs at matrix-multiply speed; for one query the tables are cheaper.
  """
  x = _decode_rotated(params.codebooks, codes)
  return jnp.dot(queries_rotated, x.T, precision=HIGHEST, preferred_element_type=jnp.float32)


@jax.jit
def gemm_scores_l2(params: PQParams, queries_rotated: jax.Array, codes: jax.Array) -> jax.Array:
  """(B, D) x (N, M) -> (B, N) ``-|q - decode(code)|^2`` (the 'l2' tables' sum), via GEMM."""
  x = _decode_rotated(params.codebooks, codes)
  ip = jnp.dot(queries_rotated, x.T, precision=HIGHEST, preferred_element_type=jnp.float32)
  qq = jnp.sum(queries_rotated * queries_rotated, axis=1)[:, None]
  return -(qq - 2.0 * ip + jnp.sum(x * x, axis=1)[None, :])


def _subsample(key, x, max_points: int):
  if x.shape[0] <= max_points:
    return x
  return x[jax.random.choice(key, x.shape[0], (max_points,), replace=False)]


@jax.jit
def _procrustes(x: jax.Array, y: jax.Array) -> jax.Array:
  """The orthogonal R minimising |x R - y|_F: U V^T from the SVD of x^T y."""
  u, _, vt = jnp.linalg.svd(jnp.dot(x.T, y, precision=HIGHEST))
  return jnp.dot(u, vt, precision=HIGHEST)


def fit(calibration, key=None, *, m: int, iters: int = 25, opq: bool = False,
        opq_iters: int = 25, opq_pq_iters: int = 4, opq_first_iters: int = 40,
        max_points_per_centroid: int = 256) -> PQParams:
  """Trains PQ (optionally OPQ) codebooks.

  Args:
    calibration: (N, D) training vectors; D must be divisible by m.
    key: PRNG key (default key(0)) for subsampling and k-means++.
    m: sub-quantizers = bytes per code.
    iters: Lloyd iterations of the final codebooks (faiss' default is 25).
    opq: learn an OPQ rotation first.
    opq_iters, opq_pq_iters, opq_first_iters: OPQ alternations, and Lloyd iterations of the
      warm-started PQ within each (of the first one); faiss uses 50, 4, 40.
    max_points_per_centroid: training points kept per centroid (random subset).
  """
  x = check_calibration(calibration)
  d = x.shape[1]
  if d % m:
    raise ValueError(f'D={d} is not divisible by m={m}')
  key = jax.random.key(0) if key is None else key
  k_sub, k_init, k_final, k_rot = jax.random.split(key, 4)
  x = _subsample(k_sub, x, max_points_per_centroid * K)
  if x.shape[0] < K:
    raise ValueError(f'need at least {K} training vectors, got {x.shape[0]}')
  rotation = None
  codebooks = None
  if opq:
    # As faiss' OPQMatrix: a random orthogonal start, the rotation learned on centred data,
    # a long first PQ training and short warm-started ones after it.
    xc = x - jnp.mean(x, axis=0)
    rotation, _ = jnp.linalg.qr(jax.random.normal(k_rot, (d, d), jnp.float32))
    for it in range(opq_iters):
      xr = jnp.dot(xc, rotation, precision=HIGHEST)
      if it == 0:
        codebooks = train_codebooks(k_init, xr, m, opq_first_iters)
      else:
        codebooks = train_codebooks(k_init, xr, m, opq_pq_iters, init=codebooks)
      y = _decode_rotated(codebooks, _encode_rotated(codebooks, xr))
      rotation = _procrustes(xc, y)
    codebooks = None  # the final codebooks are trained afresh on the uncentred, rotated data
    x = jnp.dot(x, rotation, precision=HIGHEST)
  codebooks = train_codebooks(k_final, x, m, iters, init=codebooks)
  return PQParams(codebooks=codebooks, rotation=rotation)


def product_quantizer(m: int, *, opq: bool = False, metric: str = 'ip', iters: int = 25,
                      opq_iters: int = 25, scoring: str = 'lut') -> Quantizer:
  """PQ with m bytes per vector as a Quantizer named 'pq<m>' / 'opq<m>'.

  ``scoring``: 'lut' (asymmetric distance tables, the classic ADC) or 'gemm' (decode each corpus
  block and multiply; equal scores up to float rounding, faster for batches of queries).

  Example: 256 4-d points, 2 sub-quantizers of 256 centroids each (as many as points): the
  2-byte codes read back almost exactly, and the ADC score of a query is its inner product with
  the decoded vector.

  >>> import numpy as np
  >>> x = np.random.default_rng(0).standard_normal((256, 4), dtype=np.float32)
  >>> pq2 = product_quantizer(2, iters=1)
  >>> params = pq2.fit(x)
  >>> codes = pq2.encode(params, x)
  >>> codes.shape, codes.dtype, pq2.bytes_per_vector(params)
  ((256, 2), dtype('uint8'), 2)
  >>> recon = np.asarray(pq2.decode(params, codes))
  >>> float(np.mean((recon - x) ** 2) / np.mean(x ** 2)) < 1e-3
  True
  >>> np.allclose(pq2.score(params, x[:3], codes), x[:3] @ recon.T, atol=1e-5)
  True
  """
  if scoring not in ('lut', 'gemm'):
    raise ValueError(f"scoring must be 'lut' or 'gemm', got {scoring!r}")
  if metric not in ('ip', 'l2'):
    raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")

  def fit_(calibration, key=None) -> PQParams:
    return fit(calibration, key, m=m, iters=iters, opq=opq, opq_iters=opq_iters)

  def prepare_query(params: PQParams, queries):
    if scoring == 'gemm':
      return _rotate(params, jnp.asarray(queries, jnp.float32))
    return distance_tables(params, queries, metric)

  score = lut_scores if scoring == 'lut' else (gemm_scores_ip if metric == 'ip' else gemm_scores_l2)

  def bytes_per_vector(params_or_dim) -> int:
    del params_or_dim  # m bytes whatever D is
    return m

  return Quantizer(name=f'{"opq" if opq else "pq"}{m}', fit=fit_, encode=encode, decode=decode,
                   score_prepared=score, bytes_per_vector=bytes_per_vector,
                   prepare_query=prepare_query)
