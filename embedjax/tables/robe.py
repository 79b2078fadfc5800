"""ROBE: random offset block embedding (Desai, Chou and Shrivastava, MLSys 2022; ROBE-Z).

Every table parameter lives in one shared float32 array of ``size`` entries, treated as a circle.
The D-wide vector of id ``i`` of field f is read as ``ceil(D / block)`` blocks of ``block``
consecutive entries: block j of global id ``g = offset[f] + i`` starts at
``hash_bucket(g, seed + j, size)`` and wraps around the end of the array; the blocks are
concatenated and cut to D, and each entry is multiplied by a hashed sign (ROBE-Z's g(x, i), as in
the benchmark's reference implementation): entry d of id g takes bit ``d mod 32`` of
``hash_u32(g, seed + SIGN_SEED + d // 32)``, so that what colliding ids add to one another is
zero-mean noise rather than a shared bias (``signed=False`` reads without it). Ids of every field
share the array, so frequent and rare ids, and
fields, compete for the same memory; a block (rather than one hash per entry, as HashedNets)
keeps reads contiguous and lets one block carry a whole vector's worth of correlated entries.
``block`` defaults to D (one block per vector, the paper's preferred large Z).

Bytes: ``size * 4``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from embedjax.tables import base

SIGN_SEED = 1 << 20  # the sign hashes' seeds, apart from the blocks' (seed + j, j < blocks)


def read_positions(ids, vocab_sizes: Sequence[int], dim: int, size: int, block: int, seed: int,
                   xp=jnp):
  """(B, F) local ids -> (B, F, D) int32 positions in the shared array (``xp``: jnp or np)."""
  gid = ids.astype(xp.int32) + xp.asarray(base.field_offsets(vocab_sizes))[None, :]
  blocks = base.ceil_div(dim, block)
  starts = xp.stack([base.hash_bucket(gid, seed + j, size, xp) for j in range(blocks)], axis=-1)
  pos = (starts[..., None] + xp.arange(block, dtype=starts.dtype)) % size  # (B, F, blocks, block)
  return pos.reshape(*gid.shape, blocks * block)[..., :dim].astype(xp.int32)


def read_signs(ids, vocab_sizes: Sequence[int], dim: int, seed: int, xp=jnp):
  """(B, F) local ids -> (B, F, D) float32 signs (+1 / -1) of the entries read."""
  gid = ids.astype(xp.int32) + xp.asarray(base.field_offsets(vocab_sizes))[None, :]
  words = xp.stack([base.hash_u32(gid, seed + SIGN_SEED + k, xp)
                    for k in range(base.ceil_div(dim, 32))], axis=-1)  # (B, F, ceil(D / 32))
  d = xp.arange(dim)
  bits = (words[..., d // 32] >> xp.asarray(d % 32, xp.uint32)) & xp.uint32(1)
  return (1.0 - 2.0 * bits.astype(xp.float32)).astype(xp.float32)


def robe(vocab_sizes: Sequence[int], dim: int, *, size: int, block: int | None = None,
         seed: int = 0, init_std: float = 0.01, signed: bool = True) -> base.Table:
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
    vectors = jnp.take(params['array'], read_positions(ids, vocab_sizes, dim, size, block, seed))
    return vectors * read_signs(ids, vocab_sizes, dim, seed) if signed else vectors

  return base.Table('robe', vocab_sizes, dim, init, lookup,
                    config={'size': size, 'block': block, 'seed': seed, 'init_std': init_std,
                            'signed': bool(signed)})


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, **kw) -> base.Table:
  """The largest array within the budget (never more entries than the full table has)."""
  size = min(int(budget_bytes) // 4, base.full_table_bytes(vocab_sizes, dim) // 4)
  block = kw.get('block') or dim
  if size < block:
    raise base.Infeasible(f'ROBE needs at least one block ({block} floats), budget {budget_bytes}')
  return robe(vocab_sizes, dim, size=size, **kw)
