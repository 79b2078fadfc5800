"""MGQE: multi-granular quantized embeddings (Kang et al., RecSys 2020), on DPQ.

Every id has a D-wide query vector while training; its D dims are cut into ``subspaces`` groups,
and each group is replaced by the nearest of ``codes`` centroids of that group's codebook
(product quantization learned end to end, DPQ-VQ). The output is the concatenated centroids;
the straight-through form ``q + e - stop_gradient(e)`` sends the task gradient both to the chosen
centroids and to the query vector. No auxiliary VQ loss is added (DPQ-VQ adds one to pull the
centroids and queries together; here the codes are always the current nearest centroids).

Multi-granular: ids are ranked by training frequency (``counts``); the ``tiers`` fractions of ids,
most frequent first, may use the first ``tier_codes[t]`` centroids of each codebook -- frequent ids
get more capacity, rare ids fewer bits. Without ``counts`` every id is in the first tier (DPQ).

Served (:meth:`finalize`): each id's code per subspace (its tier's ``log2(tier_codes[t])`` bits)
and the codebooks. Bytes: ``sum_t ids_t * ceil(subspaces * bits_t / 8)`` (codes bit-packed per id)
``+ codes * D * 4``, and where the tiers' codes differ in width, the map that finds an id's codes:
each id's tier (``ceil(log2 T)`` bits) and an int32 running byte offset every 64 ids (as OptEmbed's
rank index). The codes are held one byte each in memory here and counted packed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from embedjax.tables import base

FINALIZE_CHUNK = 1 << 16  # ids per nearest-centroid pass when serving: the (ids, M, K) distances
                          # of 2M ids at once would take 15 GiB (8 subspaces, 256 codes)
BLOCK = 64  # ids per running offset in the served tier map


def tiers_of(counts: np.ndarray | None, n: int, tiers: Sequence[float]) -> np.ndarray:
  """(N,) int tier of every id: the first ``tiers[0]`` fraction of ids by descending count (ties
  to the lower id) is tier 0, and so on; the last tier takes the rest."""
  if counts is None:
    return np.zeros(n, np.int32)
  counts = np.asarray(counts)
  if counts.shape != (n,):
    raise ValueError(f'counts {counts.shape} must be ({n},)')
  order = np.lexsort((np.arange(n), -counts))
  bounds = np.round(np.cumsum(tiers) * n).astype(np.int64)
  tier = np.empty(n, np.int32)
  tier[order] = np.searchsorted(bounds, np.arange(n), side='right').clip(0, len(tiers) - 1)
  return tier


def code_bytes(tier: np.ndarray, subspaces: int, tier_codes: Sequence[int]) -> int:
  """Bytes of the bit-packed codes, plus the tier map where ids' code widths differ."""
  bits = [math.ceil(math.log2(k)) for k in tier_codes]
  sizes = np.bincount(tier, minlength=len(tier_codes))
  width = [base.ceil_div(subspaces * b, 8) for b in bits]
  codes = int(sum(int(s) * w for s, w in zip(sizes, width)))
  if len({w for s, w in zip(sizes, width) if s}) <= 1:  # one width: id i's codes at i * width
    return codes
  n = len(tier)
  tier_bits = math.ceil(math.log2(len(tier_codes)))
  return codes + base.ceil_div(n * tier_bits, 8) + 4 * base.ceil_div(n, BLOCK)


def mgqe(vocab_sizes: Sequence[int], dim: int, *, subspaces: int, tier_codes: Sequence[int] = (256, 16),
         tiers: Sequence[float] = (0.1, 0.9), counts=None, init_std: float = 0.01) -> base.Table:
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  n = sum(vocab_sizes)
  tier_codes = tuple(int(k) for k in tier_codes)
  if dim % subspaces:
    raise ValueError(f'subspaces {subspaces} must divide dim {dim}')
  if len(tier_codes) != len(tiers) or not all(a >= b >= 2 for a, b in zip(tier_codes, tier_codes[1:] + (2,))):
    raise ValueError(f'tier_codes {tier_codes} must be one per tier, non-increasing, >= 2')
  if tier_codes[0] > 256:
    raise ValueError(f'at most 256 codes per codebook (one byte), got {tier_codes[0]}')
  tier = tiers_of(counts, n, tiers)
  allowed = jnp.asarray(np.asarray(tier_codes)[tier], jnp.int32)  # (N,) codes each id may use
  k, sub = tier_codes[0], dim // subspaces

  def init(key):
    ke, kc = jax.random.split(key)
    return {'embedding': base.normal_init(ke, (n, dim), init_std),
            'codebooks': base.normal_init(kc, (subspaces, k, sub), init_std)}

  def nearest(e, g, codebooks):
    """(..., D) queries of global ids g -> (..., M) codes among each id's allowed centroids."""
    parts = e.reshape(*e.shape[:-1], subspaces, sub)
    d = jnp.sum((parts[..., None, :] - codebooks) ** 2, axis=-1)  # (..., M, K)
    d = jnp.where(jnp.arange(k) < allowed[g][..., None, None], d, jnp.inf)
    return jnp.argmin(d, axis=-1)

  def decode(codebooks, codes):
    q = codebooks[jnp.arange(subspaces), codes]  # (..., M, sub)
    return q.reshape(*codes.shape[:-1], dim)

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    g = base.global_ids(ids, vocab_sizes)
    if 'codes' in params:  # served
      return decode(params['codebooks'], params['codes'][g].astype(jnp.int32))
    e = jnp.take(params['embedding'], g, axis=0)
    q = decode(params['codebooks'], jax.lax.stop_gradient(nearest(e, g, params['codebooks'])))
    return q + e - jax.lax.stop_gradient(e)

  @jax.jit
  def nearest_of(embedding, codebooks, g):
    return nearest(jnp.take(embedding, g, axis=0), g, codebooks).astype(jnp.uint8)

  def finalize(params):
    chunk = min(n, FINALIZE_CHUNK)
    g = np.arange(base.ceil_div(n, chunk) * chunk) % n  # the last chunk padded with ids 0, 1, ...
    emb, books = jnp.asarray(params['embedding']), jnp.asarray(params['codebooks'])  # copied once
    codes = [nearest_of(emb, books, jnp.asarray(g[i:i + chunk])) for i in range(0, len(g), chunk)]
    return {'codes': jnp.concatenate(codes)[:n], 'codebooks': params['codebooks']}

  def param_bytes(served):
    return code_bytes(tier, subspaces, tier_codes) + base.tree_bytes(served['codebooks'])

  return base.Table('mgqe', vocab_sizes, dim, init, lookup, param_bytes=param_bytes,
                    finalize=finalize,
                    config={'subspaces': subspaces, 'tier_codes': list(tier_codes),
                            'tiers': list(tiers), 'frequency_tiers': counts is not None,
                            'init_std': init_std})


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, *,
               tiers: Sequence[float] = (0.1, 0.9), counts=None, **kw) -> base.Table:
  """The most subspaces (dividing D) whose codes and codebooks fit, trying the code sizes
  (256, 16), (16, 4), (4, 2) per tier in that order."""
  n = int(sum(vocab_sizes))
  tier = tiers_of(counts, n, tiers)
  for tier_codes in ((256, 16), (16, 4), (4, 2)):
    codes = tier_codes[:len(tiers)] if len(tiers) <= 2 else tier_codes + (tier_codes[-1],) * (len(tiers) - 2)
    for m in sorted((m for m in range(1, dim + 1) if dim % m == 0), reverse=True):
      need = code_bytes(tier, m, codes) + codes[0] * dim * 4
      if need <= budget_bytes:
        return mgqe(vocab_sizes, dim, subspaces=m, tier_codes=codes, tiers=tiers, counts=counts, **kw)
  raise base.Infeasible(f'the smallest MGQE ({n} ids, 1 subspace, 4/2 codes) needs more than '
                        f'{budget_bytes} bytes')
