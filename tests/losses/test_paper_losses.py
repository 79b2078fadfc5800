"""The papers' contrastive losses (weighted.py, multi_positive.py) against float64 numpy references.

Each reference is written from the formula in the loss's docstring with python loops over rows
and candidates (not a vectorised copy of the JAX code). Values are compared in float64 (under
``jax.enable_x64``); gradients of the JAX losses (jax.grad) are compared with central finite
differences of the references, holding fixed whatever the loss puts under ``stop_gradient`` (so a
missing stop_gradient fails the test). Special cases tie each loss to ``info_nce``.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr

from embedjax.losses.contrastive import info_nce
from embedjax.losses.multi_positive import (average_ranks, cosent_loss, multi_positive_info_nce,
                                            order_aware_sts_loss, pearson_loss, pro_loss,
                                            rank_kl_loss)
from embedjax.losses.weighted import (focal_info_nce, hardness_weighted_info_nce,
                                      progressive_info_nce, progressive_weights)

B, D, H = 3, 4, 2
SCALE = 5.0


def _data(seed, b=B, d=D, h=H):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, d))
  pos = q + 0.7 * rng.normal(size=(b, d))
  negs = rng.normal(size=(b, h, d)) if h else None
  return q, pos, negs


# ----------------------------------------------------------------------------------------------
# Loop references


def _cos(a, b):
  return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def ref_columns(d, negs):
  """info_nce's candidate order: all positives, then negative k of every row, k = 0, 1, ..."""
  cols = [d[j] for j in range(len(d))]
  if negs is not None:
    for k in range(negs.shape[1]):
      for j in range(len(d)):
        cols.append(negs[j, k])
  return cols


def ref_sims(q, d, negs):
  cols = ref_columns(d, negs)
  return [[_cos(q[i], c) for c in cols] for i in range(len(q))]


def ref_allowed(sims, doc_ids=None, ratio=None):
  b = len(sims)
  allowed = [[True] * len(sims[0]) for _ in range(b)]
  for i in range(b):
    for c in range(len(sims[0])):
      if c == i:
        continue
      if doc_ids is not None and c < b and doc_ids[c] == doc_ids[i]:
        allowed[i][c] = False
      if ratio is not None:
        s = sims[i][i]
        if sims[i][c] > s - (1 - ratio) * abs(s):
          allowed[i][c] = False
  return allowed


def ref_hardness_weights(sims, allowed, alpha, normalize):
  out = []
  for i, row in enumerate(sims):
    negs = [c for c in range(len(row)) if c != i and allowed[i][c]]
    w = {c: math.exp(alpha * row[c]) for c in negs}
    if normalize and negs:
      mean = sum(w.values()) / len(negs)
      w = {c: v / mean for c, v in w.items()}
    out.append(w)
  return out


def ref_row_terms(sims, allowed, scale, neg_weights=None):
  """-log p_i per row, p_i = e^{t s_ii} / (e^{t s_ii} + sum_j w_ij e^{t s_ij})."""
  terms = []
  for i, row in enumerate(sims):
    top = math.exp(scale * row[i])
    den = top
    for c in range(len(row)):
      if c != i and allowed[i][c]:
        w = 1.0 if neg_weights is None else neg_weights[i][c]
        den += w * math.exp(scale * row[c])
    terms.append(-math.log(top / den))
  return terms


def ref_mean(terms, weights=None):
  w = [1.0] * len(terms) if weights is None else list(weights)
  return sum(t * v for t, v in zip(terms, w)) / sum(w)


def ref_hardness(q, d, negs, *, scale, alpha, normalize=False, doc_ids=None, ratio=None,
                 weights=None, frozen=None):
  sims = ref_sims(q, d, negs)
  allowed = frozen['allowed'] if frozen else ref_allowed(sims, doc_ids, ratio)
  w = frozen['w'] if frozen else ref_hardness_weights(sims, allowed, alpha, normalize)
  return ref_mean(ref_row_terms(sims, allowed, scale, w), weights)


def ref_focal(q, d, negs, *, scale, gamma, weights=None, frozen_focal=None):
  sims = ref_sims(q, d, negs)
  terms = ref_row_terms(sims, ref_allowed(sims), scale)
  focal = frozen_focal or [(1 - math.exp(-t)) ** gamma for t in terms]
  return ref_mean([f * t for f, t in zip(focal, terms)], weights)


def ref_multi_positive(q, d, negs, *, scale, pos_mask, mode, ratio=None, frozen=None):
  sims = ref_sims(q, d, negs)
  allowed = frozen or ref_allowed(sims, ratio=ratio)
  terms = []
  for i, row in enumerate(sims):
    positives = [c for c in range(len(row)) if pos_mask[i][c]]
    negatives = [c for c in range(len(row)) if not pos_mask[i][c] and allowed[i][c]]
    neg_sum = sum(math.exp(scale * row[c]) for c in negatives)
    if mode == 'mean':
      per = [-math.log(math.exp(scale * row[p]) / (math.exp(scale * row[p]) + neg_sum))
             for p in positives]
      terms.append(sum(per) / len(per))
    else:
      pos_sum = sum(math.exp(scale * row[p]) for p in positives)
      terms.append(-math.log(pos_sum / (pos_sum + neg_sum)))
  return ref_mean(terms)


def ref_codiemb_ir(q, groups, n_pos, temperature):
  """CoDiEmb's IR loss as its paper/code describes it, on its own data layout: groups (B, G, D)
  = each query's n_pos positives then its negatives; for every positive offset k, a softmax
  cross-entropy of each query over [every row's k-th positive, every row's negatives], averaged
  over the rows and then over k (embeddings L2-normalised, logits = cosine / temperature)."""
  b, g, _ = groups.shape
  total = 0.0
  for k in range(n_pos):
    cands, owner = [], []
    for j in range(b):
      cands.append(groups[j, k])
      owner.append((j, True))
      for n in range(n_pos, g):
        cands.append(groups[j, n])
        owner.append((j, False))
    loss_k = 0.0
    for i in range(b):
      logits = [_cos(q[i], c) / temperature for c in cands]
      target = [t for t, o in enumerate(owner) if o == (i, True)][0]
      loss_k += -(logits[target] - math.log(sum(math.exp(v) for v in logits)))
    total += loss_k / b
  return total / n_pos


def ref_pro(pred, gold, temperature, eps=1e-8):
  order = sorted(range(len(gold)), key=lambda i: -gold[i])
  total, count = 0.0, 0
  for a, k in enumerate(order[:-1]):
    tail = [j for j in order[a + 1:] if gold[k] - gold[j] > eps]
    if not tail:
      continue
    w_neg = [gold[k] - gold[j] for j in tail]
    head = pred[k] / temperature * max(w_neg)
    logits = [head] + [pred[j] / temperature * w for j, w in zip(tail, w_neg)]
    total += head - math.log(sum(math.exp(v) for v in logits))
    count += 1
  return -total / count if count else 0.0


def ref_pearson(pred, gold):
  n = len(pred)
  if max(gold) == min(gold):
    return 0.0
  mx, my = sum(pred) / n, sum(gold) / n
  cov = sum((x - mx) * (y - my) for x, y in zip(pred, gold)) / n
  vx = sum((x - mx) ** 2 for x in pred) / n
  vy = sum((y - my) ** 2 for y in gold) / n
  return 1.0 - cov / math.sqrt(vx * vy)


def ref_rank_kl(pred, gold, temperature):
  n = len(pred)
  ranks = rankdata(-np.asarray(gold), method='average') - 1
  ideal = [(n - 1 - r) / (n - 1) for r in ranks] if n > 1 else [0.0]
  zt = sum(math.exp(v / temperature) for v in ideal)
  zp = sum(math.exp(v / temperature) for v in pred)
  kl = 0.0
  for t, p in zip(ideal, pred):
    pt, pp = math.exp(t / temperature) / zt, math.exp(p / temperature) / zp
    kl += pt * (math.log(pt) - math.log(pp))
  return kl / n


def ref_cosent(pred, gold, temperature):
  total = 1.0
  for i in range(len(pred)):
    for j in range(len(pred)):
      if gold[i] > gold[j]:
        total += math.exp((pred[j] - pred[i]) / temperature)
  return math.log(total)


def ref_sts(q, d, gold, *, weights=(0.5, 2.0, 5.0, 0.0), temperature=0.05):
  pred = [_cos(a, b) for a, b in zip(q, d)]
  terms = (ref_pro(pred, gold, temperature), ref_pearson(pred, gold),
           ref_rank_kl(pred, gold, temperature), ref_cosent(pred, gold, temperature))
  return sum(w * t for w, t in zip(weights, terms))


def ref_progressive_weights(step, total, diff, strength, mask=None, normalize=False):
  n = len(diff)
  kept = [i for i in range(n) if mask is None or mask[i]]
  diff = list(diff)
  if normalize:
    lo, hi = min(diff[i] for i in kept), max(diff[i] for i in kept)
    diff = [(v - lo) / max(hi - lo, 1e-12) for v in diff]
  u = min(max(step / total, 0.0), 1.0)
  lam = strength * (2 * u - 1)
  z = sum(math.exp(lam * diff[i]) for i in kept)
  return [len(kept) * math.exp(lam * diff[i]) / z if i in kept else 0.0 for i in range(n)]


def fd_grad(f, x, eps=1e-6):
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += eps
    xm[idx] -= eps
    g[idx] = (f(xp) - f(xm)) / (2 * eps)
  return g


# Each test function runs once: XLA's backend optimisations cost more compile time than they save.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def _call(f, *args, x64=False):
  """jax.jit(f)(*args) on float arrays, results as numpy; float64 throughout when x64.

  Everything runs under one jit: op-by-op dispatch would compile each op separately, far
  slower. Integer inputs (doc ids, masks) and options reach f through its closure."""
  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    out = jax.jit(f, compiler_options=FAST_COMPILE)(
        *[None if a is None else jnp.asarray(a, dtype) for a in args])
    return jax.tree_util.tree_map(np.asarray, out)


def _x64(f, *args):
  return _call(f, *args, x64=True)


# ----------------------------------------------------------------------------------------------
# 1. Hardness-weighted InfoNCE


def test_hardness_alpha_zero_is_info_nce():
  q, d, negs = (x.astype(np.float32) for x in _data(1))
  masks = {'doc_ids': jnp.array([0, 1, 0]), 'false_negative_ratio': 0.9}

  def both(q, d, n):
    # normalize=True too: the normalised weights of an alpha=0 row are all 1 as well
    return (hardness_weighted_info_nce(q, d, hard_negatives=n, alpha=0.0),
            hardness_weighted_info_nce(q, d, hard_negatives=n, alpha=0.0, normalize=True,
                                       **masks)[0],
            info_nce(q, d, hard_negatives=n), info_nce(q, d, hard_negatives=n, **masks)[0])

  (got, m), got_masked, (want, wm), want_masked = _call(both, q, d, negs)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got_masked, want_masked, rtol=1e-6, atol=1e-6)
  assert abs(want_masked - want) > 1e-3       # the masks matter in this batch
  np.testing.assert_allclose(m['accuracy'], wm['accuracy'])


@pytest.mark.parametrize('normalize', [False, True])
def test_hardness_matches_reference_values_and_gradients(normalize):
  # Gradients in q, d, the hard negatives and the (learnable) scale, against finite differences
  # of the reference with the weights and masks held at their values (stop_gradient).
  q, d, negs = _data(2)
  doc_ids, ratio, alpha = np.array([0, 1, 0]), 0.95, 3.0
  weights = np.array([1.0, 0.5, 2.0])

  def jax_loss(q, d, negs, scale, w):
    return hardness_weighted_info_nce(q, d, hard_negatives=negs, scale=scale, alpha=alpha,
                                      normalize=normalize, doc_ids=jnp.asarray(doc_ids),
                                      false_negative_ratio=ratio, weights=w)

  (got, m), grads = _x64(jax.value_and_grad(jax_loss, argnums=(0, 1, 2, 3), has_aux=True),
                         q, d, negs, np.float64(SCALE), weights)
  kw = dict(alpha=alpha, doc_ids=doc_ids, ratio=ratio, weights=weights)
  np.testing.assert_allclose(got, ref_hardness(q, d, negs, scale=SCALE, normalize=normalize, **kw),
                             rtol=1e-12)
  assert m['max_hardness_weight'] > 1.0
  sims = ref_sims(q, d, negs)
  allowed = ref_allowed(sims, doc_ids, ratio)
  assert not all(all(row) for row in allowed)   # the masks do mask something here
  frozen = {'allowed': allowed, 'w': ref_hardness_weights(sims, allowed, alpha, normalize)}
  ref = lambda q_, d_, n_, s_: ref_hardness(q_, d_, n_, scale=s_, frozen=frozen, **kw)
  for got, want in zip(grads, [fd_grad(lambda x: ref(x, d, negs, SCALE), q),
                               fd_grad(lambda x: ref(q, x, negs, SCALE), d),
                               fd_grad(lambda x: ref(q, d, x, SCALE), negs),
                               fd_grad(lambda x: ref(q, d, negs, float(x)), np.array(SCALE))]):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# 2. Focal InfoNCE


@pytest.mark.parametrize('h', [0, H])
def test_focal_gamma_zero_is_info_nce(h):
  q, d, negs = (x if x is None else x.astype(np.float32) for x in _data(4, h=h))
  ids = jnp.array([3, 3, 1])
  got, want = _call(lambda q, d, n: (
      focal_info_nce(q, d, hard_negatives=n, gamma=0.0, doc_ids=ids)[0],
      info_nce(q, d, hard_negatives=n, doc_ids=ids)[0]), q, d, negs)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('gamma, detach', [(2.0, False), (0.5, True)])
def test_focal_matches_reference_values_and_gradients(gamma, detach):
  q, d, negs = _data(5)
  weights = np.array([1.0, 0.0, 3.0])

  def jax_loss(q, negs, w):
    return focal_info_nce(q, d, hard_negatives=negs, scale=SCALE, gamma=gamma,
                          stop_gradient_weight=detach, weights=w)[0]

  got, grads = _x64(jax.value_and_grad(jax_loss, argnums=(0, 1)), q, negs, weights)
  np.testing.assert_allclose(got, ref_focal(q, d, negs, scale=SCALE, gamma=gamma,
                                            weights=weights), rtol=1e-12)
  sims = ref_sims(q, d, negs)
  frozen = ([(1 - math.exp(-t)) ** gamma for t in ref_row_terms(sims, ref_allowed(sims), SCALE)]
            if detach else None)
  ref = lambda q_, n_: ref_focal(q_, d, n_, scale=SCALE, gamma=gamma, weights=weights,
                                 frozen_focal=frozen)
  np.testing.assert_allclose(grads[0], fd_grad(lambda x: ref(x, negs), q), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(grads[1], fd_grad(lambda x: ref(q, x), negs), rtol=1e-6, atol=1e-9)


def test_focal_down_weights_easy_queries():
  # A confidently solved batch: the focal loss is far below InfoNCE.
  q = np.eye(3, dtype=np.float32)
  plain, focal, m = _call(lambda q: (info_nce(q, q, scale=5.0)[0],
                                     *focal_info_nce(q, q, scale=5.0, gamma=2.0)), q)
  assert float(focal) < 0.1 * float(plain)
  assert 0.0 < float(m['mean_focal_weight']) < 0.1


# ----------------------------------------------------------------------------------------------
# 3. Multi-positive InfoNCE


def test_multi_positive_one_positive_is_info_nce():
  q, d, negs = (x.astype(np.float32) for x in _data(6))
  out = _call(lambda q, d, n: (
      [multi_positive_info_nce(q, d, hard_negatives=n, mode=m) for m in ('mean', 'sum')],
      info_nce(q, d, hard_negatives=n)), q, d, negs)
  modes, (want, wm) = out
  for got, m in modes:
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m['accuracy'], wm['accuracy'])
    assert float(m['positives_per_query']) == 1.0


@pytest.mark.parametrize('mode, ratio', [('mean', None), ('sum', None), ('mean', 0.8)])
def test_multi_positive_matches_reference(mode, ratio):
  q, d, negs = _data(7)
  c = B * (1 + H)
  mask = np.zeros((B, c), bool)
  mask[np.arange(B), np.arange(B)] = True
  mask[0, 1] = True          # another row's positive
  mask[1, B + 1] = True      # row 1's own first hard negative
  mask[2, 2 * B] = True      # another row's hard negative
  loss_fn = lambda q, d, negs: multi_positive_info_nce(
      q, d, hard_negatives=negs, scale=SCALE, positive_mask=jnp.asarray(mask), mode=mode,
      false_negative_ratio=ratio)[0]
  frozen = ref_allowed(ref_sims(q, d, negs), ratio=ratio)
  if ratio is not None:
    assert not all(all(row) for row in frozen)   # the filter does mask something here
  ref = lambda q_, d_, n_: ref_multi_positive(q_, d_, n_, scale=SCALE, pos_mask=mask, mode=mode,
                                              frozen=frozen)
  got, grads = _x64(jax.value_and_grad(loss_fn, argnums=(0, 1, 2)), q, d, negs)
  np.testing.assert_allclose(got, ref(q, d, negs), rtol=1e-12)
  for got, want in zip(grads, [fd_grad(lambda x: ref(x, d, negs), q),
                               fd_grad(lambda x: ref(q, x, negs), d),
                               fd_grad(lambda x: ref(q, d, x), negs)]):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_multi_positive_doc_ids_make_duplicates_positives():
  q, d, _ = _data(8, h=0)
  ids = np.array([4, 7, 4])
  mask = ids[:, None] == ids[None, :]
  got = _x64(lambda q, d: multi_positive_info_nce(q, d, scale=SCALE,
                                                  doc_ids=jnp.asarray(ids))[0], q, d)
  want = ref_multi_positive(q, d, None, scale=SCALE, pos_mask=mask, mode='mean')
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_multi_positive_mean_is_codiemb_ir_loss_for_one_query():
  # CoDiEmb's loss on its layout (one query, 3 positives, 2 negatives) equals mode='mean' with
  # the first positive as d and the rest as extra candidate columns marked positive.
  rng = np.random.default_rng(9)
  q = rng.normal(size=(1, D))
  groups = rng.normal(size=(1, 5, D))
  temperature = 0.2
  want = ref_codiemb_ir(q, groups, n_pos=3, temperature=temperature)
  mask = np.array([[True, True, True, False, False]])
  got = _x64(lambda q, d, negs: multi_positive_info_nce(
      q, d, hard_negatives=negs, scale=1 / temperature, positive_mask=jnp.asarray(mask))[0],
      q, groups[:, 0], groups[:, 1:])
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_multi_positive_row_without_positive_is_dropped():
  q, d, _ = (x if x is None else x.astype(np.float32) for x in _data(10, h=0))
  mask = np.eye(B, dtype=bool)
  mask[2, 2] = False
  got = _call(lambda q, d: multi_positive_info_nce(q, d, positive_mask=mask)[0], q, d)
  want = _call(lambda q, d, w: info_nce(q, d, weights=w)[0], q, d, np.array([1.0, 1.0, 0.0]))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 4. Order-aware STS


def _sts_data(seed, n=6):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n, D))
  b = a + rng.normal(size=(n, D))
  gold = np.array([4.0, 2.5, 2.5, 0.0, 5.0, 1.0][:n])   # with a tie
  return a, b, gold


def test_sts_terms_match_references():
  a, b, gold = _sts_data(11)
  pred = np.array([_cos(x, y) for x, y in zip(a, b)])
  t = 0.05
  *got, ranks = _x64(lambda p, g: (
      pro_loss(p, g, temperature=t), pearson_loss(p, g), rank_kl_loss(p, g, temperature=t),
      cosent_loss(p, g, temperature=t), average_ranks(g)), pred, gold)
  want = (ref_pro(pred, gold, t), ref_pearson(pred, gold), ref_rank_kl(pred, gold, t),
          ref_cosent(pred, gold, t))
  np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-10)
  np.testing.assert_array_equal(ranks, rankdata(-gold, method='average') - 1)


def test_sts_loss_value_gradient_and_mask():
  a, b, gold = _sts_data(12)
  weights = (0.5, 2.0, 5.0, 0.08)

  # Padding pairs (mask False, arbitrary values) must change nothing.
  rng = np.random.default_rng(0)
  pa = np.concatenate([a, rng.normal(size=(2, D))])
  pb = np.concatenate([b, rng.normal(size=(2, D))])
  pg = np.concatenate([gold, [9.0, -3.0]])
  n = len(gold)
  mask = jnp.array([True] * n + [False, False])

  def loss_fn(a, b, gold):
    return order_aware_sts_loss(a, b, scores=gold, cosent_weight=weights[3], mask=mask)

  (got, m), grads = _x64(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True), pa, pb, pg)
  want = ref_sts(a, b, gold, weights=weights)
  np.testing.assert_allclose(got, want, rtol=1e-10)
  np.testing.assert_allclose(grads[0][:n], fd_grad(lambda x: ref_sts(x, b, gold, weights=weights),
                                                   a), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grads[1][:n], fd_grad(lambda x: ref_sts(a, x, gold, weights=weights),
                                                   b), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(grads[0][n:], 0.0)
  pred = [_cos(x, y) for x, y in zip(a, b)]
  np.testing.assert_allclose(m['spearman'], spearmanr(pred, gold).statistic, rtol=1e-6)


def test_sts_perfect_order_is_minimal():
  # With the predicted similarities fixed as a set, assigning them in the gold order gives the
  # smallest value of every term (and of the total) over all 120 assignments.
  pred = np.array([0.9, 0.7, 0.4, 0.2, -0.1])
  gold = np.array([1.0, 4.0, 2.0, 5.0, 3.0])
  ordered = np.empty_like(pred)
  ordered[np.argsort(-gold)] = np.sort(pred)[::-1]
  fns = {'pro': lambda p: pro_loss(p, gold), 'pearson': lambda p: pearson_loss(p, gold),
         'rank_kl': lambda p: rank_kl_loss(p, gold), 'cosent': lambda p: cosent_loss(p, gold)}
  perms = np.array(list(itertools.permutations(pred)))
  at = int(np.flatnonzero((perms == ordered).all(axis=1))[0])
  values = _call(lambda perms: {k: jax.vmap(fn)(perms) for k, fn in fns.items()}, perms)
  for name in fns:
    assert values[name][at] <= values[name].min() + 1e-6, name
    assert values[name].max() > values[name][at] + 1e-3, name


def test_sts_pearson_of_a_linear_map_and_constant_gold():
  x = np.array([0.3, -0.2, 0.9, 0.1])
  linear, pearson, pro = _call(lambda x, c: (
      pearson_loss(x, 2 * x + 1), pearson_loss(x, c), pro_loss(x, c)), x, np.full(4, 3.0))
  assert float(linear) == pytest.approx(0.0, abs=1e-6)
  assert pearson == 0.0 and pro == 0.0     # constant gold scores: nothing to order


# ----------------------------------------------------------------------------------------------
# 5. Progressive weights


def test_progressive_weights_match_reference_and_jit():
  diff = np.array([0.1, 0.9, 0.5, 0.3])
  mask = np.array([True, True, False, True])
  f = jax.jit(progressive_weights, static_argnames='normalize',  # step and strength traced
              compiler_options=FAST_COMPILE)
  for step in (0, 3, 5, 8, 10, 12):
    for kw in ({}, {'mask': mask}, {'normalize': True, 'mask': mask}):
      got = f(jnp.asarray(step), 10, jnp.asarray(diff, jnp.float32), strength=3.0, **kw)
      want = ref_progressive_weights(step, 10, diff, 3.0, kw.get('mask'),
                                     kw.get('normalize', False))
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  flat = f(jnp.asarray(7), 10, jnp.asarray(diff, jnp.float32), strength=0.0)
  np.testing.assert_allclose(flat, 1.0)
  early = f(jnp.asarray(0), 10, jnp.asarray(diff, jnp.float32))
  late = f(jnp.asarray(10), 10, jnp.asarray(diff, jnp.float32))
  assert early[0] > early[1] and late[1] > late[0]   # easy first, hard last


def test_progressive_info_nce_is_weighted_info_nce():
  q, d, negs = (x.astype(np.float32) for x in _data(14))
  step, total, strength = 2, 10, 4.0
  loss_fn = lambda q, d, negs, strength: progressive_info_nce(
      q, d, step=step, total_steps=total, strength=strength, hard_negatives=negs, scale=SCALE)[0]
  # Gradient: the weights are constants (stop_gradient); info_nce computes in float32.
  (got, grad), plain, want = _call(lambda q, d, n: (
      jax.value_and_grad(loss_fn)(q, d, n, strength), loss_fn(q, d, n, 0.0),
      info_nce(q, d, hard_negatives=n, scale=SCALE)[0]), q, d, negs)
  sims = ref_sims(q.astype(np.float64), d.astype(np.float64), negs.astype(np.float64))
  terms = ref_row_terms(sims, ref_allowed(sims), SCALE)
  w = ref_progressive_weights(step, total, [1 - math.exp(-t) for t in terms], strength)
  assert max(w) > 1.2                      # the weights are far from uniform here
  np.testing.assert_allclose(got, ref_mean(terms, w), rtol=1e-5)
  np.testing.assert_allclose(plain, want, rtol=1e-6, atol=1e-6)

  def ref(x):
    s = ref_sims(x, d.astype(np.float64), negs.astype(np.float64))
    return ref_mean(ref_row_terms(s, ref_allowed(s), SCALE), w)

  np.testing.assert_allclose(grad, fd_grad(ref, q.astype(np.float64)), rtol=1e-3, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Registered in LOSSES, each loss must take the train step's call, loss(q, d,
# hard_negatives=, scale=<traced>, doc_ids=, **cfg.loss fields) with info_nce's config fields.


@pytest.mark.parametrize('fn', [hardness_weighted_info_nce, focal_info_nce,
                                multi_positive_info_nce], ids=lambda fn: fn.__name__)
def test_train_step_call_and_config_defaults(monkeypatch, fn):
  name = fn.__name__
  from ml_collections import config_dict

  from embedjax.losses import LOSSES
  from embedjax.train.base_config import loss_defaults
  monkeypatch.setitem(LOSSES, name, fn)
  assert {'scale', 'similarity', 'directions', 'partition_mode'} <= set(loss_defaults(name))
  fields = {k: v for k, v in loss_defaults('info_nce').items()
            if k != 'scale' and not isinstance(v, config_dict.FieldReference)}
  q, d, negs = _data(15)
  ids = jnp.array([0, 1, 2], jnp.int32)

  def f(log_scale, q, d, negs):
    return fn(q, d, hard_negatives=negs, scale=jnp.exp(log_scale), doc_ids=ids, **fields)[0]

  value, grad = _call(jax.value_and_grad(f), np.log(20.0), q, d, negs)
  assert np.isfinite(value) and np.isfinite(grad) and grad != 0.0
