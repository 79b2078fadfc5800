"""Deep Hash Embedding (DHE, Kang et al., KDD 2021): no table, an MLP over a dense hash code.

Each (field, id) is encoded by ``k`` hash functions into buckets of a large range ``m`` and mapped
to uniform values in [-1, 1] (the paper's "uniform" encoding); an MLP ``k -> h -> ... -> D``
(ReLU; the paper's Mish and batch norm are left out) turns the code into the embedding. The
encoding needs no storage, so the bytes are the MLP's alone and do not grow with the vocabulary.

Bytes: ``4 * (k h + h + (layers - 1) (h h + h) + h D + D)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from embedjax.tables import base

HASH_RANGE = 1_000_000  # the paper's m = 1e6


def encode(ids, vocab_sizes: Sequence[int], num_hashes: int, seed: int, xp=jnp):
  """(B, F) local ids -> (B, F, k) float32 codes in [-1, 1], one hash function per column."""
  x = base.global_ids(ids, vocab_sizes) if xp is jnp else ids + base.field_offsets(vocab_sizes)[None]
  cols = [base.hash_bucket(x, seed * 7919 + j, HASH_RANGE, xp) for j in range(num_hashes)]
  codes = xp.stack(cols, axis=-1).astype(xp.float32)
  return codes * (2.0 / (HASH_RANGE - 1)) - 1.0


def dhe_bytes(num_hashes: int, hidden: int, layers: int, dim: int) -> int:
  return 4 * (num_hashes * hidden + hidden + (layers - 1) * (hidden * hidden + hidden) + hidden * dim + dim)


def dhe(vocab_sizes: Sequence[int], dim: int, *, hidden: int, num_hashes: int = 64, layers: int = 2,
        seed: int = 0, out_std: float = 0.05) -> base.Table:
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  widths = [num_hashes] + [hidden] * layers + [dim]

  def init(key):
    keys = jax.random.split(key, len(widths) - 1)
    # He init for the ReLU layers (unit-scale hidden units); the last layer scaled so that
    # embeddings start with std ~ out_std, like the tables' init.
    params = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
      std = (2.0 / a) ** 0.5 if i < len(widths) - 2 else out_std / a ** 0.5
      params[f'w{i}'] = base.normal_init(keys[i], (a, b), std)
      params[f'b{i}'] = jnp.zeros((b,), jnp.float32)
    return params

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    h = encode(ids, vocab_sizes, num_hashes, seed)
    n = len(widths) - 1
    for i in range(n):
      h = h @ params[f'w{i}'] + params[f'b{i}']
      if i < n - 1:
        h = jax.nn.relu(h)
    return h

  return base.Table('dhe', vocab_sizes, dim, init, lookup,
                    config={'hidden': hidden, 'num_hashes': num_hashes, 'layers': layers, 'seed': seed,
                            'out_std': out_std})


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, *, num_hashes: int = 64,
               layers: int = 2, max_hidden: int = 1024, **kw) -> base.Table:
  """The widest MLP that fits; with a small budget fewer hash functions and one hidden layer."""
  for k, l in ((num_hashes, layers), (num_hashes, 1), (num_hashes // 2, 1), (num_hashes // 4, 1)):
    h = base.largest_fitting(1, max_hidden, lambda h: dhe_bytes(k, h, l, dim) <= budget_bytes)
    if h is not None and h >= 4:
      return dhe(vocab_sizes, dim, hidden=h, num_hashes=k, layers=l, **kw)
  raise base.Infeasible(f'no DHE MLP of width >= 4 fits {budget_bytes} bytes')
