"""Deduplication: blocks of rows whose trained vectors are near-identical share one stored block.

Following Zhou et al., "Serving Deep Learning Models with Deduplication from Relational
Databases" (VLDB 2022), as the storage-compression benchmark (Zhang et al., VLDB 2024) runs it:

1. pre-train the full table (``full``);
2. :func:`deduplicate`: cut the concatenated (N, D) table into blocks of ``rows_per_block`` rows
   (the last zero-padded); visit the blocks in ascending order of their 75th-percentile value;
   each block is first looked up in an L2 LSH index (E2LSH: ``num_tables`` hashes
   ``floor((a . x + b) / width)``, a ~ N(0, I), b ~ U(0, width); candidates are the blocks already
   visited that share a bucket in any table, at most ``max_candidates``) and then inserted; among the candidates, the
   one with the largest share of entries within ``tolerance`` of the block's is chosen when that
   share is at least ``similarity``, and the block becomes a reference to it. Visiting stops once
   enough blocks are references to fit the byte budget (:func:`deduplicate_to_budget` raises the
   tolerance step by step when too few blocks are that close);
3. fine-tune the ``shared`` table: the distinct blocks as parameters, the block map fixed, so the
   rows sharing a block are trained together.

With ``tolerance = 0`` and ``similarity = 1`` only identical blocks are shared: a table without
repeated blocks is left as it is, and identical blocks are stored once.

Bytes of the served table: ``P * rows_per_block * D * 4`` for the P distinct blocks, plus the
block map, one id per block of the full table at the narrowest unsigned width holding P - 1
(1, 2 or 4 bytes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from embedjax.tables import base


def map_itemsize(num_blocks: int) -> int:
  """Bytes of one block id when ids go up to ``num_blocks - 1``."""
  return 1 if num_blocks <= 1 << 8 else 2 if num_blocks <= 1 << 16 else 4


def served_bytes(num_blocks: int, distinct: int, rows_per_block: int, dim: int) -> int:
  return distinct * rows_per_block * dim * 4 + num_blocks * map_itemsize(distinct)


def blocks_needed(num_blocks: int, rows_per_block: int, dim: int, budget_bytes: int) -> int | None:
  """The most distinct blocks whose served table fits ``budget_bytes`` (None: not even one)."""
  return base.largest_fitting(1, num_blocks, lambda p: served_bytes(num_blocks, p, rows_per_block,
                                                                    dim) <= budget_bytes)


class _L2LSH:
  """E2LSH with one hash per table: bucket ``floor((a . x + b) / width)`` in each of L tables."""

  def __init__(self, dim: int, num_tables: int, width: float, seed: int):
    rng = np.random.default_rng(seed)
    self.a = rng.standard_normal((dim, num_tables))
    self.b = rng.uniform(0.0, width, num_tables)
    self.width = width
    self.tables: list[dict[int, list[int]]] = [{} for _ in range(num_tables)]

  def keys(self, x: np.ndarray) -> np.ndarray:
    """(M, dim) -> (M, L) int64 buckets."""
    return np.floor((x.astype(np.float64) @ self.a + self.b) / self.width).astype(np.int64)

  def query_insert(self, keys: np.ndarray, item: int, limit: int) -> list[int]:
    """Items sharing a bucket with ``keys`` in any table (at most ``limit`` per bucket, the
    latest inserted), then inserts ``item``."""
    found: set[int] = set()
    for table, key in zip(self.tables, keys):
      bucket = table.setdefault(int(key), [])
      found.update(bucket[-limit:])
      bucket.append(item)
    return sorted(found)


def _blocks(embedding, rows_per_block: int):
  """(N, D) -> ((num_blocks, R * D) blocks, the last zero-padded; (R * D,) bool: the entries of
  the last block that are not padding; ``padded(i, cands)``: whether a comparison of block i with
  its candidates involves the padded block)."""
  emb = np.asarray(embedding, np.float32)
  n, d = emb.shape
  pad = -n % rows_per_block
  blocks = np.concatenate([emb, np.zeros((pad, d), np.float32)]).reshape(-1, rows_per_block * d)
  real = np.ones(blocks.shape[1], bool)
  real[blocks.shape[1] - pad * d:] = False
  last = len(blocks) - 1
  return blocks, real, lambda i, cands: bool(pad) and (i == last or bool((cands == last).any()))


def _candidates(blocks: np.ndarray, num_tables: int, width: float, max_candidates: int, seed: int):
  """Yields (block, its candidates (C,) int64) in visiting order (ascending 75th percentile):
  the blocks visited before it that share an LSH bucket, at most ``max_candidates``, the ones
  visited last. Each block is inserted when visited; the candidates do not depend on the
  tolerance."""
  lsh = _L2LSH(blocks.shape[1], num_tables, width, seed)
  keys = lsh.keys(blocks)
  order = np.argsort(np.percentile(blocks, 75, axis=1), kind='stable')
  visit = np.empty(len(blocks), np.int64)
  visit[order] = np.arange(len(blocks))
  for i in order:
    cands = np.asarray(lsh.query_insert(keys[i], int(i), max_candidates), np.int64)
    if cands.size > max_candidates:
      cands = cands[np.argsort(-visit[cands], kind='stable')[:max_candidates]]
    yield int(i), cands


def merge_tolerances(embedding, rows_per_block: int, *, similarity: float = 0.7,
                     num_tables: int = 90, width: float = 0.09, max_candidates: int = 256,
                     seed: int = 0) -> np.ndarray:
  """(num_blocks,) the smallest tolerance at which :func:`deduplicate` (same settings) would make
  each block a reference, inf where no candidate can be: the smallest, over its candidates, of
  the ``q``-th smallest entry distance, q the fewest entries within tolerance that reach
  ``similarity``. One pass over the blocks answers every tolerance: at tolerance t, deduplicate
  makes references of exactly the blocks with ``merge_tolerances <= t`` (until it has enough)."""
  blocks, real, padded = _blocks(embedding, rows_per_block)
  out = np.full(len(blocks), np.inf)
  for i, cands in _candidates(blocks, num_tables, width, max_candidates, seed):
    if cands.size == 0:
      continue
    diff = np.abs(blocks[cands] - blocks[i])
    diff[np.isnan(diff)] = np.inf  # never within a tolerance, as in deduplicate's comparison
    if padded(i, cands):
      diff = diff[:, real]
    m = diff.shape[1]
    q = math.ceil(similarity * m)  # the fewest entries c with c / m >= similarity, as compared
    while q > 0 and (q - 1) / m >= similarity:
      q -= 1
    while q <= m and q / m < similarity:
      q += 1
    if q > m:
      continue
    if q == 0:
      out[i] = 0.0
      continue
    out[i] = float(np.partition(diff, q - 1, axis=1)[:, q - 1].min())
  return out


def deduplicate(embedding, rows_per_block: int, max_blocks: int, *, tolerance: float = 0.01,
                similarity: float = 0.7, num_tables: int = 90, width: float = 0.09,
                max_candidates: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(N, D) trained table -> (distinct blocks (P, rows_per_block, D), block map (num_blocks,)
  int32) with P <= ``max_blocks`` when enough near-duplicates exist (the caller checks P).

  Defaults are the benchmark's (tolerance 0.01, similarity 0.7, 90 tables of width 0.09). One
  departure, for scale: a block is compared with at most ``max_candidates`` candidates, the ones
  visited last (closest in the visiting order); the reference compares with every candidate,
  which is quadratic when many rows sit near their initial values in the same buckets.
  """
  blocks, real, padded = _blocks(embedding, rows_per_block)
  num_blocks, d = len(blocks), np.asarray(embedding).shape[1]
  want = max(0, num_blocks - max_blocks)  # references needed
  ref = np.arange(num_blocks)
  if want:
    made = 0
    for i, cands in _candidates(blocks, num_tables, width, max_candidates, seed):
      if cands.size == 0:
        continue
      entries = real if padded(i, cands) else slice(None)  # a padded block: its real rows only
      close = np.abs(blocks[cands] - blocks[i]) <= np.float32(tolerance)  # float32, as the table
      share = close[:, entries].mean(axis=1)
      share = np.where(share >= similarity, share, -1.0)
      if share.max() >= 0:
        # the most similar; ties to the lowest block id (the reference's first found)
        best = int(cands[np.lexsort((cands, -share))[0]])
        ref[i] = ref[best]  # ``best`` was visited earlier: its own reference is final
        made += 1
        if made >= want:
          break
  distinct, block_map = np.unique(ref, return_inverse=True)
  return blocks[distinct].reshape(-1, rows_per_block, d), block_map.astype(np.int32)


def deduplicate_to_budget(embedding, rows_per_block: int, max_blocks: int, *,
                          tolerance: float = 0.01, growth: float = 2.0, attempts: int = 12,
                          **kw) -> tuple[np.ndarray, np.ndarray, float]:
  """:func:`deduplicate` at ``tolerance``, then at ``tolerance * growth``, ``* growth**2``, ...
  until the distinct blocks fit ``max_blocks``; returns (blocks, block map, the tolerance used).

  The benchmark's dedup stops at a fixed tolerance and fails when too few blocks are that close
  (trained tables whose every id was seen rarely have any); raising the tolerance until the budget
  is met gives dedup a point at every budget, at the stated cost of merging less similar blocks.
  The last attempt's result is returned even when it does not fit (the caller checks).

  The tolerance is chosen from one pass (:func:`merge_tolerances`: the first of the series at
  which enough blocks would become references), then :func:`deduplicate` runs once at it: the
  result of trying each tolerance in turn, in two passes over the blocks instead of up to
  ``attempts`` (a failed attempt is a pass over every block).
  """
  num_blocks = math.ceil(np.asarray(embedding).shape[0] / rows_per_block)
  want = max(0, num_blocks - max_blocks)
  series = [tolerance * growth ** attempt for attempt in range(attempts)]
  tol = series[0]
  if want:
    merge = np.sort(merge_tolerances(embedding, rows_per_block, **kw))
    tol = next((t for t in series if merge[want - 1] <= np.float32(t)), series[-1])
  blocks, block_map = deduplicate(embedding, rows_per_block, max_blocks, tolerance=tol, **kw)
  return blocks, block_map, tol


def shared(vocab_sizes: Sequence[int], dim: int, *, blocks, block_map,
           rows_per_block: int) -> base.Table:
  """The deduplicated table: ``blocks`` (P, rows_per_block, D) initialise the parameters (the
  pre-trained, deduplicated values); row g reads ``blocks[block_map[g // R], g % R]``."""
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  blocks = np.asarray(blocks, np.float32)
  block_map = np.asarray(block_map, np.int32)
  num_blocks = math.ceil(sum(vocab_sizes) / rows_per_block)
  if block_map.shape != (num_blocks,) or blocks.shape[1:] != (rows_per_block, dim):
    raise ValueError(f'block_map {block_map.shape} / blocks {blocks.shape} do not fit '
                     f'{num_blocks} blocks of {rows_per_block} x {dim}')
  if block_map.min() < 0 or block_map.max() >= len(blocks):
    raise ValueError(f'block_map refers outside the {len(blocks)} blocks')
  distinct = len(blocks)

  def init(key):
    del key  # the deduplicated pre-trained blocks
    return {'blocks': jnp.asarray(blocks)}

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    g = base.global_ids(ids, vocab_sizes)
    return params['blocks'][jnp.asarray(block_map)[g // rows_per_block], g % rows_per_block]

  def param_bytes(served):
    return base.tree_bytes(served) + num_blocks * map_itemsize(distinct)

  return base.Table('dedup', vocab_sizes, dim, init, lookup, param_bytes=param_bytes,
                    config={'rows_per_block': rows_per_block, 'blocks': num_blocks,
                            'distinct_blocks': distinct})


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, *,
               rows_per_block: int = 4, **kw) -> base.Table:
  """Stage 1, the full table to pre-train; the budget is met at deduplication (its config keeps
  the budget and the block count to reach)."""
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  num_blocks = math.ceil(sum(vocab_sizes) / rows_per_block)
  most = blocks_needed(num_blocks, rows_per_block, dim, budget_bytes)
  if most is None:
    raise base.Infeasible(f'the block map alone ({num_blocks} blocks of {rows_per_block} rows) '
                          f'and one block need more than {budget_bytes} bytes')
  table = base.full(vocab_sizes, dim)
  return base.Table('dedup', vocab_sizes, dim, table.init, table.lookup, row_reads=table.row_reads,
                    config={**table.config, 'budget_bytes': int(budget_bytes),
                            'rows_per_block': rows_per_block, 'max_blocks': most,
                            'dedup': dict(kw)})
