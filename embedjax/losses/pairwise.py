"""Pair, triplet and score-ranking losses on row-aligned embeddings, as sentence-transformers' v6.

Each function reproduces one loss class of sentence-transformers (v6) on given embeddings: same
defaults, same reductions, same masking rules. Rows are aligned: row i of ``a`` is paired with row
i of ``b`` (no in-batch negatives, unlike ``info_nce``).

  cosent               CoSENTLoss: log(1 + sum exp(scale (s_low - s_high))) over ordered score pairs
  angle                AnglELoss: CoSENT on AnglE's angle similarity (also its n-tuple form)
  triplet              TripletLoss: mean relu(dist(a, p) - dist(a, n) + margin)
  contrastive_loss     ContrastiveLoss: 0.5 (y d^2 + (1 - y) relu(margin - d)^2), mean or sum
  online_contrastive   OnlineContrastiveLoss: the contrastive sum over in-batch hard pairs only

Pairwise similarities and distances are named as sentence-transformers' functions
(``PAIR_SIMILARITIES``, ``TRIPLET_DISTANCES``, ``SIAMESE_DISTANCES``). The two distance tables
differ on purpose: ``TripletDistanceMetric`` uses the plain norm of a - b, while
``SiameseDistanceMetric`` uses ``torch.nn.functional.pairwise_distance``, the norm of a - b + 1e-6.

References: Su 2022 / Huang et al. 2024 (CoSENT); Li & Li 2024 (AnglE); Hermans et al. 2017
(triplet); Hadsell, Chopra & LeCun 2006 (contrastive).
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

from embedjax.ops import l2_normalize

_NEG = -1e9  # a masked logit: exp() underflows to 0 in float32, unlike -inf it keeps grads finite
_PAIRWISE_DISTANCE_EPS = 1e-6  # torch.nn.functional.pairwise_distance's default eps


def _wide(x: jax.Array) -> jax.Array:
  """x in at least float32 (sentence-transformers upcasts half precision before similarities)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _l2_norm(x: jax.Array) -> jax.Array:
  """||x|| along the last axis with gradient 0 at x = 0 (as torch's norm), not NaN."""
  sq = jnp.sum(x * x, axis=-1)
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def pair_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """(..., D) x (..., D) -> (...) cosine of row pairs (``util.pairwise_cos_sim``).

  >>> a, b = jnp.array([[1.0, 0.0], [3.0, 3.0]]), jnp.array([[2.0, 0.0], [0.0, 1.0]])
  >>> print(pair_cosine(a, b).round(4))
  [1.     0.7071]
  """
  return jnp.sum(l2_normalize(_wide(a)) * l2_normalize(_wide(b)), axis=-1)


def _pair_dot(a, b):
  return jnp.sum(_wide(a) * _wide(b), axis=-1)


def _pair_neg_euclidean(a, b):
  return -_l2_norm(_wide(a) - _wide(b))


def _pair_neg_manhattan(a, b):
  return -jnp.sum(jnp.abs(_wide(a) - _wide(b)), axis=-1)


def pair_angle(a: jax.Array, b: jax.Array) -> jax.Array:
  """(..., D) x (..., D) -> (...) AnglE similarity ``util.pairwise_angle_sim``.

  |cos(a, b) + sin(a, b)| of the L2-normalised vectors, the sine pairing dimension i with i + D/2
  (an odd D is zero-padded by one, as sentence-transformers does): sum(a2 * b1 - a1 * b2) for
  halves a = [a1, a2], b = [b1, b2]. This is AnglE's complex-division score as its authors' code
  has it, not a geometric angle.

  >>> print(pair_angle(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]])))  # cos 0, "sin" -1
  [1.]
  """
  a, b = _wide(a), _wide(b)
  if a.shape[-1] % 2:
    pad = [(0, 0)] * (a.ndim - 1) + [(0, 1)]
    a, b = jnp.pad(a, pad), jnp.pad(b, pad)
  a, b = l2_normalize(a), l2_normalize(b)
  half = a.shape[-1] // 2
  cos = jnp.sum(a * b, axis=-1)
  sin = jnp.sum(a[..., half:] * b[..., :half] - a[..., :half] * b[..., half:], axis=-1)
  return jnp.abs(cos + sin)


# Row-pair similarities (larger = more similar), by sentence-transformers' util function:
# pairwise_cos_sim, pairwise_dot_score, pairwise_euclidean_sim, pairwise_manhattan_sim,
# pairwise_angle_sim.
PAIR_SIMILARITIES: dict[str, Callable] = {
    'cosine': pair_cosine, 'dot': _pair_dot, 'euclidean': _pair_neg_euclidean,
    'manhattan': _pair_neg_manhattan, 'angle': pair_angle}

# TripletDistanceMetric: COSINE = 1 - cos, EUCLIDEAN / MANHATTAN = plain norms of a - b.
TRIPLET_DISTANCES: dict[str, Callable] = {
    'cosine': lambda a, b: 1.0 - pair_cosine(a, b),
    'euclidean': lambda a, b: -_pair_neg_euclidean(a, b),
    'manhattan': lambda a, b: -_pair_neg_manhattan(a, b)}

# SiameseDistanceMetric: F.pairwise_distance adds eps to the difference before the norm.
SIAMESE_DISTANCES: dict[str, Callable] = {
    'cosine': lambda a, b: 1.0 - pair_cosine(a, b),
    'euclidean': lambda a, b: _l2_norm(_wide(a) - _wide(b) + _PAIRWISE_DISTANCE_EPS),
    'manhattan': lambda a, b: jnp.sum(jnp.abs(_wide(a) - _wide(b) + _PAIRWISE_DISTANCE_EPS),
                                      axis=-1)}


def _pick(table: dict, name: str, what: str) -> Callable:
  if name not in table:
    raise ValueError(f'{what} {name!r} is not one of {sorted(table)}')
  return table[name]


def _check_pairs(a, b, labels):
  chex.assert_rank([a, b], 2)
  chex.assert_equal_shape([a, b])
  chex.assert_shape(labels, (a.shape[0],))


def ranking_loss(sims: jax.Array, labels: jax.Array, scale,
                 mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """CoSENT's objective on (N,) pair similarities and their (N,) gold scores; pairs where the
  optional (N,) ``mask`` is False take no part (padding)."""
  labels = jnp.asarray(labels)
  if labels.dtype == jnp.bool_:
    labels = labels.astype(jnp.int32)
  s = sims * scale
  # higher[i, j]: pair i's gold score is strictly above pair j's (ties are not ordered), and the
  # term is exp(s_j - s_i): the lower-labelled pair should score lower.
  higher = labels[:, None] > labels[None, :]
  if mask is not None:
    keep = mask.astype(bool)
    higher = higher & keep[:, None] & keep[None, :]
  terms = jnp.where(higher, s[None, :] - s[:, None], _NEG)
  # The leading 0 is the "1 +" inside the log.
  loss = jax.nn.logsumexp(jnp.concatenate([jnp.zeros((1,), s.dtype), terms.ravel()]))
  n_ordered = jnp.sum(higher)
  agree = jnp.sum(higher & (sims[:, None] > sims[None, :]))
  metrics = {'loss': loss, 'pair_accuracy': agree / jnp.maximum(n_ordered, 1),
             'similarity': jnp.mean(sims)}
  return loss, metrics


def cosent(a: jax.Array, b: jax.Array, scores: jax.Array, *, scale: float = 20.0,
           similarity: str = 'cosine') -> tuple[jax.Array, dict]:
  """CoSENT loss (sentence-transformers' ``CoSENTLoss``).

  loss = log(1 + sum_{(i, j): y_i > y_j} exp(scale * (s_j - s_i))) with s_i = sim(a_i, b_i): every
  pair must score above every pair with a strictly lower gold score. A single scalar for the
  batch (a log-sum, not a mean over rows).

  Args:
    a, b: (B, D) embeddings of the two sides of each pair.
    scores: (B,) gold similarity scores (float, int or bool); equal scores are not ranked.
    scale: inverse temperature multiplying the similarities.
    similarity: a key of PAIR_SIMILARITIES ('cosine' as sentence-transformers' default).
  Returns:
    (scalar loss, metrics with 'loss', 'pair_accuracy' (fraction of strictly ordered score pairs
    whose similarities are in the same order) and 'similarity' (mean pair similarity)).

  Example: pairs whose cosine follows the gold order by a clear margin give a loss near 0, and
  reversing the gold order makes it large.

  >>> a = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
  >>> b = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])     # cosines 1, 0.71, 0
  >>> loss_fn = jax.jit(cosent)
  >>> loss, metrics = loss_fn(a, b, jnp.array([1.0, 0.5, 0.0]))
  >>> round(float(loss), 3), float(metrics['pair_accuracy'])
  (0.003, 1.0)
  >>> round(float(loss_fn(a, b, jnp.array([0.0, 0.5, 1.0]))[0]), 2)
  20.0
  """
  _check_pairs(a, b, scores)
  return ranking_loss(_pick(PAIR_SIMILARITIES, similarity, 'similarity')(a, b), scores, scale)


def angle(a: jax.Array, b: jax.Array, scores: jax.Array | None = None, *, scale: float = 20.0,
          hard_negatives: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """AnglE loss (sentence-transformers' ``AnglELoss``): CoSENT on ``pair_angle`` similarities.

  With ``hard_negatives`` it is sentence-transformers' n-tuple form: the anchors are paired with
  their positives (gold score ``scores``, or 1 when None) and with each negative (gold score
  1 - ``scores``), and CoSENT ranks all B * (1 + H) pairs together.

  Args:
    a, b: (B, D) anchors and their pair partners (positives in the n-tuple form).
    scores: (B,) gold scores; required without ``hard_negatives``.
    scale: inverse temperature.
    hard_negatives: optional (B, H, D) negatives of each anchor.
  Returns:
    (scalar loss, metrics as ``cosent``).

  Example: the AnglE score of a pair is 1 when equal, and here the gold order holds.

  >>> a = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  >>> loss, _ = jax.jit(angle)(a, jnp.array([[1.0, 0.0], [1.0, 1.0]]), jnp.array([1.0, 0.0]))
  >>> round(float(loss), 6)
  0.0
  """
  chex.assert_rank([a, b], 2)
  chex.assert_equal_shape([a, b])
  if hard_negatives is None:
    if scores is None:
      raise ValueError('angle needs scores for (a, b) pairs without hard_negatives')
    return cosent(a, b, scores, scale=scale, similarity='angle')
  chex.assert_rank(hard_negatives, 3)
  bsz, h, dim = hard_negatives.shape
  chex.assert_shape(hard_negatives, (a.shape[0], h, a.shape[1]))
  scores = jnp.ones((bsz,), jnp.float32) if scores is None else jnp.asarray(scores, jnp.float32)
  chex.assert_shape(scores, (bsz,))
  # Row order as sentence-transformers: anchors tiled H + 1 times against [positives; negative 1
  # of every row; negative 2 ...], gold scores [scores; 1 - scores repeated H times].
  anchors = jnp.tile(a, (h + 1, 1))
  others = jnp.concatenate([b, jnp.swapaxes(hard_negatives, 0, 1).reshape(bsz * h, dim)], axis=0)
  labels = jnp.concatenate([scores, jnp.tile(1 - scores, h)])
  return ranking_loss(pair_angle(anchors, others), labels, scale)


def triplet(anchor: jax.Array, positive: jax.Array, negative: jax.Array, *,
            distance: str = 'euclidean', margin: float = 5.0) -> tuple[jax.Array, dict]:
  """Triplet loss (sentence-transformers' ``TripletLoss``): mean relu(d(a, p) - d(a, n) + margin).

  Args:
    anchor, positive, negative: (B, D) embeddings.
    distance: a key of TRIPLET_DISTANCES ('euclidean' as sentence-transformers' default).
    margin: how much farther the negative must be (``triplet_margin``, default 5).
  Returns:
    (scalar loss, metrics with 'loss', 'accuracy' (d(a, p) < d(a, n)), 'active' (fraction of
    triplets inside the margin, i.e. with a gradient)).

  Example: the negative is 3 farther than the positive, so margin 5 leaves 2 per row.

  >>> anchor = jnp.zeros((2, 2))
  >>> positive, negative = jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([[4.0, 0.0], [0.0, 4.0]])
  >>> loss, metrics = jax.jit(triplet)(anchor, positive, negative)
  >>> float(loss), float(metrics['accuracy'])
  (2.0, 1.0)
  """
  chex.assert_rank([anchor, positive, negative], 2)
  chex.assert_equal_shape([anchor, positive, negative])
  dist = _pick(TRIPLET_DISTANCES, distance, 'distance')
  d_pos, d_neg = dist(anchor, positive), dist(anchor, negative)
  per_row = jax.nn.relu(d_pos - d_neg + margin)
  loss = jnp.mean(per_row)
  metrics = {'loss': loss, 'accuracy': jnp.mean(d_pos < d_neg), 'active': jnp.mean(per_row > 0)}
  return loss, metrics


def contrastive_loss(a: jax.Array, b: jax.Array, labels: jax.Array, *, distance: str = 'cosine',
                margin: float = 0.5, size_average: bool = True) -> tuple[jax.Array, dict]:
  """Contrastive loss (sentence-transformers' ``ContrastiveLoss``).

  Per pair 0.5 * (y d^2 + (1 - y) relu(margin - d)^2): positives (y = 1) are pulled together,
  negatives (y = 0) pushed to at least ``margin`` apart. Non-binary y weight the two terms (as
  sentence-transformers does, with a warning there).

  Args:
    a, b: (B, D) embeddings of the two sides of each pair.
    labels: (B,) 1 for similar pairs, 0 for dissimilar ones.
    distance: a key of SIAMESE_DISTANCES ('cosine' = 1 - cos, sentence-transformers' default).
    margin: the distance negatives should reach.
    size_average: mean over pairs (True) or sum.
  Returns:
    (scalar loss, metrics with 'loss', 'positive_distance', 'negative_distance' (means over the
    pairs labelled 1 / 0, 0 when there are none)).

  Example: a positive at cosine distance 1 costs 0.5 * 1^2; the orthogonal negative is already
  beyond margin 0.5 and costs nothing.

  >>> a = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  >>> b = jnp.array([[0.0, 1.0], [0.0, 1.0]])
  >>> loss, _ = jax.jit(contrastive_loss)(a, b, jnp.array([1, 0]))
  >>> round(float(loss), 6)   # mean of 0.5 and 0
  0.25
  """
  _check_pairs(a, b, labels)
  d = _pick(SIAMESE_DISTANCES, distance, 'distance')(a, b)
  labels = jnp.asarray(labels)
  y = labels.astype(d.dtype)
  per_pair = 0.5 * (y * d ** 2 + (1 - y) * jax.nn.relu(margin - d) ** 2)
  loss = jnp.mean(per_pair) if size_average else jnp.sum(per_pair)
  return loss, {'loss': loss, **_split_means(d, labels)}


def _split_means(d, labels):
  pos, neg = labels == 1, labels == 0
  return {'positive_distance': jnp.sum(jnp.where(pos, d, 0.0)) / jnp.maximum(pos.sum(), 1),
          'negative_distance': jnp.sum(jnp.where(neg, d, 0.0)) / jnp.maximum(neg.sum(), 1)}


def online_contrastive(a: jax.Array, b: jax.Array, labels: jax.Array, *, distance: str = 'cosine',
                       margin: float = 0.5) -> tuple[jax.Array, dict]:
  """Online contrastive loss (sentence-transformers' ``OnlineContrastiveLoss``).

  Only the batch's hard pairs count: negatives (label 0) closer than the farthest positive, and
  positives (label 1) farther than the closest negative. Without positives the negatives' bar is
  their own mean distance, without negatives the positives' bar is theirs; labels other than 0 / 1
  are ignored. loss = sum over hard positives of d^2 + sum over hard negatives of
  relu(margin - d)^2: a sum, not a mean. The selection is a mask over all B pairs, so shapes stay
  static under ``jit``.

  Args:
    a, b: (B, D) embeddings of the two sides of each pair.
    labels: (B,) 1 for similar pairs, 0 for dissimilar ones.
    distance: a key of SIAMESE_DISTANCES ('cosine' = 1 - cos, sentence-transformers' default).
    margin: the distance negatives should reach.
  Returns:
    (scalar loss, metrics with 'loss', 'hard_positives', 'hard_negatives' (counts),
    'positive_distance', 'negative_distance').

  Example: positive 0 (distance 0) is closer than the only negative (distance 0.2), so it is not
  hard; positive 1 (distance 1) is hard, and so is the negative (closer than that positive):
  1^2 + (0.5 - 0.2)^2.

  >>> a = jnp.ones((3, 2)).at[:, 1].set(0.0)
  >>> b = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])   # cosine distances 0, 1, 0.2
  >>> loss, metrics = jax.jit(online_contrastive)(a, b, jnp.array([1, 1, 0]))
  >>> round(float(loss), 4), int(metrics['hard_positives']), int(metrics['hard_negatives'])
  (1.09, 1, 1)
  """
  _check_pairs(a, b, labels)
  d = _pick(SIAMESE_DISTANCES, distance, 'distance')(a, b)
  labels = jnp.asarray(labels)
  pos, neg = labels == 1, labels == 0
  n_pos, n_neg = pos.sum(), neg.sum()
  # The bars select pairs; like the boolean indexing they replace they carry no gradient.
  ds = jax.lax.stop_gradient(d)
  neg_mean = jnp.sum(jnp.where(neg, ds, 0.0)) / jnp.maximum(n_neg, 1)
  pos_mean = jnp.sum(jnp.where(pos, ds, 0.0)) / jnp.maximum(n_pos, 1)
  neg_bar = jnp.where(n_pos > 0, jnp.max(jnp.where(pos, ds, -jnp.inf)), neg_mean)
  pos_bar = jnp.where(n_neg > 0, jnp.min(jnp.where(neg, ds, jnp.inf)), pos_mean)
  hard_neg = neg & (ds < neg_bar)
  hard_pos = pos & (ds > pos_bar)
  loss = (jnp.sum(jnp.where(hard_pos, d ** 2, 0.0))
          + jnp.sum(jnp.where(hard_neg, jax.nn.relu(margin - d) ** 2, 0.0)))
  metrics = {'loss': loss, 'hard_positives': hard_pos.sum(), 'hard_negatives': hard_neg.sum(),
             **_split_means(d, labels)}
  return loss, metrics
