"""In-batch InfoNCE over MaxSim scores (ColBERT training): the multi-vector counterpart of
``contrastive.info_nce``.

ColBERT (Khattab & Zaharia 2020) trains with a softmax cross-entropy over the MaxSim scores of a
query's positive and its negatives; ColBERTv2 uses in-batch negatives besides mined ones. Here
every query is scored against every document of the batch and its hard negatives, and the
positive is the document of its own row. ``scale`` multiplies the scores (ColBERT uses raw
MaxSim sums, scale 1; with unit token vectors a score lies in [-Tq, Tq]).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from embedjax.search.multivector import maxsim_scores


def maxsim_info_nce(q: jax.Array, q_mask: jax.Array, d: jax.Array, d_mask: jax.Array, *,
                    hard_negatives: jax.Array | None = None,
                    hard_negatives_mask: jax.Array | None = None,
                    scale: float | jax.Array = 1.0) -> tuple[jax.Array, dict]:
  """Softmax cross-entropy of each query's positive among all documents of the batch.

  Args:
    q: (B, Tq, dim) query token vectors; q_mask (B, Tq).
    d: (B, Td, dim) their positives' token vectors; d_mask (B, Td).
    hard_negatives: optional (B, H, Tn, dim) negatives (every query is scored against all of
      them); hard_negatives_mask (B, H, Tn).
    scale: multiplies the MaxSim scores before the softmax.

  Returns:
    (scalar loss, metrics: 'loss', 'accuracy' (positive ranked first), 'positive_score',
    'negative_score' (mean over the batch's other candidates)).
  """
  chex.assert_rank([q, q_mask, d, d_mask], [3, 2, 3, 2])
  b = q.shape[0]
  docs, masks = d, d_mask
  if hard_negatives is not None:
    chex.assert_rank([hard_negatives, hard_negatives_mask], [4, 3])
    _, h, tn, dim = hard_negatives.shape
    td = d.shape[1]
    width = max(td, tn)  # one padded document array for positives and negatives
    pad = lambda x, m, t: (jnp.pad(x, ((0, 0), (0, width - t), (0, 0))),  # noqa: E731
                           jnp.pad(m, ((0, 0), (0, width - t))))
    docs, masks = pad(d, d_mask, td)
    negs, neg_masks = pad(hard_negatives.reshape(b * h, tn, dim),
                          hard_negatives_mask.reshape(b * h, tn), tn)
    docs = jnp.concatenate([docs, negs], axis=0)
    masks = jnp.concatenate([masks, neg_masks], axis=0)
  scores = scale * maxsim_scores(q, q_mask, docs, masks)  # (B, B + B*H)
  labels = jnp.arange(b)
  logp = jax.nn.log_softmax(scores, axis=1)
  loss = -jnp.mean(logp[labels, labels])
  positive = scores[labels, labels]
  is_positive = jnp.arange(scores.shape[1])[None, :] == labels[:, None]
  n_others = max(scores.size - b, 1)
  metrics = {'loss': loss,
             'accuracy': jnp.mean((jnp.argmax(scores, axis=1) == labels).astype(jnp.float32)),
             'positive_score': jnp.mean(positive) / scale,
             'negative_score': jnp.sum(jnp.where(is_positive, 0.0, scores)) / n_others / scale}
  return loss, metrics
