"""InfoNCE / multiple-negatives ranking loss over the global batch.

Written on the whole batch (``q @ d.T``): under ``jit`` with a data-sharded batch XLA inserts the
gathers, so every device's queries see every device's documents as negatives.

Semantics follow sentence-transformers' ``MultipleNegativesRankingLoss`` (v6): candidates for query
i are all positives of the batch followed by all hard negatives (column order: positives, then
negative 1 of every row, then negative 2 ...); logits = scale * similarity; optional extra
interaction directions ("query_to_query", "doc_to_query", "doc_to_doc") and a joint or
per-direction softmax. Two additions of our own:
- ``doc_ids``: masks in-batch positives that are the same document as row i's positive (a
  duplicate is a false negative, not a negative);
- ``false_negative_ratio``: masks any negative more similar to the query than ``ratio`` times the
  positive's similarity (NV-Retriever's "TopK-PercPos" filter, applied in-batch).

References: van den Oord et al. 2018 (InfoNCE); Henderson et al. 2017 (in-batch negatives);
Moreira et al. 2024 (NV-Retriever, positive-aware false-negative filtering).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from embedjax.ops import l2_normalize

# The inverse temperature sentence-transformers uses; every other default (StepConfig, the base
# config) reads it from here.
DEFAULT_SCALE = 20.0
DIRECTIONS = ('query_to_doc', 'query_to_query', 'doc_to_query', 'doc_to_doc')
_NEG = -1e9  # a masked logit: exp() underflows to 0 in float32, unlike -inf it keeps grads finite


def cosine_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
  """(N, D) x (M, D) -> (N, M) cosine similarities in float32.

  >>> print(cosine_matrix(jnp.array([[1.0, 0.0], [3.0, 3.0]]), jnp.array([[2.0, 0.0]])).round(4))
  [[1.    ]
   [0.7071]]
  """
  a = l2_normalize(a.astype(jnp.float32))
  b = l2_normalize(b.astype(jnp.float32))
  return a @ b.T


def _dot_matrix(a, b):
  return a.astype(jnp.float32) @ b.astype(jnp.float32).T


SIMILARITIES = {'cosine': cosine_matrix, 'dot': _dot_matrix}


def info_nce(q: jax.Array, d: jax.Array, *, scale: float | jax.Array = DEFAULT_SCALE,
             hard_negatives: jax.Array | None = None,
             directions: tuple[str, ...] = ('query_to_doc',), partition_mode: str = 'joint',
             similarity: str = 'cosine', doc_ids: jax.Array | None = None,
             false_negative_ratio: float | None = None,
             weights: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """Multiple-negatives ranking (InfoNCE) loss.

  Args:
    q: (B, D) query embeddings. d: (B, D) their positives.
    scale: inverse temperature (a float, or a traced scalar for a learnable temperature).
    hard_negatives: optional (B, H, D) mined negatives of each query (negatives for every query).
    directions: which similarity blocks enter the softmax (see DIRECTIONS); must include
      'query_to_doc'. 'doc_to_query' alone with it gives the symmetric loss.
    partition_mode: 'joint' (one softmax over all blocks) or 'per_direction' (one per block,
      log-partition averaged; only with query_to_doc / doc_to_query).
    similarity: 'cosine' or 'dot'.
    doc_ids: optional (B,) ints naming each positive document; equal ids in other rows are masked.
    false_negative_ratio: optional float in (0, 1]; negatives with similarity > ratio * positive
      similarity (for a positive similarity s > 0; s - (1 - ratio)|s| in general) are masked.
    weights: optional (B,) per-query weights (e.g. 0 for padding rows); the loss is their weighted mean.
  Returns:
    (scalar loss, metrics dict with 'loss', 'accuracy' (positive ranked first among query_to_doc
    candidates), 'positive_similarity', 'negative_similarity').

  Example (under ``jit``): each query equals its positive and is orthogonal to the other
  documents, so the positive wins every softmax by a margin of ``scale`` = 20 and the loss is
  log(1 + 2 exp(-20)) ~ 0; swapping two positives makes the loss large.

  >>> loss_fn = jax.jit(info_nce)
  >>> q = jnp.eye(3)
  >>> loss, metrics = loss_fn(q, q)
  >>> round(float(loss), 6), float(metrics['accuracy'])
  (0.0, 1.0)
  >>> round(float(loss_fn(q, q[jnp.array([1, 0, 2])])[0]), 2)  # rows 0 and 1 swapped: 2/3 * 20
  13.33
  """
  chex.assert_rank([q, d], 2)
  chex.assert_equal_shape([q, d])
  if 'query_to_doc' not in directions or not set(directions) <= set(DIRECTIONS):
    raise ValueError(f"directions must include 'query_to_doc' and be among {DIRECTIONS}: {directions}")
  if partition_mode not in ('joint', 'per_direction'):
    raise ValueError(f"partition_mode must be 'joint' or 'per_direction', got {partition_mode!r}")
  if partition_mode == 'per_direction' and set(directions) & {'query_to_query', 'doc_to_doc'}:
    raise ValueError("'per_direction' needs every block to contain the positive; "
                     "query_to_query / doc_to_doc do not")
  sim = SIMILARITIES[similarity]
  b = q.shape[0]
  docs = d
  if hard_negatives is not None:
    chex.assert_rank(hard_negatives, 3)
    # Column order as sentence-transformers: all positives, then negative 1 of each row, ...
    docs = jnp.concatenate([d, jnp.swapaxes(hard_negatives, 0, 1).reshape(-1, d.shape[1])], axis=0)
  n_cols = docs.shape[0]
  rows = jnp.arange(b)
  col_row = jnp.arange(n_cols) % b          # which query each candidate column belongs to
  own = col_row[None, :] == rows[:, None]    # (B, C): row i's own positive and own negatives

  q2d = sim(q, docs)                         # (B, C)
  pos_sim = q2d[rows, rows]
  allowed = jnp.ones_like(q2d, dtype=bool)
  if doc_ids is not None:
    chex.assert_shape(doc_ids, (b,))
    dup = (doc_ids[:, None] == doc_ids[None, :]) & ~jnp.eye(b, dtype=bool)
    allowed = allowed.at[:, :b].set(~dup)
  if false_negative_ratio is not None:
    # ratio * positive similarity, written so it stays a *lower* bar for negative similarities too.
    bar = pos_sim - (1.0 - false_negative_ratio) * jnp.abs(pos_sim)
    too_close = jax.lax.stop_gradient(q2d > bar[:, None])
    allowed &= ~too_close | (jnp.arange(n_cols)[None, :] == rows[:, None])

  # Each block: (similarities, allowed mask). Masking happens after scaling so that a masked
  # entry is masked whatever the (possibly learnable) scale.
  blocks = {'query_to_doc': (q2d, allowed)}
  if 'query_to_query' in directions:
    blocks['query_to_query'] = (sim(q, q), ~jnp.eye(b, dtype=bool))
  if 'doc_to_query' in directions:
    blocks['doc_to_query'] = (sim(d, q), allowed[:, :b].T if doc_ids is not None else
                              jnp.ones((b, b), bool))
  if 'doc_to_doc' in directions:
    blocks['doc_to_doc'] = (sim(d, docs), ~own)
  logits = {k: jnp.where(mask, s * scale, _NEG) for k, (s, mask) in blocks.items()}
  positive = logits['query_to_doc'][rows, rows]
  if partition_mode == 'joint':
    log_z = jax.nn.logsumexp(jnp.concatenate(list(logits.values()), axis=1), axis=1)
  else:
    log_z = sum(jax.nn.logsumexp(v, axis=1) for v in logits.values()) / len(logits)
  per_query = log_z - positive
  w = jnp.ones((b,), jnp.float32) if weights is None else weights.astype(jnp.float32)
  loss = jnp.sum(per_query * w) / jnp.maximum(jnp.sum(w), 1e-9)

  neg_mask = allowed & ~(jnp.arange(n_cols)[None, :] == rows[:, None])
  accuracy = jnp.sum((jnp.argmax(logits['query_to_doc'], axis=1) == rows) * w) / jnp.maximum(w.sum(), 1e-9)
  neg_mean = jnp.sum(jnp.where(neg_mask, q2d, 0.0)) / jnp.maximum(neg_mask.sum(), 1)
  metrics = {'loss': loss, 'accuracy': accuracy, 'positive_similarity': jnp.mean(pos_sim),
             'negative_similarity': neg_mean}
  return loss, metrics
