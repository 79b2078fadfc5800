"""OptEmbed (Lyu et al., CIKM 2022): row pruning with learnable thresholds + per-field dimension search.

Three stages, each a pure function here (the benchmark runs them in order):

1. **Supernet** (:func:`supernet`): a full (N, D) table plus one learnable threshold per field.
   Row i of field f is kept when ``mean|e_i| > t_f``; the step function's gradient is the
   long-tailed estimator of Liu et al. (ICLR 2020) that OptEmbed uses (2 - 4|x| near 0, 0.4 out to
   |x| = 1, 0 beyond). The regularizer ``alpha * sum_f exp(-t_f)`` pushes thresholds up (more
   pruning) against the loss. While training (``key`` given) each field's width is sampled
   uniformly from ``dim_choices`` per step and the trailing dims are zeroed, so one supernet
   trains every per-field width at once.
2. **Search** (:func:`evolutionary_search`): per-field widths chosen by a small evolutionary search
   that scores candidates on held-out data with the supernet's weights. To meet a byte budget (the
   paper has none; the benchmark needs one) rows beyond the learned keep set are dropped by
   smallest magnitude (:func:`budget_keep`) until the candidate fits.
3. **Retrain** (:func:`fixed`): a fresh table trained with the found row mask and widths fixed.
   :meth:`finalize` compacts it to what is served: per field a (kept_f, d_f) float32 block, a
   bitmap of kept rows (ceil(N / 8) bytes), an int32 running count every 64 rows and one int32
   start per field; a row's position is rank(bitmap) computed from those. Pruned rows read as 0.

Bytes (served): ``4 sum_f kept_f d_f + ceil(N/8) + 4 ceil(N/64) + 4 F``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from embedjax.tables import base

BLOCK = 64  # rows per running count in the served rank index


@jax.custom_jvp
def long_tail_step(x: jax.Array) -> jax.Array:
  """Heaviside step (x > 0) with the long-tailed surrogate gradient."""
  return (x > 0).astype(x.dtype)


@long_tail_step.defjvp
def _long_tail_step_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  a = jnp.abs(x)
  grad = jnp.where(a <= 0.4, 2.0 - 4.0 * a, jnp.where(a <= 1.0, 0.4, 0.0))
  return long_tail_step(x), grad * dx


def default_dim_choices(dim: int) -> tuple[int, ...]:
  """Powers of two up to D, plus D: e.g. 16 -> (1, 2, 4, 8, 16)."""
  out = sorted({2 ** i for i in range(int(np.log2(dim)) + 1)} | {dim})
  return tuple(out)


def _field_of_row(vocab_sizes: Sequence[int]) -> np.ndarray:
  return np.repeat(np.arange(len(vocab_sizes), dtype=np.int32), vocab_sizes)


def supernet(vocab_sizes: Sequence[int], dim: int, *, alpha: float = 1e-4,
             dim_choices: Sequence[int] | None = None, init_std: float = 0.01,
             threshold_scale: float = 100.0) -> base.Table:
  """Stage 1. ``threshold_scale`` multiplies (|e| - t) before the step so that the surrogate's
  window (|x| <= 1) spans the scale of embedding magnitudes (~0.01) rather than 1.

  Bytes: the supernet is not served; its ``param_bytes`` counts the full table plus thresholds.
  """
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  n = sum(vocab_sizes)
  choices = jnp.asarray(dim_choices or default_dim_choices(dim), jnp.int32)
  num_fields = len(vocab_sizes)

  def init(key):
    return {'embedding': base.normal_init(key, (n, dim), init_std),
            'threshold': jnp.zeros((num_fields,), jnp.float32)}

  def lookup(params, ids, key=None):
    base.check_ids(ids, vocab_sizes)
    e = jnp.take(params['embedding'], base.global_ids(ids, vocab_sizes), axis=0)  # (B, F, D)
    norm = jnp.mean(jnp.abs(e), axis=-1)
    mask = long_tail_step(threshold_scale * (norm - params['threshold'][None, :]))
    e = e * mask[..., None]
    if key is not None:
      d = jax.random.choice(key, choices, (num_fields,))
      e = e * (jnp.arange(dim)[None, :] < d[:, None])[None]
    return e

  def regularizer(params):
    return alpha * jnp.sum(jnp.exp(-params['threshold']))

  return base.Table('optembed', vocab_sizes, dim, init, lookup, regularizer=regularizer,
                    config={'stage': 'supernet', 'alpha': alpha, 'dim_choices': [int(c) for c in choices],
                            'threshold_scale': threshold_scale, 'init_std': init_std})


def learned_keep(params, vocab_sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """(keep (N,) bool by the learned thresholds, norms (N,) float32 mean|e| of every row)."""
  emb = np.asarray(params['embedding'])
  norms = np.abs(emb).mean(axis=1)
  t = np.asarray(params['threshold'])[_field_of_row(vocab_sizes)]
  return norms > t, norms


def served_bytes(vocab_sizes: Sequence[int], keep: np.ndarray, dims: Sequence[int]) -> int:
  n = int(sum(vocab_sizes))
  kept = np.add.reduceat(keep.astype(np.int64), base.field_offsets(vocab_sizes)) if n else []
  rows = sum(int(k) * int(d) for k, d in zip(kept, dims)) * 4
  return rows + base.ceil_div(n, 8) + 4 * base.ceil_div(n, BLOCK) + 4 * len(vocab_sizes)


def budget_keep(vocab_sizes: Sequence[int], keep: np.ndarray, norms: np.ndarray, dims: Sequence[int],
                budget_bytes: int) -> np.ndarray | None:
  """``keep`` further pruned by smallest row magnitude until the served bytes fit; None if even
  dropping every row does not fit (the index overhead alone exceeds the budget)."""
  overhead = served_bytes(vocab_sizes, np.zeros_like(keep), dims)
  if overhead > budget_bytes:
    return None
  row_bytes = 4 * np.asarray(dims, np.int64)[_field_of_row(vocab_sizes)]
  candidates = np.flatnonzero(keep)
  order = candidates[np.argsort(-norms[candidates], kind='stable')]
  fit = np.cumsum(row_bytes[order]) <= budget_bytes - overhead
  out = np.zeros_like(keep)
  out[order[fit]] = True  # row_bytes > 0, so the fitting prefix is contiguous
  return out


def evolutionary_search(score: Callable[[tuple[int, ...]], float], num_fields: int,
                        dim_choices: Sequence[int], *, seed: int = 0, population: int = 12,
                        generations: int = 4, parents: int = 4,
                        mutate_prob: float = 0.1) -> tuple[tuple[int, ...], float, list[dict]]:
  """Maximises ``score(dims)`` over per-field widths; returns (best, its score, the history).

  Deterministic from ``seed``. Candidates start uniform at random plus the all-max candidate;
  each generation keeps the top ``parents`` and fills the rest by uniform crossover of two parents
  and per-field mutation.
  """
  rng = np.random.default_rng(seed)
  choices = np.asarray(dim_choices)
  pop = [tuple([int(choices[-1])] * num_fields)]
  while len(pop) < population:
    pop.append(tuple(int(c) for c in rng.choice(choices, num_fields)))
  cache: dict[tuple[int, ...], float] = {}
  history = []
  for g in range(generations):
    for cand in pop:
      if cand not in cache:
        cache[cand] = float(score(cand))
        history.append({'generation': g, 'dims': list(cand), 'score': cache[cand]})
    ranked = sorted(set(pop), key=lambda c: -cache[c])[:parents]
    if g == generations - 1:
      break
    children = list(ranked)
    while len(children) < population:
      a, b = rng.choice(len(ranked), 2)
      pick = rng.random(num_fields) < 0.5
      child = np.where(pick, ranked[a], ranked[b])
      mutate = rng.random(num_fields) < mutate_prob
      child = np.where(mutate, rng.choice(choices, num_fields), child)
      children.append(tuple(int(c) for c in child))
    pop = children
  best = max(cache, key=cache.get)
  return best, cache[best], history


def _popcount8(x: jax.Array) -> jax.Array:
  return jax.lax.population_count(x).astype(jnp.int32)


def compact(embedding: np.ndarray, vocab_sizes: Sequence[int], keep: np.ndarray,
            dims: Sequence[int]) -> dict:
  """The served form of a fixed table (see the module docstring)."""
  embedding = np.asarray(embedding)
  n = embedding.shape[0]
  offsets = base.field_offsets(vocab_sizes)
  bits = np.packbits(keep.astype(np.uint8), bitorder='little')
  counts = np.concatenate([[0], np.cumsum(keep)])
  blocks = counts[np.arange(0, n, BLOCK)].astype(np.int32)
  served = {'bitmap': jnp.asarray(bits), 'block_counts': jnp.asarray(blocks),
            'field_starts': jnp.asarray(counts[offsets].astype(np.int32))}
  for f, (o, v, d) in enumerate(zip(offsets, vocab_sizes, dims)):
    rows = np.flatnonzero(keep[o:o + v]) + o
    # At least one row so every field has an array to gather from; a kept count of 0 is recorded
    # by the index, and the placeholder row is zero and never read as kept.
    block = embedding[rows, :d] if len(rows) else np.zeros((1, d), np.float32)
    served[f'field{f}'] = jnp.asarray(block, jnp.float32)
  return served


def _served_rows(served, gid: jax.Array, vocab_sizes: Sequence[int], dim: int) -> jax.Array:
  bitmap, blocks = served['bitmap'], served['block_counts']
  byte = gid >> 3
  kept = (jnp.take(bitmap, byte) >> (gid & 7).astype(jnp.uint8)) & 1
  # rank(gid) = running count at its block + ones in the block's bytes before its byte + ones in
  # its byte below its bit.
  first = (gid >> 6) << 3
  within = jnp.zeros_like(gid)
  for j in range(BLOCK // 8):
    b = jnp.take(bitmap, jnp.minimum(first + j, bitmap.shape[0] - 1))
    within += jnp.where(first + j < byte, _popcount8(b), 0)
  below = jnp.take(bitmap, byte) & ((jnp.left_shift(1, (gid & 7)) - 1).astype(jnp.uint8))
  rank = jnp.take(blocks, gid >> 6) + within + _popcount8(below)
  cols = []
  for f, d in enumerate(served_dims(served, len(vocab_sizes))):
    local = rank[:, f] - served['field_starts'][f]
    block = served[f'field{f}']
    e = jnp.take(block, jnp.clip(local, 0, block.shape[0] - 1), axis=0)
    e = jnp.where(kept[:, f, None] == 1, e, 0.0)
    cols.append(jnp.pad(e, ((0, 0), (0, dim - d))))
  return jnp.stack(cols, axis=1)


def served_dims(served, num_fields: int) -> list[int]:
  return [served[f'field{f}'].shape[1] for f in range(num_fields)]


def dims_mask(dims: Sequence[int], dim: int) -> np.ndarray:
  """(F, D) float32: 1 on the first d_f columns of field f."""
  return (np.arange(dim)[None, :] < np.asarray(dims)[:, None]).astype(np.float32)


def masked_lookup(embedding: jax.Array, ids: jax.Array, vocab_sizes: Sequence[int], keep: jax.Array,
                  dim_mask: jax.Array) -> jax.Array:
  """Rows of ``embedding`` (N, D) with pruned rows (``keep`` (N,) 0/1) and trailing dims
  (``dim_mask`` (F, D)) zeroed: the retrain-stage view, with the masks as *arguments* so a search
  can score many candidates with one compiled function."""
  gid = base.global_ids(ids, vocab_sizes)
  e = jnp.take(embedding, gid, axis=0)
  return e * jnp.take(keep, gid)[..., None] * dim_mask[None]


def fixed(vocab_sizes: Sequence[int], dim: int, *, keep: np.ndarray, dims: Sequence[int],
          init_std: float = 0.01) -> base.Table:
  """Stage 3: retrain with the row mask ``keep`` (N,) and widths ``dims`` (F,) fixed."""
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  n = sum(vocab_sizes)
  keep = np.asarray(keep, bool)
  dims = tuple(int(d) for d in dims)
  if keep.shape != (n,):
    raise ValueError(f'keep must have shape ({n},), got {keep.shape}')
  dim_mask = dims_mask(dims, dim)

  def init(key):
    return {'embedding': base.normal_init(key, (n, dim), init_std)}

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    if 'bitmap' in params:
      return _served_rows(params, base.global_ids(ids, vocab_sizes), vocab_sizes, dim)
    return masked_lookup(params['embedding'], ids, vocab_sizes, jnp.asarray(keep, jnp.float32),
                         jnp.asarray(dim_mask))

  def finalize(params):
    if 'bitmap' in params:
      return params
    return compact(params['embedding'], vocab_sizes, keep, dims)

  def param_bytes(served):
    if 'bitmap' not in served:
      raise ValueError('param_bytes counts the served form: call finalize first')
    # Placeholder rows of fields with nothing kept are never read and not counted.
    total = 0
    for name, x in served.items():
      if name.startswith('field') and name[len('field'):].isdigit():
        f = int(name[len('field'):])
        o, v = base.field_offsets(vocab_sizes)[f], vocab_sizes[f]
        total += int(keep[o:o + v].sum()) * x.shape[1] * 4
      else:
        total += base.tree_bytes(x)
    return total

  return base.Table('optembed', vocab_sizes, dim, init, lookup, param_bytes=param_bytes,
                    finalize=finalize,
                    config={'stage': 'retrain', 'dims': list(dims), 'kept_rows': int(keep.sum()),
                            'init_std': init_std})


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, **kw) -> base.Table:
  """The stage-1 supernet; the budget is enforced at stage 2 (see :func:`budget_keep`)."""
  need = served_bytes(vocab_sizes, np.zeros(int(sum(vocab_sizes)), bool), [1] * len(vocab_sizes))
  if need > budget_bytes:
    raise base.Infeasible(f'the row index alone needs {need} bytes > {budget_bytes}')
  table = supernet(vocab_sizes, dim, **kw)
  return base.Table(table.name, table.vocab_sizes, table.dim, table.init, table.lookup,
                    regularizer=table.regularizer,
                    config={**table.config, 'budget_bytes': int(budget_bytes)})
