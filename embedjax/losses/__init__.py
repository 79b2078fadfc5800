"""Embedding losses: pure functions ``(q, d, ...) -> (scalar, metrics dict)``.

  LOSSES       {name: loss function}; a config's ``loss.name`` is one of its keys
  get(name)    LOSSES[name], or a one-line error listing the choices and the closest one
  names()      the keys of LOSSES
  matryoshka   wraps any loss of LOSSES into its sum over truncated dimensions
  adaptive_layer, matryoshka_2d   the same over per-layer embeddings (AdaptiveLayerLoss, 2DMSE)
Outside LOSSES (they need labels, scores, teacher scores, guide embeddings or the step):
  pairwise     cosent, angle, triplet, contrastive, online_contrastive (sentence-transformers')
  distill      margin_mse, distill_kl_div, mse (sentence-transformers')
  gist         gist, cached_gist (GISTEmbed: a guide model's similarities mask false negatives)
  multi_positive  order_aware_sts_loss and its terms (CoDiEmb)
  weighted     progressive_weights, progressive_info_nce (sample weights over training)
"""

from __future__ import annotations

from typing import Callable

from embedjax.losses.contrastive import DEFAULT_SCALE, SIMILARITIES, cosine_matrix, info_nce
from embedjax.losses.distill import distill_kl_div, margin_mse, mse
from embedjax.losses.elastic import adaptive_layer, matryoshka_2d
from embedjax.losses.gist import cached_gist, gist
from embedjax.losses.matryoshka import matryoshka, truncate_and_renormalize
from embedjax.losses.multi_positive import (average_ranks, cosent_loss, multi_positive_info_nce,
                                            order_aware_sts_loss, pearson_loss, pro_loss,
                                            rank_kl_loss)
from embedjax.losses.pairwise import (PAIR_SIMILARITIES, SIAMESE_DISTANCES, TRIPLET_DISTANCES,
                                      angle, contrastive_loss, cosent, online_contrastive, triplet)
from embedjax.losses.weighted import (focal_info_nce, hardness_weighted_info_nce,
                                      progressive_info_nce, progressive_weights)
from embedjax.registry import lookup

# What a config's loss.name may choose. Each is called with (q, d) embeddings and those of
# hard_negatives, scale, doc_ids (pairs data) and scores (scored-pair data) it takes.
LOSSES: dict[str, Callable] = {'info_nce': info_nce,
                               'hardness_weighted_info_nce': hardness_weighted_info_nce,
                               'focal_info_nce': focal_info_nce,
                               'multi_positive_info_nce': multi_positive_info_nce,
                               'cosent': cosent, 'angle': angle,
                               'order_aware_sts': order_aware_sts_loss}
# The losses of LOSSES that train on scored pairs (text1, text2, score): their batches carry
# 'score' and no hard negatives.
SCORED_LOSSES = frozenset({'cosent', 'angle', 'order_aware_sts'})


def get(name: str) -> Callable:
  """The loss function called ``name``, e.g. ``get('info_nce')``."""
  return lookup(LOSSES, name, 'loss')


def names() -> tuple[str, ...]:
  """Names accepted by :func:`get`."""
  return tuple(LOSSES)


__all__ = ['DEFAULT_SCALE', 'LOSSES', 'PAIR_SIMILARITIES', 'SCORED_LOSSES', 'SIAMESE_DISTANCES', 'SIMILARITIES',
           'TRIPLET_DISTANCES', 'adaptive_layer', 'angle', 'average_ranks', 'cached_gist',
           'contrastive_loss', 'cosent', 'cosent_loss', 'cosine_matrix', 'distill_kl_div',
           'focal_info_nce', 'get', 'gist', 'hardness_weighted_info_nce', 'info_nce', 'margin_mse',
           'matryoshka', 'matryoshka_2d', 'mse', 'multi_positive_info_nce', 'names',
           'online_contrastive', 'order_aware_sts_loss', 'pearson_loss', 'pro_loss',
           'progressive_info_nce', 'progressive_weights', 'rank_kl_loss', 'triplet',
           'truncate_and_renormalize']
