"""InfoNCE with per-negative or per-sample weights: hardness weighting, focal weighting, and a
progressive (easy-to-hard) sample-weight schedule.

All three keep :func:`embedjax.losses.contrastive.info_nce`'s semantics for the query-to-document
block: candidates of query i are every positive of the batch, then negative 1 of every row,
negative 2 of every row, ... (column ``c`` belongs to row ``c % B``); logits are ``scale *
similarity``; ``doc_ids`` masks in-batch duplicates of row i's positive and
``false_negative_ratio`` masks negatives too close to the positive (both with ``-1e9``, after
scaling); ``weights`` are per-query weights of a weighted mean. With their knob at zero (``alpha``,
``gamma``, ``strength``) each equals ``info_nce`` (to float rounding).

  hardness_weighted_info_nce  LLaVE / RzenEmbed: each negative's term in the partition function
                              multiplied by exp(alpha * sg(s_ij))
  focal_info_nce              KaLM-Embedding-V2: each query's term multiplied by (1 - p_i)^gamma
  progressive_weights         PEG-style schedule of per-sample weights from easy to hard (a pure
                              function of the step, so it stays inside ``jit``)
  progressive_info_nce        info_nce(weights=progressive_weights(...)) with the difficulty of a
                              query = 1 - p_i

Similarities are computed in float32, or in float64 when the inputs are float64 (under
``jax.enable_x64``), so that the losses can be checked against float64 references.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from embedjax.losses.contrastive import DEFAULT_SCALE, info_nce
from embedjax.ops import l2_normalize

_NEG = -1e9  # a masked logit, as in contrastive.py: exp() underflows to 0, gradients stay finite


def _wide(x: jax.Array) -> jax.Array:
  # float32 at least (bf16 embeddings), float64 kept (reference checks under enable_x64).
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _cosine(a, b):
  return l2_normalize(_wide(a)) @ l2_normalize(_wide(b)).T


def _dot(a, b):
  return _wide(a) @ _wide(b).T


PAIR_SIMILARITIES = {'cosine': _cosine, 'dot': _dot}


def candidates(q: jax.Array, d: jax.Array, *, hard_negatives: jax.Array | None = None,
               similarity: str = 'cosine', doc_ids: jax.Array | None = None,
               false_negative_ratio: float | None = None) -> tuple[jax.Array, jax.Array]:
  """The query-to-candidate similarities of ``info_nce`` and which of them take part.

  Args:
    q: (B, D) queries. d: (B, D) their positives. hard_negatives: optional (B, H, D).
    similarity: 'cosine' or 'dot'. doc_ids, false_negative_ratio: as in ``info_nce``.
  Returns:
    (sim, allowed): (B, C) similarities with C = B * (1 + H) (columns: the B positives, then
    negative 1 of every row, ...; row i's positive is column i) and a (B, C) bool mask, False
    for in-batch duplicates (``doc_ids``) and filtered false negatives (never for column i).

  >>> sim, allowed = jax.jit(candidates)(jnp.eye(2), jnp.eye(2), hard_negatives=jnp.ones((2, 1, 2)))
  >>> sim.shape, bool(allowed.all())
  ((2, 4), True)
  """
  chex.assert_rank([q, d], 2)
  chex.assert_equal_shape([q, d])
  if similarity not in PAIR_SIMILARITIES:
    raise ValueError(f'similarity must be one of {sorted(PAIR_SIMILARITIES)}, got {similarity!r}')
  b = q.shape[0]
  docs = d
  if hard_negatives is not None:
    chex.assert_rank(hard_negatives, 3)
    docs = jnp.concatenate([d, jnp.swapaxes(hard_negatives, 0, 1).reshape(-1, d.shape[1])], axis=0)
  sim = PAIR_SIMILARITIES[similarity](q, docs)
  rows = jnp.arange(b)
  own_positive = jnp.arange(docs.shape[0])[None, :] == rows[:, None]
  allowed = jnp.ones(sim.shape, dtype=bool)
  if doc_ids is not None:
    chex.assert_shape(doc_ids, (b,))
    dup = (doc_ids[:, None] == doc_ids[None, :]) & ~jnp.eye(b, dtype=bool)
    allowed = allowed.at[:, :b].set(~dup)
  if false_negative_ratio is not None:
    pos_sim = sim[rows, rows]
    bar = pos_sim - (1.0 - false_negative_ratio) * jnp.abs(pos_sim)
    too_close = jax.lax.stop_gradient(sim > bar[:, None])
    allowed &= ~too_close | own_positive
  return sim, allowed


def _query_to_doc_only(directions, partition_mode):
  # Accepted so that these losses take the same config fields as info_nce (the train step passes
  # every loss.* field); with the query-to-document block alone both partition modes coincide.
  if tuple(directions) != ('query_to_doc',) or partition_mode not in ('joint', 'per_direction'):
    raise ValueError("this loss supports directions=('query_to_doc',) only, got "
                     f'{tuple(directions)!r} / {partition_mode!r}')


def _row_weights(weights, b):
  return jnp.ones((b,), jnp.float32) if weights is None else weights.astype(jnp.float32)


def _weighted_mean(x, w):
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1e-9)


def _metrics(loss, sim, logits, allowed, w):
  """info_nce's metrics: loss, accuracy (positive ranked first), mean positive / negative sim."""
  b = sim.shape[0]
  rows = jnp.arange(b)
  neg = allowed & (jnp.arange(sim.shape[1])[None, :] != rows[:, None])
  accuracy = _weighted_mean((jnp.argmax(logits, axis=1) == rows).astype(w.dtype), w)
  return {'loss': loss, 'accuracy': accuracy, 'positive_similarity': jnp.mean(sim[rows, rows]),
          'negative_similarity': jnp.sum(jnp.where(neg, sim, 0.0)) / jnp.maximum(neg.sum(), 1)}


def _per_query(q, d, scale, hard_negatives, similarity, doc_ids, false_negative_ratio):
  sim, allowed = candidates(q, d, hard_negatives=hard_negatives, similarity=similarity,
                            doc_ids=doc_ids, false_negative_ratio=false_negative_ratio)
  logits = jnp.where(allowed, sim * scale, _NEG)
  rows = jnp.arange(q.shape[0])
  per_query = jax.nn.logsumexp(logits, axis=1) - logits[rows, rows]
  return per_query, sim, logits, allowed


# ----------------------------------------------------------------------------------------------
# 1. Hardness-weighted InfoNCE


def hardness_weighted_info_nce(q: jax.Array, d: jax.Array, *,
                               scale: float | jax.Array = DEFAULT_SCALE,
                               hard_negatives: jax.Array | None = None, alpha: float = 1.0,
                               normalize: bool = False,
                               directions: tuple[str, ...] = ('query_to_doc',),
                               partition_mode: str = 'joint', similarity: str = 'cosine',
                               doc_ids: jax.Array | None = None,
                               false_negative_ratio: float | None = None,
                               weights: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """InfoNCE whose negatives are weighted by their hardness (LLaVE; RzenEmbed's stage 2).

  With s_ij the similarity of query i and candidate j, t = ``scale`` (an inverse temperature;
  a traced scalar gives a learnable temperature) and N_i row i's unmasked negatives::

    L_i = -log( exp(t s_ii) / (exp(t s_ii) + sum_{j in N_i} w_ij exp(t s_ij)) )
    w_ij = exp(alpha * sg(s_ij))                                   (normalize=False)
    w_ij = |N_i| * exp(alpha * sg(s_ij)) / sum_{k in N_i} exp(alpha * sg(s_ik))   (normalize=True)

  i.e. ``alpha * sg(s_ij)`` (minus the row's log-mean weight when normalised) is added to each
  negative logit, never to the positive's; sg = ``stop_gradient``, so the weights steer the
  gradient without becoming a shortcut the model can lower. A harder negative (larger s_ij)
  gets a larger share of the partition function and so of the gradient.

  Source of the form: LLaVE (Lan et al. 2025, "LLaVE: Large Language and Vision Embedding
  Models with Hardness-Weighted Contrastive Learning"), its eq. 5 as sentence-transformers'
  port describes it (PR #3667, ``hardness_mode='all'``: "adds alpha * sg(cos_sim(q, neg)) to
  each negative logit before the softmax, while keeping the positive logit unchanged").
  RzenEmbed (Jian et al. 2025, arXiv 2510.27350) describes its "hardness-weighted mechanism" as
  assigning challenging samples higher weights within each batch; we could read only its
  abstract, so taking it to be LLaVE's form is our reading. ``normalize``
  (weights of mean 1 over each row's negatives, so the partition function keeps its scale) is
  our own variant, off by default. The default ``alpha`` is ours too; tune it.

  Args:
    q: (B, D) queries. d: (B, D) positives. hard_negatives: optional (B, H, D).
    scale, similarity, doc_ids, false_negative_ratio, weights: as in ``info_nce``.
    directions, partition_mode: accepted for info_nce's config fields; only the query-to-document
      block is supported.
    alpha: hardness strength; 0 gives ``info_nce`` exactly.
    normalize: rescale each row's weights to mean 1 over its negatives.
  Returns:
    (scalar loss, metrics): info_nce's metrics ('loss', 'accuracy', 'positive_similarity',
    'negative_similarity') plus 'max_hardness_weight' (the largest w_ij).

  Example: two queries, each equal to its positive; the other positive is a negative of
  similarity 0.6. alpha = 0 is InfoNCE, log(1 + e^(2 * (0.6 - 1))); alpha = 2 multiplies the
  negative's term by e^(2 * 0.6), making the loss larger.

  >>> q = jnp.array([[1.0, 0.0], [0.6, 0.8]])
  >>> loss_fn = jax.jit(hardness_weighted_info_nce)
  >>> plain, _ = loss_fn(q, q, scale=2.0, alpha=0.0)
  >>> hard, m = loss_fn(q, q, scale=2.0, alpha=2.0)
  >>> round(float(plain), 4), round(float(hard), 4), round(float(m['max_hardness_weight']), 4)
  (0.3711, 0.913, 3.3201)
  """
  _query_to_doc_only(directions, partition_mode)
  sim, allowed = candidates(q, d, hard_negatives=hard_negatives, similarity=similarity,
                            doc_ids=doc_ids, false_negative_ratio=false_negative_ratio)
  b, c = sim.shape
  rows = jnp.arange(b)
  negative = allowed & (jnp.arange(c)[None, :] != rows[:, None])
  hardness = alpha * jax.lax.stop_gradient(sim)
  log_w = jnp.where(negative, hardness, 0.0)
  if normalize:
    n_neg = jnp.maximum(negative.sum(axis=1), 1).astype(sim.dtype)
    log_norm = jax.nn.logsumexp(jnp.where(negative, hardness, _NEG), axis=1) - jnp.log(n_neg)
    log_w = jnp.where(negative, log_w - log_norm[:, None], 0.0)
  plain = jnp.where(allowed, sim * scale, _NEG)
  logits = plain + log_w
  per_query = jax.nn.logsumexp(logits, axis=1) - logits[rows, rows]
  w = _row_weights(weights, b)
  loss = _weighted_mean(per_query, w)
  metrics = _metrics(loss, sim, plain, allowed, w)
  metrics['max_hardness_weight'] = jnp.max(jnp.where(negative, jnp.exp(log_w), 0.0))
  return loss, metrics


# ----------------------------------------------------------------------------------------------
# 2. Focal InfoNCE


def focal_info_nce(q: jax.Array, d: jax.Array, *, scale: float | jax.Array = DEFAULT_SCALE,
                   hard_negatives: jax.Array | None = None, gamma: float = 2.0,
                   stop_gradient_weight: bool = False,
                   directions: tuple[str, ...] = ('query_to_doc',), partition_mode: str = 'joint',
                   similarity: str = 'cosine',
                   doc_ids: jax.Array | None = None, false_negative_ratio: float | None = None,
                   weights: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """InfoNCE with a focal-loss-style per-query weight (KaLM-Embedding-V2's focal reweighting).

  With p_i = exp(t s_ii) / Z_i the softmax probability of query i's positive among its
  candidates (Z_i as in ``info_nce``) and v_i the optional row ``weights``::

    L = sum_i v_i (1 - p_i)^gamma (-log p_i) / sum_i v_i

  Queries the model already ranks confidently (p_i near 1) are down-weighted, hard ones keep
  weight ~1. As in focal loss (Lin et al. 2017), the factor (1 - p_i)^gamma is part of the loss
  and is differentiated (``stop_gradient_weight=False``); ``True`` treats it as a constant
  weight instead. KaLM-Embedding-V2 (Zhao et al. 2025, arXiv 2506.20923) names a "focal-style
  reweighting mechanism that concentrates learning on difficult samples"; we could read only
  its abstract and summaries, so the exact placement of the weight and whether it is detached
  are our reading of "focal-style". The default gamma = 2 is focal loss's, not a value from the
  paper. 1 - p_i is computed as -expm1(log p_i) and clipped at 1e-12, so that gamma < 1 has a
  finite gradient when p_i rounds to 1.

  Args:
    q: (B, D) queries. d: (B, D) positives. hard_negatives: optional (B, H, D).
    scale, similarity, doc_ids, false_negative_ratio, weights: as in ``info_nce``.
    directions, partition_mode: as in :func:`hardness_weighted_info_nce` (query-to-document only).
    gamma: focusing exponent >= 0; 0 gives ``info_nce`` exactly.
    stop_gradient_weight: detach the focal factor.
  Returns:
    (scalar loss, metrics): info_nce's metrics plus 'mean_focal_weight'.

  Example: with gamma = 0 this is InfoNCE; gamma = 2 shrinks each term by (1 - p_i)^2.

  >>> q = jnp.array([[1.0, 0.0], [0.6, 0.8]])
  >>> loss_fn = jax.jit(focal_info_nce)
  >>> plain, _ = loss_fn(q, q, scale=2.0, gamma=0.0)
  >>> focal, m = loss_fn(q, q, scale=2.0, gamma=2.0)
  >>> round(float(plain), 4), round(float(focal), 4), round(float(m['mean_focal_weight']), 4)
  (0.3711, 0.0357, 0.0961)
  """
  if isinstance(gamma, (int, float)) and gamma < 0:  # (a traced gamma is not checked)
    raise ValueError(f'focal gamma must be >= 0, got {gamma}')
  _query_to_doc_only(directions, partition_mode)
  per_query, sim, logits, allowed = _per_query(q, d, scale, hard_negatives, similarity, doc_ids,
                                               false_negative_ratio)
  one_minus_p = jnp.maximum(-jnp.expm1(-per_query), 1e-12)
  focal = one_minus_p ** gamma
  if stop_gradient_weight:
    focal = jax.lax.stop_gradient(focal)
  w = _row_weights(weights, q.shape[0])
  loss = _weighted_mean(focal * per_query, w)
  metrics = _metrics(loss, sim, logits, allowed, w)
  metrics['mean_focal_weight'] = _weighted_mean(focal, w)
  return loss, metrics


# ----------------------------------------------------------------------------------------------
# 5. Progressive (easy-to-hard) sample weights


def progressive_weights(step: int | jax.Array, total_steps: int | jax.Array,
                        difficulty: jax.Array, *, strength: float = 2.0,
                        normalize: bool = False, mask: jax.Array | None = None) -> jax.Array:
  """Per-sample weights that move from favouring easy samples to favouring hard ones.

  With progress u = clip(step / total_steps, 0, 1), lambda = strength * (2u - 1) and the B'
  samples that ``mask`` keeps::

    w_i = B' * exp(lambda * d_i) / sum_k exp(lambda * d_k)       (0 outside the mask)

  so the weights have mean 1 over the kept samples, equal at mid-training, tilted towards easy
  samples (low d_i) before and hard ones after. The weights are under ``stop_gradient``.

  PEG (Wu et al. 2023/2024, "Towards Robust Text Retrieval with Progressive Learning") trains
  with "a progressive learning mechanism, enabling the model to dynamically modulate its
  attention to the samples throughout the entire training process"; we could not read its
  formula, so this schedule (a tilted softmax whose tilt moves linearly from -strength to
  +strength) is our own reading of it.

  Args:
    step: the current step (python int or traced scalar: the function is jittable).
    total_steps: the number of training steps (> 0).
    difficulty: (B,) difficulty of each sample, larger = harder; in [0, 1] (e.g. 1 - p_i) so that
      ``strength`` has a fixed meaning, or any scale with ``normalize=True``.
    strength: the largest |lambda|; 0 gives weights of 1.
    normalize: min-max rescale the (kept) difficulties to [0, 1] first (e.g. for raw losses).
    mask: optional (B,) bool, False for padding rows (weight 0).
  Returns:
    (B,) float32 weights.

  >>> d = jnp.array([0.0, 1.0])                     # an easy and a hard sample
  >>> weights_at = jax.jit(progressive_weights)  # step may be traced
  >>> for step in (0, 5, 10):
  ...   print([round(float(w), 3) for w in weights_at(step, 10, d)])
  [1.762, 0.238]
  [1.0, 1.0]
  [0.238, 1.762]
  """
  chex.assert_rank(difficulty, 1)
  diff = jax.lax.stop_gradient(difficulty).astype(jnp.float32)
  keep = jnp.ones(diff.shape, bool) if mask is None else mask.astype(bool)
  if normalize:
    lo = jnp.min(jnp.where(keep, diff, jnp.inf))
    hi = jnp.max(jnp.where(keep, diff, -jnp.inf))
    diff = (diff - lo) / jnp.maximum(hi - lo, 1e-12)
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / jnp.asarray(total_steps, jnp.float32),
                      0.0, 1.0)
  tilt = strength * (2.0 * progress - 1.0)
  share = jax.nn.softmax(jnp.where(keep, tilt * diff, -jnp.inf))
  return jnp.where(keep, share * keep.sum(), 0.0)


def progressive_info_nce(q: jax.Array, d: jax.Array, *, step: int | jax.Array,
                         total_steps: int | jax.Array, strength: float = 2.0,
                         scale: float | jax.Array = DEFAULT_SCALE,
                         hard_negatives: jax.Array | None = None, similarity: str = 'cosine',
                         doc_ids: jax.Array | None = None,
                         false_negative_ratio: float | None = None,
                         weights: jax.Array | None = None,
                         **info_nce_kwargs) -> tuple[jax.Array, dict]:
  """``info_nce`` weighted by :func:`progressive_weights` (PEG-style progressive learning).

  The difficulty of query i is 1 - p_i, p_i the (stop-gradient) softmax probability of its
  positive in the query-to-document block; its weight is
  ``progressive_weights(step, total_steps, 1 - p, strength=strength, mask=weights > 0)`` times
  ``weights`` (if given), passed to ``info_nce(weights=...)``. Other keyword arguments
  (``directions``, ``partition_mode``) go to ``info_nce`` unchanged.

  Returns:
    (scalar loss, metrics): info_nce's metrics plus 'progressive_weight_max'.

  Example: query 0 is easy, query 1 hard; the loss moves from the easy query's term towards
  the hard one's as training progresses (at step 5 it is plain InfoNCE).

  >>> q = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
  >>> d = jnp.array([[1.0, 0.1], [0.5, 0.5], [0.6, 0.8]])
  >>> loss_fn = jax.jit(progressive_info_nce, static_argnames='total_steps')
  >>> [round(float(loss_fn(q, d, step=s, total_steps=10, scale=5.0)[0]), 4) for s in (0, 5, 10)]
  [0.6522, 0.7676, 0.8597]
  """
  per_query, _, _, _ = _per_query(q, d, scale, hard_negatives, similarity, doc_ids,
                                  false_negative_ratio)
  difficulty = -jnp.expm1(-jax.lax.stop_gradient(per_query))
  base = _row_weights(weights, q.shape[0])
  w = progressive_weights(step, total_steps, difficulty, strength=strength, mask=base > 0) * base
  loss, metrics = info_nce(q, d, scale=scale, hard_negatives=hard_negatives,
                           similarity=similarity, doc_ids=doc_ids,
                           false_negative_ratio=false_negative_ratio, weights=w, **info_nce_kwargs)
  metrics['progressive_weight_max'] = jnp.max(w)
  return loss, metrics
