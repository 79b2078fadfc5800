"""Online hard-negative mixing: synthetic negatives interpolated from each query's hardest ones.

KaLM-Embedding-V2 (Zhao et al. 2025, arXiv 2506.20923) fine-tunes with "online hard-negative
mixing": extra hard negatives synthesised in embedding space from the hardest real ones, every
step, instead of mining more offline. Its exact formula could not be read from a primary source
here, so this module implements MoCHi's (Kalantidis et al. 2020, "Hard Negative Mixing for
Contrastive Learning"), the mixing it builds on; read results as "mixing of this form".

For query q_i, the candidate negatives are every document of the batch in ``info_nce``'s column
order (the B positives, then negative 1 of every row, negative 2 ...) except its own positive, the
in-batch duplicates of it (``doc_ids``) and, with ``false_negative_ratio``, those ``info_nce``
masks as false negatives. Let n_1 .. n_k be the k = ``n_hardest`` candidates most similar to q_i.
Then, with a, b, c drawn uniformly from 1..k:

  h_m  = normalize(alpha_m n_a + (1 - alpha_m) n_b),  alpha_m ~ U(0, 1),    m = 1 .. s
  h'_m = normalize(beta_m q_i + (1 - beta_m) n_c),    beta_m ~ U(0, 0.5),   m = 1 .. s'

(s = ``n_synthetic``; s' = ``n_query_mixed``, MoCHi's query mixing: beta < 0.5 keeps the query's
share the smaller one). The synthetic negatives carry no gradient (MoCHi's choice: they are
targets to push away from, not embeddings to move). They join the batch as extra hard negatives of
row i, after its mined ones, so every loss that takes hard negatives can use them. As with mined
negatives (sentence-transformers' convention), every query sees them as negatives, not only q_i;
for q_i they are the hardest.

Under Matryoshka and layer-elastic losses the mixing runs inside them, per truncated dimension and
per layer, on the embeddings that loss compares.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from embedjax.losses.contrastive import SIMILARITIES
from embedjax.ops import l2_normalize

QUERY_MIX_MAX = 0.5  # MoCHi: beta ~ U(0, 0.5), so the query's share stays below the negative's


class MixChoices(NamedTuple):
  """The random choices of one mixing step (B queries).

  pairs: (B, s, 2) int32 ranks (0 = hardest) of the two negatives mixed into each h_m.
  alpha: (B, s) float32 weight of the first of them.
  query_pick: (B, s') int32 rank of the negative mixed with the query into each h'_m.
  beta: (B, s') float32 weight of the query.
  """
  pairs: jax.Array
  alpha: jax.Array
  query_pick: jax.Array
  beta: jax.Array


def draw_choices(key: jax.Array, batch: int, *, n_hardest: int, n_synthetic: int,
                 n_query_mixed: int = 0) -> MixChoices:
  """The random choices ``synthesize_negatives`` makes with ``key``: ranks uniform in
  0..n_hardest-1 (independently, so a pair may repeat a negative), alpha ~ U(0, 1),
  beta ~ U(0, 0.5)."""
  k_pairs, k_alpha, k_pick, k_beta = jax.random.split(key, 4)
  return MixChoices(
      pairs=jax.random.randint(k_pairs, (batch, n_synthetic, 2), 0, n_hardest, jnp.int32),
      alpha=jax.random.uniform(k_alpha, (batch, n_synthetic), jnp.float32),
      query_pick=jax.random.randint(k_pick, (batch, n_query_mixed), 0, n_hardest, jnp.int32),
      beta=jax.random.uniform(k_beta, (batch, n_query_mixed), jnp.float32, 0.0, QUERY_MIX_MAX))


def candidates(d: jax.Array, hard_negatives: jax.Array | None) -> jax.Array:
  """Every document of the batch in ``info_nce``'s column order: (B, D), (B, H, D) -> (B + BH, D)."""
  if hard_negatives is None:
    return d
  return jnp.concatenate([d, jnp.swapaxes(hard_negatives, 0, 1).reshape(-1, d.shape[-1])], axis=0)


def hardest_negatives(q: jax.Array, docs: jax.Array, *, n_hardest: int,
                      doc_ids: jax.Array | None = None, false_negative_ratio: float | None = None,
                      similarity: str = 'cosine') -> jax.Array:
  """Column indices of each query's ``n_hardest`` most similar candidate negatives, hardest first.

  Args:
    q: (B, D) queries. docs: (C, D) candidates, column i < B being query i's positive (see
      :func:`candidates`).
    doc_ids: optional (B,) ids of the positives: other positives with query i's id are excluded.
    false_negative_ratio: optional; candidates ``info_nce`` would mask (similarity above
      ``s - (1 - ratio)|s|``, s the positive's) are excluded.
    similarity: 'cosine' or 'dot', as the loss.
  Returns:
    (B, n_hardest) int32 column indices. Where a row has fewer allowed candidates than
    ``n_hardest`` the missing ones repeat its hardest (assumed to exist: B + BH > 1).
  """
  chex.assert_rank([q, docs], 2)
  b, n_cols = q.shape[0], docs.shape[0]
  if not 0 < n_hardest <= n_cols - 1:
    raise ValueError(f'n_hardest {n_hardest}: must be in 1..{n_cols - 1} (the candidate negatives '
                     f'of a batch of {b} rows with {n_cols - b} hard negatives)')
  sims = jax.lax.stop_gradient(SIMILARITIES[similarity](q, docs))      # (B, C)
  rows = jnp.arange(b)
  allowed = jnp.arange(n_cols)[None, :] != rows[:, None]
  if doc_ids is not None:
    chex.assert_shape(doc_ids, (b,))
    dup = doc_ids[:, None] == doc_ids[None, :]
    allowed = allowed.at[:, :b].set(allowed[:, :b] & ~dup)
  if false_negative_ratio is not None:
    pos = sims[rows, rows]
    allowed &= ~(sims > (pos - (1.0 - false_negative_ratio) * jnp.abs(pos))[:, None])
  _, idx = jax.lax.top_k(jnp.where(allowed, sims, -jnp.inf), n_hardest)
  valid = jnp.take_along_axis(allowed, idx, axis=1)
  return jnp.where(valid, idx, idx[:, :1]).astype(jnp.int32)


def mix_negatives(q: jax.Array, docs: jax.Array, hardest: jax.Array,
                  choices: MixChoices) -> jax.Array:
  """The synthetic negatives for given choices: (B, s + s', D), h_m first, then h'_m, no gradient.

  Args:
    q: (B, D) queries. docs: (C, D) candidates. hardest: (B, k) column indices, hardest first
      (:func:`hardest_negatives`). choices: ranks into ``hardest`` and mixing weights.

  Example: query (1, 0) with candidates ranked (0.8, 0.6), (0.6, 0.8): their even mix is the
  diagonal, and the query mixed half-and-half with the hardest is normalize((0.9, 0.3)).

  >>> q = jnp.array([[1.0, 0.0]])
  >>> docs = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]])
  >>> hardest = hardest_negatives(q, docs, n_hardest=2)
  >>> hardest
  Array([[2, 1]], dtype=int32)
  >>> choices = MixChoices(pairs=jnp.array([[[0, 1]]]), alpha=jnp.array([[0.5]]),
  ...                      query_pick=jnp.array([[0]]), beta=jnp.array([[0.5]]))
  >>> import numpy as np
  >>> print(np.asarray(mix_negatives(q, docs, hardest, choices), np.float64).round(4))
  [[[0.7071 0.7071]
    [0.9487 0.3162]]]
  """
  chex.assert_rank([q, docs, hardest], 2)
  b, dim = q.shape
  hard = docs[hardest].astype(jnp.float32)                     # (B, k, D)
  take = lambda ranks: jnp.take_along_axis(hard, ranks[..., None], axis=1)   # (B, m, D)
  alpha = choices.alpha[..., None].astype(jnp.float32)
  pairs = alpha * take(choices.pairs[..., 0]) + (1.0 - alpha) * take(choices.pairs[..., 1])
  beta = choices.beta[..., None].astype(jnp.float32)
  with_query = beta * q[:, None, :].astype(jnp.float32) + (1.0 - beta) * take(choices.query_pick)
  out = l2_normalize(jnp.concatenate([pairs, with_query], axis=1))
  chex.assert_shape(out, (b, choices.alpha.shape[1] + choices.beta.shape[1], dim))
  return jax.lax.stop_gradient(out)


def synthesize_negatives(key: jax.Array, q: jax.Array, d: jax.Array,
                         hard_negatives: jax.Array | None = None, *, n_synthetic: int,
                         n_hardest: int, n_query_mixed: int = 0, doc_ids: jax.Array | None = None,
                         false_negative_ratio: float | None = None,
                         similarity: str = 'cosine') -> jax.Array:
  """(B, n_synthetic + n_query_mixed, D) synthetic negatives of each query (module docstring),
  drawn with ``key`` (:func:`draw_choices`), without gradient."""
  docs = candidates(d, hard_negatives)
  hardest = hardest_negatives(q, docs, n_hardest=n_hardest, doc_ids=doc_ids,
                              false_negative_ratio=false_negative_ratio, similarity=similarity)
  choices = draw_choices(key, q.shape[0], n_hardest=n_hardest, n_synthetic=n_synthetic,
                         n_query_mixed=n_query_mixed)
  return mix_negatives(q, docs, hardest, choices)


def mix_hard_negatives(loss_fn: Callable, *, n_synthetic: int, n_hardest: int = 8,
                       n_query_mixed: int = 0) -> Callable:
  """Wraps ``loss_fn(q, d, *, hard_negatives=None, **kw)`` to add synthetic hard negatives.

  The wrapped loss is ``f(q, d, *, key, hard_negatives=None, **kw)``: it synthesises
  ``n_synthetic`` pair mixes and ``n_query_mixed`` query mixes per query from its ``n_hardest``
  hardest negatives (module docstring; ``key`` draws the choices), appends them to each row's
  hard negatives and calls loss_fn. ``doc_ids``, ``false_negative_ratio`` and ``similarity`` in
  ``kw`` are used for the ranking too, and passed on. The metrics are loss_fn's plus
  ``synthetic_similarity``, the mean similarity of a query to its synthetic negatives.

  Example: extra negatives next to the query only add to InfoNCE's denominator.

  >>> from embedjax.losses.contrastive import info_nce
  >>> q = jnp.eye(3, 4)
  >>> h = jnp.stack([jnp.roll(q, 1, axis=0), jnp.roll(q, 1, axis=1)], axis=1) * 0.9 + q[:, None] * 0.3
  >>> mixed = jax.jit(mix_hard_negatives(info_nce, n_synthetic=4, n_hardest=2, n_query_mixed=2))
  >>> loss, metrics = mixed(q, q, hard_negatives=h, key=jax.random.key(0))
  >>> bool(loss > info_nce(q, q, hard_negatives=h)[0]), bool(metrics['synthetic_similarity'] > 0)
  (True, True)
  """
  for name, value in (('n_synthetic', n_synthetic), ('n_query_mixed', n_query_mixed)):
    if not isinstance(value, int) or value < 0:
      raise ValueError(f'{name} must be a non-negative int, got {value!r}')
  if n_synthetic + n_query_mixed == 0:
    raise ValueError('mix_hard_negatives: n_synthetic + n_query_mixed is 0 (nothing to mix)')

  def wrapped(q, d, *, key, hard_negatives=None, **kwargs):
    chex.assert_rank([q, d], 2)
    synthetic = synthesize_negatives(
        key, q, d, hard_negatives, n_synthetic=n_synthetic, n_hardest=n_hardest,
        n_query_mixed=n_query_mixed, doc_ids=kwargs.get('doc_ids'),
        false_negative_ratio=kwargs.get('false_negative_ratio'),
        similarity=kwargs.get('similarity', 'cosine'))
    negatives = synthetic if hard_negatives is None else jnp.concatenate(
        [hard_negatives.astype(synthetic.dtype), synthetic], axis=1)
    loss, metrics = loss_fn(q, d, hard_negatives=negatives, **kwargs)
    metrics = dict(metrics)
    metrics['synthetic_similarity'] = jnp.mean(
        jnp.einsum('bd,bsd->bs', l2_normalize(q.astype(jnp.float32)), synthetic))
    return loss, metrics

  return wrapped
