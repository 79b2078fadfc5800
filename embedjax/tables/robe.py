"""ROBE: random offset block embedding (Desai, Chou and Shrivastava, MLSys 2022; ROBE-Z).

Every table parameter lives in one shared float32 array of ``size`` entries, treated as a circle.
The D-wide vector of id ``i`` of field f is read as ``ceil(D / block)`` blocks of ``block``
consecutive entries: block j of global id ``g = offset[f] + i`` starts at
``hash_bucket(g, seed + j, size)`` and wraps around the end of the array; the blocks are
concatenated and cut to D. Ids of every field share the array, so frequent and rare ids, and
fields, compete for the same memory; a block (rather than one hash per entry, as HashedNets)
keeps reads contiguous and lets one block carry a whole vector's worth of correlated entries.
``block`` defaults to D (one block per vector, the paper's preferred large Z).

Bytes: ``size * 4``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from embedjax.tables import base


def read_positions(ids, vocab_sizes: Sequence[int], dim: int, size: int, block: int, seed: int,
                   xp=jnp):
  """(B, F) local ids -> (B, F, D) int32 positions in the shared array (``xp``: jnp or np)."""
  gid = ids.astype(xp.int32) + xp.asarray(base.field_offsets(vocab_sizes))[None, :]
  blocks = base.ceil_div(dim, block)
  starts = xp.stack([base.hash_bucket(gid, seed + j, size, xp) for j in range(blocks)], axis=-1)
  pos = (starts[..., None] + xp.arange(block, dtype=starts.dtype)) % size  # (B, F, blocks, block)
  return pos.reshape(*gid.shape, blocks * block)[..., :dim].astype(xp.int32)


def robe(vocab_sizes: Sequence[int], dim: int, *, size: int, block: int | None = None,
         seed: int = 0, init_std: float = 0.01) -> base.Table:
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  block = dim if block is None else int(block)
  if not 1 <= block:
    raise ValueError(f'block must be >= 1, got {block}')
  if not block <= size < 2 ** 31 - block:  # start + offset must stay an int32
    raise ValueError(f'size must be in [block={block}, 2**31 - block), got {size}')

  def init(key):
    return {'array': base.normal_init(key, (size,), init_std)}

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    return jnp.take(params['array'], read_positions(ids, vocab_sizes, dim, size, block, seed))

  return base.Table('robe', vocab_sizes, dim, init, lookup,
                    config={'size': size, 'block': block, 'seed': seed, 'init_std': init_std})


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, **kw) -> base.Table:
  """The largest array within the budget (never more entries than the full table has)."""
  size = min(int(budget_bytes) // 4, base.full_table_bytes(vocab_sizes, dim) // 4)
  block = kw.get('block') or dim
  if size < block:
    raise base.Infeasible(f'ROBE needs at least one block ({block} floats), budget {budget_bytes}')
  return robe(vocab_sizes, dim, size=size, **kw)
