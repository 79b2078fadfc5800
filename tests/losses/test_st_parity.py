"""Pair, triplet, distillation and GIST losses against sentence-transformers' loss classes.

Every case gives the same float32 embeddings to an embedjax loss (jitted ``jax.value_and_grad``
with respect to every embedding input) and to the sentence-transformers loss class. The latter
sees them through ``TableModel``, a stand-in model whose forward looks its rows up in a torch leaf
tensor, so the gradient on that table is sentence-transformers' gradient with respect to the
embeddings. torch runs in float64 on the same (float32-representable) values, so the reference
carries no rounding of its own and the 1e-5 tolerance measures embedjax's float32 error alone.
All cases of one loss run in one ``jax.jit`` (compiling dominates this file's runtime).
Cases cover non-default margins / scales / temperatures, both label classes, tied scores, the
n-tuple and multi-negative layouts, and batches where the in-batch selections (online contrastive's
hard pairs, GIST's guide mask) are non-trivial, which each such case asserts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.losses.distill import distill_kl_div, margin_mse, mse
from embedjax.losses.gist import cached_gist, gist
from embedjax.losses.pairwise import (
  SIAMESE_DISTANCES,
  angle,
  contrastive_loss,
  cosent,
  online_contrastive,
  triplet,
)

torch = pytest.importorskip('torch')
st_losses = pytest.importorskip('sentence_transformers.sentence_transformer.losses')
from sentence_transformers import util as st_util

B, D, G = 6, 8, 5          # batch, embedding width, guide width
TOL = {'rtol': 1e-5, 'atol': 1e-5}
REF_DTYPE = torch.float64
FAST_COMPILE = {'xla_backend_optimization_level': 0}
Siamese = st_losses.SiameseDistanceMetric
Triplet = st_losses.TripletDistanceMetric


class TableModel(torch.nn.Module):
  """Stands in for a SentenceTransformer: a column's embeddings are rows features['idx'] of
  a table."""

  def __init__(self, table, tokenizer):
    super().__init__()
    self.table = table
    self.tokenizer = tokenizer      # the GIST losses want a transformers tokenizer on both
    self.max_seq_length = 16

  def forward(self, features):
    return {'sentence_embedding': self.table[features['idx']]}

  def __getitem__(self, i):         # the cached losses look for a StaticEmbedding at model[0]
    return self


@functools.cache
def _tokenizer():
  from tokenizers import Tokenizer, models
  from transformers import PreTrainedTokenizerFast
  vocab = {'[UNK]': 0, 'x': 1}
  word_level = models.WordLevel(vocab, unk_token='[UNK]')
  return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(word_level))


def _columns(arrays):
  """Input arrays as sentence-transformers' text columns: (B, D) as is, (B, K, D) as K columns."""
  out = []
  for x in arrays:
    x = np.asarray(x)
    out += [x] if x.ndim == 2 else [x[:, k] for k in range(x.shape[1])]
  return out


def _st_value_and_grads(make_loss, columns, labels, guide_columns=None):
  """sentence-transformers' loss on ``columns`` and its gradient per column (float64 numpy)."""
  table = torch.tensor(np.concatenate(columns), dtype=REF_DTYPE, requires_grad=True)
  model = TableModel(table, _tokenizer())
  feats = [{'idx': torch.arange(k * B, (k + 1) * B)} for k in range(len(columns))]
  if guide_columns is None:
    loss_module = make_loss(model)
  else:
    guide_table = torch.tensor(np.concatenate(guide_columns), dtype=REF_DTYPE)
    loss_module = make_loss(model, TableModel(guide_table, _tokenizer()))
  if labels is not None:
    labels = torch.as_tensor(np.asarray(labels))
    if labels.is_floating_point():
      labels = labels.to(REF_DTYPE)
  loss = loss_module(feats, labels)
  loss.backward()
  return float(loss.detach()), list(table.grad.numpy().reshape(len(columns), B, -1))


class Case(NamedTuple):
  """One comparison: ``loss(*arrays) -> (loss, metrics)`` against ``st_loss(model[, guide])``."""
  name: str
  loss: Callable
  arrays: list
  st_loss: Callable
  labels: object = None
  guide: list | None = None


def _check(cases: list[Case]) -> dict:
  """Compares every case with sentence-transformers (values, then each column's gradient) after
  one jit of all of them; returns {case name: embedjax metrics}."""
  arrays = [[jnp.asarray(x) for x in c.arrays] for c in cases]

  def run(all_arrays):
    return [jax.value_and_grad(c.loss, argnums=tuple(range(len(xs))), has_aux=True)(*xs)
            for c, xs in zip(cases, all_arrays)]

  # Compiling, not running, is what these tiny graphs cost; XLA's backend optimisations would
  # double it and change nothing the 1e-5 comparisons can see.
  compiled = jax.jit(run).lower(arrays).compile(compiler_options=FAST_COMPILE)
  out = {}
  for c, ((value, metrics), grads) in zip(cases, compiled(arrays)):
    ref_value, ref_grads = _st_value_and_grads(c.st_loss, _columns(c.arrays), c.labels,
                                               None if c.guide is None else _columns(c.guide))
    np.testing.assert_allclose(float(value), ref_value, err_msg=f'{c.name}: loss', **TOL)
    got = _columns(grads)
    assert len(got) == len(ref_grads), c.name
    for k, (g, r) in enumerate(zip(got, ref_grads)):
      np.testing.assert_allclose(g, r, err_msg=f'{c.name}: gradient of column {k}', **TOL)
    out[c.name] = metrics
  return out


@pytest.fixture(scope='module')
def data():
  rng = np.random.default_rng(0)
  f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
  a = f32(B, D)
  b = (a + 0.8 * f32(B, D)).astype(np.float32)
  negs = f32(B, 2, D)
  guide_a = f32(B, G)
  guide_b = (guide_a + 0.9 * f32(B, G)).astype(np.float32)
  guide_negs = (guide_a[:, None] + 1.2 * f32(B, 2, G)).astype(np.float32)
  return {'a': a, 'b': b, 'negs': negs, 'guide_a': guide_a, 'guide_b': guide_b,
          'guide_negs': guide_negs, 'odd_a': f32(B, 7), 'odd_b': f32(B, 7),
          'teacher': f32(B, 3), 'teacher_emb': f32(B, 2, D)}


TIED_SCORES = np.array([0.1, 0.5, 0.5, 0.9, 0.1, 0.3], np.float32)
BINARY = np.array([1, 0, 1, 0, 0, 1])


# ------------------------------------------------------------------------------------------------
# CoSENT / AnglE


def test_cosent(data):
  pair = [data['a'], data['b']]
  int_labels, bool_labels = np.array([0, 2, 1, 2, 0, 1]), BINARY.astype(bool)
  _check([
      Case('tied_scores', lambda a, b: cosent(a, b, TIED_SCORES), pair, st_losses.CoSENTLoss,
           TIED_SCORES),
      Case('dot_int_labels', lambda a, b: cosent(a, b, int_labels, scale=0.5, similarity='dot'),
           pair, lambda m: st_losses.CoSENTLoss(m, scale=0.5,
                                                similarity_fct=st_util.pairwise_dot_score),
           int_labels),
      Case('bool_labels', lambda a, b: cosent(a, b, bool_labels, scale=7.0), pair,
           lambda m: st_losses.CoSENTLoss(m, scale=7.0), bool_labels),
  ])


def test_angle(data):
  triple = [data['a'], data['b'], data['negs']]
  scores = np.linspace(0.2, 1.0, B).astype(np.float32)
  _check([
      Case('pairs_odd_dim', lambda a, b: angle(a, b, TIED_SCORES, scale=10.0),
           [data['odd_a'], data['odd_b']], lambda m: st_losses.AnglELoss(m, scale=10.0),
           TIED_SCORES),
      Case('ntuple', lambda a, b, n: angle(a, b, hard_negatives=n), triple, st_losses.AnglELoss),
      Case('ntuple_scores', lambda a, b, n: angle(a, b, scores, hard_negatives=n), triple,
           st_losses.AnglELoss, scores),
  ])


# ------------------------------------------------------------------------------------------------
# Triplet / contrastive / online contrastive


def test_triplet(data):
  triple = [data['a'], data['b'], data['negs'][:, 0]]
  cases = [Case('euclidean_default', triplet, triple, st_losses.TripletLoss)]
  for distance, margin, metric in (('cosine', 0.3, Triplet.COSINE),
                                   ('manhattan', 2.0, Triplet.MANHATTAN)):
    cases.append(Case(distance, functools.partial(triplet, distance=distance, margin=margin),
                      triple, lambda m, metric=metric, margin=margin: st_losses.TripletLoss(
                          m, distance_metric=metric, triplet_margin=margin)))
  metrics = _check(cases)
  # These margins leave some triplets inside the margin and some beyond it.
  assert 0.0 < float(metrics['cosine']['active']) < 1.0
  assert 0.0 < float(metrics['manhattan']['active']) < 1.0


def test_contrastive(data):
  pair = [data['a'], data['b']]
  cases = []
  for distance, margin, size_average, metric in (
      ('cosine', 0.3, True, Siamese.COSINE_DISTANCE),
      ('euclidean', 2.5, False, Siamese.EUCLIDEAN),
      ('manhattan', 6.0, True, Siamese.MANHATTAN)):
    # Both relu branches occur: some negatives inside the margin, some beyond it.
    d = np.asarray(SIAMESE_DISTANCES[distance](*pair))[BINARY == 0]
    assert (d < margin).any() and (d > margin).any(), distance
    loss = functools.partial(contrastive_loss, labels=BINARY, distance=distance, margin=margin,
                             size_average=size_average)
    cases.append(Case(distance, loss, pair, lambda m, kw={
        'distance_metric': metric, 'margin': margin, 'size_average': size_average}:
        st_losses.ContrastiveLoss(m, **kw), BINARY))
  _check(cases)


def _hard_pair_batch():
  """Pairs at set cosine distances: positives 0.02, 0.15, 0.5 and negatives 0.1, 0.9, 1.9. Hard
  positives are those above the closest negative (0.15, 0.5); hard negatives those below the
  farthest positive (0.1). Either class's own mean distance would select differently."""
  rng = np.random.default_rng(1)
  a = rng.normal(size=(B, D))
  b = np.empty_like(a)
  for i, dist in enumerate([0.02, 0.15, 0.5, 0.1, 0.9, 1.9]):
    u = a[i] / np.linalg.norm(a[i])
    v = rng.normal(size=D)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    cos = 1.0 - dist
    b[i] = 1.7 * (cos * u + np.sqrt(1.0 - cos ** 2) * v)
  return a.astype(np.float32), b.astype(np.float32), np.array([1, 1, 1, 0, 0, 0])


def test_online_contrastive(data):
  a, b, labels = _hard_pair_batch()
  pair = [data['a'], data['b']]
  euclidean = {'distance': 'euclidean', 'margin': 4.0}
  st_euclidean = lambda m: st_losses.OnlineContrastiveLoss(m, distance_metric=Siamese.EUCLIDEAN,
                                                           margin=4.0)
  cases = [Case('hard_subsets', lambda x, y: online_contrastive(x, y, labels), [a, b],
                st_losses.OnlineContrastiveLoss, labels)]
  for name, y in (('euclidean_margin', BINARY), ('all_positive', np.ones(B, int)),
                  ('all_negative', np.zeros(B, int))):
    cases.append(Case(name, functools.partial(online_contrastive, labels=y, **euclidean), pair,
                      st_euclidean, y))
  metrics = {k: (int(m['hard_positives']), int(m['hard_negatives']))
             for k, m in _check(cases).items()}
  assert metrics['hard_subsets'] == (2, 1)
  n_pos, n_neg = metrics['euclidean_margin']
  assert 0 < n_pos < 3 or 0 < n_neg < 3        # a proper subset of a class is selected
  # One class only: its own mean distance is the bar, so some but not all of its pairs are hard.
  assert 0 < metrics['all_positive'][0] < B and metrics['all_positive'][1] == 0
  assert 0 < metrics['all_negative'][1] < B and metrics['all_negative'][0] == 0


# ------------------------------------------------------------------------------------------------
# Distillation


def test_margin_mse(data):
  t, q, p = data['teacher'], data['a'], data['b']
  one_neg, negs = data['negs'][:, 0], data['negs']
  cosine = lambda m: st_losses.MarginMSELoss(m, similarity_fct=st_util.pairwise_cos_sim)
  _check([
      # labels (B,): one margin per row, one negative given as (B, D)
      Case('one_neg_margins', lambda q, p, n: margin_mse(q, p, n, t[:, 0]), [q, p, one_neg],
           st_losses.MarginMSELoss, t[:, 0]),
      # labels (B, 2) with one negative: raw [pos, neg] scores
      Case('one_neg_scores', lambda q, p, n: margin_mse(q, p, n, t[:, :2]), [q, p, one_neg],
           st_losses.MarginMSELoss, t[:, :2]),
      Case('two_negs_margins', lambda q, p, n: margin_mse(q, p, n, t[:, :2]), [q, p, negs],
           st_losses.MarginMSELoss, t[:, :2]),
      Case('two_negs_scores_cosine', lambda q, p, n: margin_mse(q, p, n, t, similarity='cosine'),
           [q, p, negs], cosine, t),
  ])


def test_distill_kl_div(data):
  q, p, negs = data['a'], data['b'], data['negs']
  t2, t3 = 3.0 * data['teacher'][:, :2], 3.0 * data['teacher']
  split = {'student_temperature': 0.5, 'teacher_temperature': 3.0}
  _check([
      Case('default_one_neg', lambda q, p, n: distill_kl_div(q, p, n, t2), [q, p, negs[:, :1]],
           st_losses.DistillKLDivLoss, t2),
      Case('split_temperatures', lambda q, p, n: distill_kl_div(q, p, n, t3, **split),
           [q, p, negs], lambda m: st_losses.DistillKLDivLoss(m, **split), t3),
      Case('cosine_shared_t', lambda q, p, n: distill_kl_div(q, p, n, t3, temperature=0.2,
                                                             similarity='cosine'),
           [q, p, negs], lambda m: st_losses.DistillKLDivLoss(
               m, temperature=0.2, similarity_fct=st_util.pairwise_cos_sim), t3),
  ])


def test_mse(data):
  teacher = data['teacher_emb']
  two_cols = np.stack([data['a'], data['b']], axis=1)
  _check([
      Case('one_column', lambda s: mse(s, teacher[:, 0]), [data['a']], st_losses.MSELoss,
           teacher[:, 0]),
      Case('broadcast_teacher', lambda s: mse(s, teacher[:, 0]), [two_cols], st_losses.MSELoss,
           teacher[:, 0]),
      Case('per_column_teacher', lambda s: mse(s, teacher), [two_cols], st_losses.MSELoss, teacher),
  ])


# ------------------------------------------------------------------------------------------------
# GIST / cached GIST


def _gist_case(name, data, st_loss, n_negs=0, fn=None, **kwargs):
  fn = fn or gist
  arrays = [data['a'], data['b']] + ([data['negs'][:, :n_negs]] if n_negs else [])
  guide = [data['guide_a'], data['guide_b']] + ([data['guide_negs'][:, :n_negs]] if n_negs else [])
  gn = guide[2] if n_negs else None

  def loss(q, d, *n):
    return fn(q, d, guide[0], guide[1], hard_negatives=n[0] if n else None,
              guide_hard_negatives=gn, **kwargs)
  return Case(name, loss, arrays, lambda m, g: st_loss(m, g, **kwargs), guide=guide)


GIST_CASES = {
    'pairs_default': (0, {}),
    'negative_relative': (1, {'margin_strategy': 'relative', 'margin': 0.1}),
    'negative_absolute_no_anchors': (1, {'margin': 0.05, 'contrast_anchors': False}),
    'pairs_no_positives_t05': (0, {'temperature': 0.05, 'contrast_positives': False}),
}


def test_gist(data):
  cases = [_gist_case(name, data, st_losses.GISTEmbedLoss, n, **kw)
           for name, (n, kw) in GIST_CASES.items()]
  for name, metrics in _check(cases).items():
    n_negs, kwargs = GIST_CASES[name]
    # The guide selects: more cells than the self-similarity diagonals are masked, and not all
    # the others.
    n_diagonals = kwargs.get('contrast_anchors', True) + kwargs.get('contrast_positives', True)
    n_blocks = 1 + n_diagonals + n_negs
    masked = round(float(metrics['masked_fraction']) * B * n_blocks * B)
    assert n_diagonals * B < masked < B * n_blocks * B - B, name


def test_cached_gist_equals_gist(data):
  """CachedGISTEmbedLoss on mini-batches of 4 over B = 6 (two uneven chunks) gives embedjax's
  ``gist`` value and gradients, also with two negatives (which GISTEmbedLoss does not take);
  ``cached_gist`` gives the same."""
  cached = functools.partial(st_losses.CachedGISTEmbedLoss, mini_batch_size=4)
  _check([
      _gist_case('two_negatives', data, cached, 2, margin=0.02),
      _gist_case('pairs_relative', data, cached, 0, margin_strategy='relative', margin=0.2,
                 temperature=0.03),
      _gist_case('cached_gist_fn', data, cached, 2, fn=cached_gist, margin_strategy='relative',
                 margin=0.1, contrast_positives=False),
  ])
