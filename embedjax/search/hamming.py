"""Exact Hamming top-k over packed binary codes (smallest distances first), blocked.

Codes are packed bits as ``np.packbits(x > 0, axis=-1)`` makes them (uint8), or
sentence-transformers' int8 'binary' codes (packed - 128, same distances).

Two exact ways to compute the distances, chosen by ``method``:
  * 'popcount' (default): XOR + popcount on uint32 words. The (B, block) distances are
    accumulated one word at a time, so each step is an elementwise pass over a (B, block) array
    that XLA vectorises along the corpus rows (AVX2 has no vector popcount, yet LLVM's byte-table
    popcount still beats the GEMM below on CPUs; measurements: BENCHMARKS.md).
  * 'matmul': with s, t the +-1 forms of the bit vectors over all 8W bits,
    hamming = (8W - s . t) / 2. Zero padding bits are equal in both operands and add nothing.
    The GEMM runs in float32 on integers of magnitude <= 8W, which is exact for 8W < 2^24. It
    does 2 x 8W flops per pair, but on GPUs/TPUs they run on the matrix units.

Ties (equal distances) are ordered by increasing corpus index.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from embedjax.ops import as_uint8, bytes_to_words, unpack_signs
from embedjax.search.exact import topk_blocked_by

_EXACT_BITS = 1 << 24


def _signs(packed: jax.Array) -> jax.Array:
  """(N, W) uint8 -> (N, 8W) float32 +-1 over all bits (padding included)."""
  return unpack_signs(packed, 8 * packed.shape[-1])


def _matmul_scores(aux, query_signs, rows):
  """(B, 8W) +-1 float32 x (block, W) uint8 -> (B, block) s . t (= 8W - 2 hamming)."""
  del aux
  return jnp.dot(query_signs, _signs(rows).T, precision=jax.lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32)


def _popcount_scores(aux, query_words, rows):
  """(B, words) uint32 x (block, W) uint8 -> (B, block) negated Hamming distances."""
  del aux
  words = bytes_to_words(rows).T  # (words, block): each word is a contiguous row
  dist = jax.lax.population_count(query_words[:, 0, None] ^ words[None, 0, :])
  for w in range(1, query_words.shape[1]):  # static: W / 4 words (12 for 384 bits)
    dist = dist + jax.lax.population_count(query_words[:, w, None] ^ words[None, w, :])
  return -dist.astype(jnp.float32)


def hamming_topk(query_codes, corpus_codes, k: int, *, method: str = 'popcount',
                 block_size: int | None = None, query_block: int | None = None
                 ) -> tuple[jax.Array, jax.Array]:
  """The k nearest corpus codes in Hamming distance for every query code.

  Args:
    query_codes: (Q, W) packed bits, uint8 or int8 (sentence-transformers 'binary').
    corpus_codes: (N, W) packed bits of the same width and kind.
    k: neighbours per query (clamped to N).
    method: 'popcount' or 'matmul' (see the module docstring); same results.
    block_size, query_block: corpus rows / queries per step (None: the defaults of
      ``embedjax.search.exact.plan``).

  Returns:
    distances (Q, min(k, N)) int32 ascending and indices (Q, min(k, N)) int32; ties by index.
  """
  q = as_uint8(query_codes)
  c = as_uint8(corpus_codes)
  if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
    raise ValueError(f'codes must be (Q, W) and (N, W), got {q.shape} and {c.shape}')
  bits = 8 * q.shape[1]
  if method == 'matmul':
    if bits >= _EXACT_BITS:
      raise ValueError(f'{bits} bits is too wide for exact float32 matmul; use popcount')
    scores, idx = topk_blocked_by(_matmul_scores, _signs(q), c, k, block_size=block_size,
                                  query_block=query_block)
    return ((bits - scores) / 2).astype(jnp.int32), idx
  if method == 'popcount':
    scores, idx = topk_blocked_by(_popcount_scores, bytes_to_words(q), c, k, block_size=block_size,
                                  query_block=query_block)
    return (-scores).astype(jnp.int32), idx
  raise ValueError(f"method must be 'matmul' or 'popcount', got {method!r}")
