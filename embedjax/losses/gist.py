"""GISTEmbed: in-batch contrastive loss whose false negatives a guide model masks out.

Semantics follow sentence-transformers' ``GISTEmbedLoss`` / ``CachedGISTEmbedLoss`` (v6). For
anchor i the candidates are, in column order, blocks of B columns each:
  anchor-positive (always), anchor-anchor (``contrast_anchors``), positive-positive
  (``contrast_positives``: row i compares positive i with every positive), then one
  anchor-negative block per hard negative (negative k of every row).
Logits are cosine similarities / temperature; the target of row i is column i (its positive) and the
loss is the mean cross-entropy over rows. A candidate is masked when the *guide's* similarity for
that cell exceeds the guide's anchor-positive similarity of row i minus a margin:
  'absolute'  guide_sim > guide_pos - margin
  'relative'  guide_sim > guide_pos - |guide_pos| * margin
in every block; only row i's own positive (the target cell) is protected. The anchor-anchor and
positive-positive diagonals (a text against itself, guide similarity 1) are thus masked whenever the
bar is below 1, and kept when it is not (a guide positive similarity of exactly 1 with margin 0),
as in sentence-transformers.

The guide's embeddings are inputs here (computed by whatever guide model, outside the gradient):
sentence-transformers runs the guide under ``no_grad``, so they get no gradient.

Reference: Solatorio 2024, "GISTEmbed: Guided In-sample Selection of Training Negatives for Text
Embedding Fine-tuning".
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from embedjax.losses.contrastive import cosine_matrix

MARGIN_STRATEGIES = ('absolute', 'relative')
_NEG = -1e9  # a masked logit: exp() underflows to 0 in float32, unlike -inf it keeps grads finite


def gist(q: jax.Array, d: jax.Array, guide_q: jax.Array, guide_d: jax.Array, *,
         hard_negatives: jax.Array | None = None, guide_hard_negatives: jax.Array | None = None,
         temperature: float = 0.01, margin_strategy: str = 'absolute', margin: float = 0.0,
         contrast_anchors: bool = True, contrast_positives: bool = True) -> tuple[jax.Array, dict]:
  """GISTEmbed loss (sentence-transformers' ``GISTEmbedLoss``; several negatives as
  ``CachedGISTEmbedLoss``).

  Args:
    q: (B, D) anchor embeddings. d: (B, D) their positives.
    guide_q, guide_d: (B, G) the guide model's embeddings of the same texts (no gradient).
    hard_negatives: optional (B, H, D) negatives of each anchor; ``GISTEmbedLoss`` takes H = 1,
      ``CachedGISTEmbedLoss`` any H.
    guide_hard_negatives: (B, H, G) the guide's embeddings of the negatives; required with them.
    temperature: divides the cosine similarities (0.01 = scale 100).
    margin_strategy: 'absolute' or 'relative' (see the module docstring).
    margin: the margin of the false-negative bar (0 masks candidates the guide finds more similar
      to the anchor than its positive).
    contrast_anchors, contrast_positives: include the anchor-anchor / positive-positive blocks.
  Returns:
    (scalar loss, metrics with 'loss', 'accuracy' (the positive has the largest logit),
    'masked_fraction' (fraction of candidate cells the guide masked), 'positive_similarity').

  Example: the model as its own guide. Each anchor's positive (cosine 0.89) beats the other
  candidates (0.45, 0 and 0.8) by far at temperature 0.01, and the guide masks only the two
  self-similarity diagonals (2 of 6 cells per row). With positives equal to the anchors the guide's
  bar is 1, nothing lies above it, and the positive ties with both self-similarities: log 3.

  >>> q = jnp.eye(2)
  >>> d = jnp.array([[2.0, 1.0], [1.0, 2.0]])
  >>> loss, metrics = jax.jit(gist)(q, d, q, d)
  >>> round(float(loss), 4), round(float(metrics['masked_fraction']), 4)
  (0.0001, 0.3333)
  >>> round(float(jax.jit(gist)(q, q, q, q)[0]), 4)
  1.0986
  """
  chex.assert_rank([q, d, guide_q, guide_d], 2)
  chex.assert_equal_shape([q, d])
  chex.assert_equal_shape([guide_q, guide_d])
  chex.assert_equal_shape_prefix([q, guide_q], 1)
  if margin_strategy not in MARGIN_STRATEGIES:
    raise ValueError(f'margin_strategy must be one of {MARGIN_STRATEGIES}, got {margin_strategy!r}')
  if (hard_negatives is None) != (guide_hard_negatives is None):
    raise ValueError('hard_negatives and guide_hard_negatives come together')
  b = q.shape[0]
  guide_q, guide_d = jax.lax.stop_gradient(guide_q), jax.lax.stop_gradient(guide_d)

  guided_qd = cosine_matrix(guide_q, guide_d)
  guide_pos = jnp.diagonal(guided_qd)[:, None]                  # (B, 1)
  if margin_strategy == 'absolute':
    bar = guide_pos - margin
  else:
    bar = guide_pos - jnp.abs(guide_pos) * margin
  eye = jnp.eye(b, dtype=bool)

  def block(sim, guided, protect_diagonal=False):
    masked = guided > bar
    if protect_diagonal:
      masked &= ~eye
    return jnp.where(masked, _NEG, sim / temperature), masked

  blocks = [block(cosine_matrix(q, d), guided_qd, protect_diagonal=True)]
  if contrast_anchors:
    blocks.append(block(cosine_matrix(q, q), cosine_matrix(guide_q, guide_q)))
  if contrast_positives:
    blocks.append(block(cosine_matrix(d, d), cosine_matrix(guide_d, guide_d)))
  if hard_negatives is not None:
    chex.assert_rank([hard_negatives, guide_hard_negatives], 3)
    chex.assert_shape(hard_negatives, (b, None, q.shape[1]))
    chex.assert_shape(guide_hard_negatives, (b, hard_negatives.shape[1], guide_q.shape[1]))
    guide_negs = jax.lax.stop_gradient(guide_hard_negatives)
    for k in range(hard_negatives.shape[1]):
      blocks.append(block(cosine_matrix(q, hard_negatives[:, k]),
                          cosine_matrix(guide_q, guide_negs[:, k])))

  logits = jnp.concatenate([x for x, _ in blocks], axis=1)       # (B, C)
  masked = jnp.concatenate([m for _, m in blocks], axis=1)
  rows = jnp.arange(b)
  per_row = jax.nn.logsumexp(logits, axis=1) - logits[rows, rows]
  loss = jnp.mean(per_row)
  metrics = {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, axis=1) == rows),
             'masked_fraction': jnp.mean(masked),
             'positive_similarity': jnp.mean(logits[rows, rows]) * temperature}
  return loss, metrics


def cached_gist(q: jax.Array, d: jax.Array, guide_q: jax.Array, guide_d: jax.Array, *,
                hard_negatives: jax.Array | None = None,
                guide_hard_negatives: jax.Array | None = None, temperature: float = 0.01,
                margin_strategy: str = 'absolute', margin: float = 0.0,
                contrast_anchors: bool = True,
                contrast_positives: bool = True) -> tuple[jax.Array, dict]:
  """sentence-transformers' ``CachedGISTEmbedLoss`` on given embeddings: the same as ``gist``.

  CachedGISTEmbedLoss embeds in mini-batches without gradients, computes the loss on the whole
  batch's embeddings (row chunks of the logits, each scaled by its share of the batch, summing to
  the batch mean), takes the gradient with respect to the embeddings, then re-embeds each
  mini-batch with gradients and back-propagates that cached gradient. As a function of the
  embeddings its value and gradient are therefore GISTEmbedLoss's (with any number of negatives).
  In embedjax the mini-batched embedding is ``embedjax.train.step``'s ``grad_cache`` path; on
  arrays this function is ``gist``, kept as its own name so that configurations written against
  sentence-transformers' loss names resolve.

  Example: the same value as ``gist``.

  >>> q, d = jnp.eye(3), jnp.eye(3)[::-1]
  >>> a, b = float(jax.jit(cached_gist)(q, d, q, d)[0]), float(jax.jit(gist)(q, d, q, d)[0])
  >>> abs(a - b) < 1e-6
  True
  """
  return gist(q, d, guide_q, guide_d, hard_negatives=hard_negatives,
              guide_hard_negatives=guide_hard_negatives, temperature=temperature,
              margin_strategy=margin_strategy, margin=margin, contrast_anchors=contrast_anchors,
              contrast_positives=contrast_positives)
