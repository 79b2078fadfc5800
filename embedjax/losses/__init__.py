"""Embedding losses: pure functions ``(q, d, ...) -> (scalar, metrics dict)``.

  LOSSES       {name: loss function}; a config's ``loss.name`` is one of its keys
  get(name)    LOSSES[name], or a one-line error listing the choices and the closest one
  names()      the keys of LOSSES
  matryoshka   wraps any loss of LOSSES into its sum over truncated dimensions
  adaptive_layer, matryoshka_2d   the same over per-layer embeddings (AdaptiveLayerLoss, 2DMSE)
  mix_hard_negatives   adds synthetic negatives mixed from each query's hardest (KaLM-V2 / MoCHi)
Outside LOSSES (they need labels, scores, teacher scores, guide embeddings or the step):
  pairwise     cosent, angle, triplet, contrastive, online_contrastive (sentence-transformers')
  distill      margin_mse, distill_kl_div, mse (sentence-transformers')
  embedding_mse  LEAF's student-to-teacher embedding distance (in LOSSES, with gist, cached_gist,
               margin_mse and distill_kl_div, which the step feeds from a guide: GUIDE_LOSSES)
  gist         gist, cached_gist (GISTEmbed: a guide model's similarities mask false negatives)
  MULTI_VECTOR_LOSSES  maxsim_info_nce (ColBERT training over token vectors and their masks)
  multi_positive  order_aware_sts_loss and its terms (CoDiEmb)
  weighted     progressive_weights, progressive_info_nce (sample weights over training)
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from embedjax.losses.contrastive import DEFAULT_SCALE, SIMILARITIES, cosine_matrix, info_nce
from embedjax.losses.distill import distill_kl_div, margin_mse, mse
from embedjax.losses.elastic import adaptive_layer, matryoshka_2d
from embedjax.losses.mixing import mix_hard_negatives
from embedjax.losses.gist import cached_gist, gist
from embedjax.losses.late_interaction import maxsim_info_nce
from embedjax.losses.matryoshka import matryoshka, truncate_and_renormalize
from embedjax.losses.multi_positive import (average_ranks, cosent_loss, multi_positive_info_nce,
                                            order_aware_sts_loss, pearson_loss, pro_loss,
                                            rank_kl_loss)
from embedjax.losses.pairwise import (PAIR_SIMILARITIES, SIAMESE_DISTANCES, TRIPLET_DISTANCES,
                                      angle, contrastive_loss, cosent, online_contrastive, triplet)
from embedjax.losses.weighted import (focal_info_nce, hardness_weighted_info_nce,
                                      progressive_info_nce, progressive_weights)
from embedjax.registry import lookup

# Embedding distillation (LEAF): the objectives of embedding_mse.
EMBEDDING_OBJECTIVES = ('l2', 'mse', 'cosine')


def embedding_mse(q: jax.Array, target: jax.Array, *,
                  objective: str = 'l2') -> tuple[jax.Array, dict]:
  """Distance of the student's embeddings to a teacher's embeddings of the same texts (LEAF).

  LEAF (Vujanic & Rueckstiess 2025, "LEAF: Knowledge Distillation of Text Embedding Models with
  Teacher-Aligned Representations") trains the student so that its embedding of a text lands on
  the teacher's embedding of it, which lets student queries search an index of teacher documents.
  Objectives, each a mean over the B rows:
    'l2'      ||q_i - t_i||^2 (LEAF's loss; = 2 - 2 cos when both sides are unit vectors)
    'mse'     ||q_i - t_i||^2 / D (sentence-transformers' MSELoss, ``losses.mse``)
    'cosine'  1 - cos(q_i, t_i)

  Args:
    q: (B, D) student embeddings (its projection head gives it the teacher's width D).
    target: (B, D) teacher embeddings (targets: no gradient).
    objective: one of EMBEDDING_OBJECTIVES.
  Returns:
    (scalar loss, metrics with 'loss' and 'cosine' (mean cosine of student and teacher)).

  >>> q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  >>> t = jnp.array([[0.0, 1.0], [0.0, 1.0]])
  >>> [round(float(jax.jit(embedding_mse, static_argnames='objective')(q, t, objective=o)[0]), 4)
  ...  for o in EMBEDDING_OBJECTIVES]
  [1.0, 0.5, 0.5]
  """
  chex.assert_rank([q, target], 2)
  chex.assert_equal_shape([q, target])
  if objective not in EMBEDDING_OBJECTIVES:
    raise ValueError(f'objective {objective!r} is not one of {EMBEDDING_OBJECTIVES}')
  target = jax.lax.stop_gradient(target).astype(q.dtype)
  # eps inside the norms: a zero row (padding, a dead student) gives cosine 0, not NaN.
  cos = jnp.sum(q * target, axis=-1) / (
      jnp.linalg.norm(q, axis=-1) * jnp.linalg.norm(target, axis=-1) + 1e-12)
  if objective == 'cosine':
    loss = jnp.mean(1.0 - cos)
  else:
    loss = jnp.mean(jnp.sum((q - target) ** 2, axis=-1))
    if objective == 'mse':
      loss = loss / q.shape[-1]
  return loss, {'loss': loss, 'cosine': jnp.mean(cos)}


# What a config's loss.name may choose. Each is called with (q, d) embeddings and those of
# hard_negatives, scale, doc_ids (pairs data) and scores (scored-pair data) it takes.
LOSSES: dict[str, Callable] = {'info_nce': info_nce,
                               'hardness_weighted_info_nce': hardness_weighted_info_nce,
                               'focal_info_nce': focal_info_nce,
                               'multi_positive_info_nce': multi_positive_info_nce,
                               'cosent': cosent, 'angle': angle,
                               'order_aware_sts': order_aware_sts_loss,
                               # distillation (embedjax.train.distillation; see GUIDE_LOSSES)
                               'embedding_mse': embedding_mse, 'gist': gist,
                               'cached_gist': cached_gist, 'margin_mse': margin_mse,
                               'distill_kl_div': distill_kl_div}
# Losses over token vectors and their masks (the step's representation 'multi_vector').
MULTI_VECTOR_LOSSES: dict[str, Callable] = {'maxsim_info_nce': maxsim_info_nce}
# The losses of LOSSES that train on scored pairs (text1, text2, score): their batches carry
# 'score' and no hard negatives.
SCORED_LOSSES = frozenset({'cosent', 'angle', 'order_aware_sts'})
# The losses of LOSSES that read a frozen guide (teacher) model's embeddings of the batch
# (config train.guide): GIST masks false negatives with them; MarginMSE and DistillKLDiv train on
# the guide's scores of (query, positive, negatives).
GUIDE_LOSSES = frozenset({'gist', 'cached_gist', 'margin_mse', 'distill_kl_div'})
# The losses of LOSSES that train on teacher embeddings precomputed per text: their batches carry
# 'target' (B, D) and no document column (data.train='distill:...').
TARGET_LOSSES = frozenset({'embedding_mse'})


def get(name: str) -> Callable:
  """The loss function called ``name``, e.g. ``get('info_nce')``."""
  return lookup(LOSSES, name, 'loss')


def names() -> tuple[str, ...]:
  """Names accepted by :func:`get`."""
  return tuple(LOSSES)


__all__ = ['DEFAULT_SCALE', 'EMBEDDING_OBJECTIVES', 'GUIDE_LOSSES', 'LOSSES', 'TARGET_LOSSES', 'PAIR_SIMILARITIES', 'SCORED_LOSSES', 'SIAMESE_DISTANCES', 'SIMILARITIES',
           'TRIPLET_DISTANCES', 'adaptive_layer', 'angle', 'average_ranks', 'cached_gist',
           'contrastive_loss', 'cosent', 'cosent_loss', 'cosine_matrix', 'distill_kl_div',
           'embedding_mse', 'focal_info_nce', 'get', 'gist', 'hardness_weighted_info_nce', 'info_nce', 'margin_mse',
           'matryoshka', 'matryoshka_2d', 'mix_hard_negatives', 'mse', 'multi_positive_info_nce', 'names',
           'online_contrastive', 'order_aware_sts_loss', 'pearson_loss', 'pro_loss',
           'progressive_info_nce', 'progressive_weights', 'rank_kl_loss', 'triplet',
           'truncate_and_renormalize']
