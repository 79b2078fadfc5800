"""CoDiEmb's task-specific objectives: multi-positive InfoNCE for retrieval, order-aware losses
for semantic textual similarity (STS).

Reference: Zhang et al. 2025, "CoDiEmb: A Collaborative yet Distinct Framework for Unified
Representation Learning in Information Retrieval and Semantic Textual Similarity" (arXiv
2508.11442), and its released training code (github.com/TencentCloudADP/youtu-embedding,
``training/CoDiEmb/train/loss.py`` and ``model.py``), from which the exact forms below are taken:

  multi_positive_info_nce  IR: several positives per query over info_nce's candidate columns;
                           mode='mean' is what CoDiEmb trains with (``ContrastiveLoss``,
                           ``ir_mode='all'``), mode='sum' is its ``MultiPositiveInfoNCELoss``
  order_aware_sts_loss     STS: 0.5 * PRO + 2 * (1 - Pearson) + 5 * rank-KL (CoDiEmb's weights;
                           a CoSENT term, commented out there, is available with weight 0)
  pro_loss, pearson_loss, rank_kl_loss, cosent_loss   the STS terms on (N,) similarities
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from embedjax.losses.contrastive import DEFAULT_SCALE
from embedjax.losses.pairwise import ranking_loss
from embedjax.losses.weighted import _NEG, _query_to_doc_only, _wide, candidates
from embedjax.ops import l2_normalize

# CoDiEmb's STS recipe (model.py): loss = 0.5 * PRO + 2 * Pearson + 5 * rank-KL, temperature 0.05.
CODIEMB_STS_WEIGHTS = {'pro': 0.5, 'pearson': 2.0, 'rank_kl': 5.0, 'cosent': 0.0}
STS_TEMPERATURE = 0.05


# ----------------------------------------------------------------------------------------------
# 3. Multi-positive InfoNCE


def multi_positive_info_nce(q: jax.Array, d: jax.Array, *,
                            scale: float | jax.Array = DEFAULT_SCALE,
                            hard_negatives: jax.Array | None = None,
                            positive_mask: jax.Array | None = None, mode: str = 'mean',
                            directions: tuple[str, ...] = ('query_to_doc',),
                            partition_mode: str = 'joint', similarity: str = 'cosine',
                            doc_ids: jax.Array | None = None,
                            false_negative_ratio: float | None = None,
                            weights: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """InfoNCE with several positives per query (CoDiEmb's retrieval loss).

  Candidates and logits l_ic = t * s_ic are ``info_nce``'s (t = ``scale``; columns: the B
  in-batch documents, then negative 1 of every row, ...). P_i = the columns ``positive_mask``
  marks for row i, N_i = the others::

    mode='mean':  L_i = 1/|P_i| sum_{p in P_i} -log(e^{l_ip} / (e^{l_ip} + sum_{n in N_i} e^{l_in}))
    mode='sum':   L_i = -log(sum_{p in P_i} e^{l_ip} / sum_{c} e^{l_ic})

  'mean' averages one InfoNCE term per positive, each positive competing only with the
  negatives (the other positives leave its denominator); it is what CoDiEmb trains with
  (``ContrastiveLoss._loss_ir``, ``ir_mode='all'``: one cross-entropy per positive offset over
  [that positive, all negatives], averaged over offsets). In that code the candidates of a
  positive offset k are every row's k-th positive and its negatives, so another row's other
  positives are absent; here they stay in-batch negatives unless ``positive_mask`` marks them.
  'sum' (CoDiEmb's ``MultiPositiveInfoNCELoss``, defined in the same file but not used by its
  model) puts all positives in one numerator. With one positive per row (the diagonal) both
  equal ``info_nce``.

  Args:
    q: (B, D) queries. d: (B, D) in-batch documents (row i's first positive).
    hard_negatives: optional (B, H, D) further candidate columns (negatives unless marked).
    positive_mask: optional (B, C) bool over the C = B * (1 + H) candidate columns. Default: the
      diagonal (column i for row i), plus, with ``doc_ids``, every in-batch column whose doc id
      equals row i's (a duplicate positive counts as a positive, where info_nce masks it).
    mode: 'mean' (CoDiEmb) or 'sum'.
    scale, similarity: as in ``info_nce``.
    false_negative_ratio: as in ``info_nce`` (relative to the similarity of column i, row i's
      first positive): non-positive columns above the bar leave the denominators.
    directions, partition_mode: accepted for info_nce's config fields; query-to-document only.
    weights: optional (B,) row weights; rows without a positive get weight 0.
  Returns:
    (scalar loss, metrics): 'loss', 'accuracy' (top candidate is a positive),
    'positive_similarity', 'negative_similarity', 'positives_per_query'.

  Example: query 0 has two positives (columns 0 and 1) of similarity 1 and 0.6, no negatives
  in the batch except column 2; 'mean' averages two terms, 'sum' pools the positives.

  >>> q = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
  >>> mask = jnp.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]], bool)
  >>> loss_fn = jax.jit(multi_positive_info_nce, static_argnames='mode')
  >>> [round(float(loss_fn(q, q, scale=2.0, positive_mask=mask, mode=m)[0]), 4)
  ...  for m in ('mean', 'sum')]
  [0.5124, 0.4771]
  """
  if mode not in ('mean', 'sum'):
    raise ValueError(f"mode must be 'mean' or 'sum', got {mode!r}")
  _query_to_doc_only(directions, partition_mode)
  sim, allowed = candidates(q, d, hard_negatives=hard_negatives, similarity=similarity,
                            false_negative_ratio=false_negative_ratio)
  b, c = sim.shape
  if positive_mask is None:
    positive_mask = jnp.arange(c)[None, :] == jnp.arange(b)[:, None]
    if doc_ids is not None:
      chex.assert_shape(doc_ids, (b,))
      positive_mask = positive_mask.at[:, :b].set(doc_ids[:, None] == doc_ids[None, :])
  chex.assert_shape(positive_mask, (b, c))
  pos = positive_mask.astype(bool)
  n_pos = pos.sum(axis=1)
  # Masked (false-negative) columns leave every sum; positives are never masked.
  logits = jnp.where(allowed | pos, sim * scale, _NEG)
  if mode == 'sum':
    per_query = (jax.nn.logsumexp(logits, axis=1)
                 - jax.nn.logsumexp(jnp.where(pos, logits, _NEG), axis=1))
  else:
    neg_lse = jax.nn.logsumexp(jnp.where(pos, _NEG, logits), axis=1, keepdims=True)
    per_pos = jnp.logaddexp(logits, neg_lse) - logits
    per_query = jnp.sum(jnp.where(pos, per_pos, 0.0), axis=1) / jnp.maximum(n_pos, 1)
  w = jnp.ones((b,), jnp.float32) if weights is None else weights.astype(jnp.float32)
  w = jnp.where(n_pos > 0, w, 0.0)
  total = jnp.maximum(jnp.sum(w), 1e-9)
  loss = jnp.sum(jnp.where(n_pos > 0, per_query, 0.0) * w) / total
  top_is_pos = jnp.take_along_axis(pos, jnp.argmax(logits, axis=1)[:, None], axis=1)[:, 0]
  metrics = {
      'loss': loss,
      'accuracy': jnp.sum(top_is_pos * w) / total,
      'positive_similarity': jnp.sum(jnp.where(pos, sim, 0.0)) / jnp.maximum(pos.sum(), 1),
      'negative_similarity': (jnp.sum(jnp.where(~pos & allowed, sim, 0.0))
                              / jnp.maximum((~pos & allowed).sum(), 1)),
      'positives_per_query': jnp.mean(n_pos.astype(jnp.float32)),
  }
  return loss, metrics


# ----------------------------------------------------------------------------------------------
# 4. Order-aware STS losses (on predicted similarities vs gold scores of N pairs)


def _keep(x, mask):
  return jnp.ones(x.shape, bool) if mask is None else mask.astype(bool)


def average_ranks(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """0-based descending ranks of x (largest = 0), ties sharing their average rank, counted over
  the entries ``mask`` keeps (as ``scipy.stats.rankdata(-x, 'average') - 1``). O(N^2); no grad.

  >>> jax.jit(average_ranks)(jnp.array([0.2, 0.9, 0.2, 0.5])).tolist()
  [2.5, 0.0, 2.5, 1.0]
  """
  chex.assert_rank(x, 1)
  keep = _keep(x, mask)
  x = jax.lax.stop_gradient(x)
  both = keep[:, None] & keep[None, :]
  greater = jnp.sum((x[None, :] > x[:, None]) & both, axis=1)
  equal = jnp.sum((x[None, :] == x[:, None]) & both, axis=1)
  return (greater + (equal - 1) / 2.0).astype(jnp.float32)


def pro_loss(pred: jax.Array, gold: jax.Array, *, temperature: float = STS_TEMPERATURE,
             mask: jax.Array | None = None, eps: float = 1e-8) -> jax.Array:
  """CoDiEmb's PRO loss (after "Large Language Model based Long-tail Query Rewriting in Taobao
  Search"): for every pair k with some pair of strictly lower gold score (gold_k - gold_j > eps)::

    w_kj = gold_k - gold_j   (j below k)      w_k = max_j w_kj
    term_k = -log( e^{w_k s_k / T} / (e^{w_k s_k / T} + sum_{j below k} e^{w_kj s_j / T}) )

  and the loss is the mean of term_k over those k (0 if there are none). pred, gold: (N,)
  predicted similarities and gold scores; mask: optional (N,) bool of real pairs.

  >>> round(float(jax.jit(pro_loss)(jnp.array([0.9, 0.5, 0.1]), jnp.array([5.0, 3.0, 1.0]))), 4)
  0.0
  """
  chex.assert_rank([pred, gold], 1)
  keep = _keep(pred, mask)
  s = _wide(pred) / temperature
  gold = _wide(gold)
  gap = gold[:, None] - gold[None, :]                      # (k, j): gold_k - gold_j
  below = (gap > eps) & keep[:, None] & keep[None, :]
  w_kj = jnp.where(below, gap, 0.0)
  w_k = jnp.max(w_kj, axis=1)
  head = s * w_k
  tail = jnp.where(below, s[None, :] * w_kj, _NEG)
  term = jnp.logaddexp(head, jax.nn.logsumexp(tail, axis=1)) - head
  has = below.any(axis=1)
  return jnp.sum(jnp.where(has, term, 0.0)) / jnp.maximum(has.sum(), 1)


def pearson_loss(pred: jax.Array, gold: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """1 - Pearson correlation of pred and gold over the kept pairs (population moments), 0 when
  the gold scores are all equal (as CoDiEmb's ``PearsonCorrelationLoss``). Where every pred is
  equal CoDiEmb's code gives NaN; here r = 0 (the variance product is floored at 1e-24).

  >>> pred, gold = jnp.array([0.1, 0.5, 0.9]), jnp.array([1.0, 2.0, 3.0])
  >>> round(float(jax.jit(pearson_loss)(pred, gold)), 6)
  0.0
  """
  chex.assert_rank([pred, gold], 1)
  keep = _keep(pred, mask)
  y = _wide(gold)
  constant_gold = jnp.max(jnp.where(keep, y, -jnp.inf)) == jnp.min(jnp.where(keep, y, jnp.inf))
  return jnp.where(constant_gold | (keep.sum() == 0), 0.0, 1.0 - _pearson_r(pred, gold, keep))


def _pearson_r(pred, gold, keep):
  x, y = _wide(pred), _wide(gold)
  n = jnp.maximum(keep.sum(), 1).astype(x.dtype)
  mx = jnp.sum(jnp.where(keep, x, 0.0)) / n
  my = jnp.sum(jnp.where(keep, y, 0.0)) / n
  dx = jnp.where(keep, x - mx, 0.0)
  dy = jnp.where(keep, y - my, 0.0)
  cov, vx, vy = jnp.sum(dx * dy) / n, jnp.sum(dx * dx) / n, jnp.sum(dy * dy) / n
  return cov / jnp.sqrt(jnp.maximum(vx * vy, 1e-24))


def rank_kl_loss(pred: jax.Array, gold: jax.Array, *, temperature: float = STS_TEMPERATURE,
                 mask: jax.Array | None = None) -> jax.Array:
  """CoDiEmb's rank-KL loss: KL(target || softmax(pred / T)) / N, the target being the softmax of
  the gold scores' ideal rank scores (N - 1 - rank) / (N - 1) / T (ranks 0-based, descending,
  ties averaged), so only the gold *order* matters. ``F.kl_div(..., reduction='batchmean')`` on
  a 1-D input divides the summed KL by N, which is kept.

  >>> pred = jnp.array([1.0, 0.5, 0.0])
  >>> same, reverse = jnp.array([9.0, 5.0, 1.0]), jnp.array([1.0, 5.0, 9.0])
  >>> loss_fn = jax.jit(rank_kl_loss)
  >>> float(loss_fn(pred, same)) < float(loss_fn(pred, reverse))
  True
  """
  chex.assert_rank([pred, gold], 1)
  keep = _keep(pred, mask)
  x = _wide(pred)
  n = keep.sum()
  ranks = average_ranks(gold, keep).astype(x.dtype)
  ideal = jnp.where(n > 1, (n - 1 - ranks) / jnp.maximum(n - 1, 1), 0.0)
  target = jax.nn.softmax(jnp.where(keep, ideal / temperature, -jnp.inf))
  log_pred = jax.nn.log_softmax(jnp.where(keep, x / temperature, -jnp.inf))
  log_target = jax.nn.log_softmax(jnp.where(keep, ideal / temperature, -jnp.inf))
  kl = jnp.where(keep, target * (jnp.where(keep, log_target, 0.0) - jnp.where(keep, log_pred, 0.0)),
                 0.0)
  return jnp.sum(kl) / jnp.maximum(n, 1)


def cosent_loss(pred: jax.Array, gold: jax.Array, *, temperature: float = STS_TEMPERATURE,
                mask: jax.Array | None = None) -> jax.Array:
  """CoSENT (Su 2022; CoDiEmb's ``CoSentLoss``): log(1 + sum_{gold_i > gold_j} e^{(s_j - s_i)/T}).

  >>> round(float(jax.jit(cosent_loss)(jnp.array([0.9, 0.1]), jnp.array([1.0, 0.0]))), 4)
  0.0
  """
  chex.assert_rank([pred, gold], 1)
  return ranking_loss(_wide(pred), _wide(gold), 1.0 / temperature, mask)[0]


def pair_similarity(a: jax.Array, b: jax.Array, similarity: str = 'cosine') -> jax.Array:
  """(N, D), (N, D) -> (N,) similarity of each row of a with the same row of b."""
  chex.assert_rank([a, b], 2)
  chex.assert_equal_shape([a, b])
  if similarity == 'cosine':
    a, b = l2_normalize(_wide(a)), l2_normalize(_wide(b))
  elif similarity != 'dot':
    raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
  return jnp.sum(_wide(a) * _wide(b), axis=-1)


def order_aware_sts_loss(q: jax.Array, d: jax.Array, *, scores: jax.Array,
                         pro_weight: float = 0.5, pearson_weight: float = 2.0,
                         rank_kl_weight: float = 5.0, cosent_weight: float = 0.0,
                         temperature: float = STS_TEMPERATURE, similarity: str = 'cosine',
                         mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """CoDiEmb's order-aware STS objective on a batch of N scored pairs.

  With s_i = sim(q_i, d_i) and gold scores g_i::

    L = pro_weight * PRO(s, g) + pearson_weight * (1 - pearson(s, g))
        + rank_kl_weight * rankKL(s, g) + cosent_weight * CoSENT(s, g)

  Defaults are CoDiEmb's released recipe (``model.py``: 0.5 * PRO + 2 * Pearson + 5 * rank-KL,
  temperature 0.05; its CoSENT term, weight 0.08, is commented out there, hence 0 here). PRO and
  CoSENT are pairwise/listwise ranking terms over pairs with g_i > g_j, rank-KL matches the
  predicted distribution to the gold order, Pearson the gold scale. CoDiEmb also adds an STS
  InfoNCE on a middle layer when its ``multi_layer_loss`` is on; that is not included here.

  Args:
    q, d: (N, D) the two sides of each pair. scores: (N,) gold similarity scores.
    mask: optional (N,) bool, False for padding pairs.
  Returns:
    (scalar loss, metrics): 'loss', each term ('pro', 'pearson', 'rank_kl', 'cosent', unweighted)
    and 'spearman' (rank correlation of s and g, a monitor without gradient).

  Example: predictions already in the gold order give a small loss; reversing them a large one.

  >>> a = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
  >>> b = jnp.array([[1.0, 0.1], [1.0, 1.0], [0.1, 1.0]])
  >>> loss_fn = jax.jit(order_aware_sts_loss)
  >>> good, m = loss_fn(a, b, scores=jnp.array([5.0, 3.0, 0.0]))
  >>> bad, _ = loss_fn(a, b, scores=jnp.array([0.0, 3.0, 5.0]))
  >>> float(good) < 0.1 < 5.0 < float(bad), round(float(m['spearman']), 4)
  (True, 1.0)
  """
  pred = pair_similarity(q, d, similarity)
  chex.assert_shape(scores, pred.shape)
  terms = {'pro': pro_loss(pred, scores, temperature=temperature, mask=mask),
           'pearson': pearson_loss(pred, scores, mask=mask),
           'rank_kl': rank_kl_loss(pred, scores, temperature=temperature, mask=mask),
           'cosent': cosent_loss(pred, scores, temperature=temperature, mask=mask)}
  weight = {'pro': pro_weight, 'pearson': pearson_weight, 'rank_kl': rank_kl_weight,
            'cosent': cosent_weight}
  # A zero weight drops the term from the sum (not 0 * term), so its value never reaches grads.
  loss = sum(weight[k] * v for k, v in terms.items() if weight[k])
  loss = jnp.asarray(loss, pred.dtype)
  keep = _keep(pred, mask)
  spearman = _pearson_r(average_ranks(pred, keep), average_ranks(scores, keep), keep)
  return loss, {'loss': loss, **terms, 'spearman': jax.lax.stop_gradient(spearman)}
