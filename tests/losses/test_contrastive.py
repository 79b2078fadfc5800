"""InfoNCE and Matryoshka against sentence-transformers' losses on the same embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.losses import info_nce, matryoshka

torch = pytest.importorskip('torch')
st_losses = pytest.importorskip('sentence_transformers.sentence_transformer.losses')
from sentence_transformers.base.losses.merged_forward import column_merging_disabled  # noqa: E402


class FakeModel(torch.nn.Module):
  """Stands in for a SentenceTransformer: 'encodes' a column by returning its given embeddings."""

  def __init__(self, dim):
    super().__init__()
    self.dim = dim

  def forward(self, features):
    return {'sentence_embedding': features['emb']}

  def get_embedding_dimension(self):
    return self.dim

  def _get_untruncated_embedding_dimension(self):  # read by MatryoshkaLoss from sentence-transformers 6.3
    return self.dim


def _columns(rng, b=6, d=16, h=0):
  q = rng.normal(size=(b, d)).astype(np.float32)
  pos = (q + 0.8 * rng.normal(size=(b, d))).astype(np.float32)
  negs = rng.normal(size=(b, h, d)).astype(np.float32) if h else None
  return q, pos, negs


def _st_value(loss, q, pos, negs):
  cols = [q, pos] + ([negs[:, j] for j in range(negs.shape[1])] if negs is not None else [])
  feats = [{'emb': torch.from_numpy(np.ascontiguousarray(c))} for c in cols]
  with column_merging_disabled():
    return float(loss(feats, None))


@pytest.mark.parametrize('h', [0, 2])
@pytest.mark.parametrize('directions, mode', [
    (('query_to_doc',), 'joint'),
    (('query_to_doc', 'doc_to_query'), 'per_direction'),
    (('query_to_doc', 'doc_to_query'), 'joint'),
    (('query_to_doc', 'query_to_query', 'doc_to_query', 'doc_to_doc'), 'joint'),
])
def test_info_nce_equals_mnrl(h, directions, mode):
  q, pos, negs = _columns(np.random.default_rng(h), h=h)
  ref = st_losses.MultipleNegativesRankingLoss(FakeModel(16), scale=20.0, directions=directions,
                                               partition_mode=mode)
  got, metrics = info_nce(q, pos, scale=20.0, hard_negatives=negs, directions=directions,
                          partition_mode=mode)
  assert float(got) == pytest.approx(_st_value(ref, q, pos, negs), abs=1e-5)
  assert 0.0 <= float(metrics['accuracy']) <= 1.0


def test_info_nce_equals_mnrl_with_dot_similarity():
  q, pos, negs = _columns(np.random.default_rng(7), h=1)
  from sentence_transformers.util import dot_score
  ref = st_losses.MultipleNegativesRankingLoss(FakeModel(16), scale=1.0, similarity_fct=dot_score)
  got, _ = info_nce(q, pos, scale=1.0, hard_negatives=negs, similarity='dot')
  assert float(got) == pytest.approx(_st_value(ref, q, pos, negs), abs=1e-4)


@pytest.mark.parametrize('h', [0, 1])
def test_matryoshka_equals_st_matryoshka_loss(h):
  q, pos, negs = _columns(np.random.default_rng(11), d=32, h=h)
  dims, weights = (32, 16, 8, 4), (1.0, 0.5, 2.0, 1.0)
  inner = st_losses.MultipleNegativesRankingLoss(FakeModel(32), scale=20.0)
  ref = st_losses.MatryoshkaLoss(FakeModel(32), inner, dims, weights)
  # MatryoshkaLoss decorates ref.model.forward; the inner loss must see the same model object.
  inner.model = ref.model
  got, metrics = matryoshka(info_nce, dims, weights)(q, pos, hard_negatives=negs, scale=20.0)
  assert float(got) == pytest.approx(_st_value(ref, q, pos, negs), abs=1e-5)
  for dim in dims:
    assert f'loss@{dim}' in metrics


def test_duplicate_positives_are_masked_like_a_deduplicated_batch():
  """With doc_ids, a repeated positive is no negative: row losses equal those of a batch without it."""
  rng = np.random.default_rng(3)
  q, pos, _ = _columns(rng, b=4)
  pos[3] = pos[1]                    # rows 1 and 3 cite the same document
  ids = np.array([10, 11, 12, 11])
  masked, _ = info_nce(q, pos, doc_ids=ids, weights=jnp.array([1.0, 0, 0, 0]))
  # Row 0's candidates without the duplicate column 3: the loss of a 3-column problem.
  logits = 20.0 * np.asarray(jax.vmap(lambda a: a)(q[:1] / np.linalg.norm(q[:1]))) @ (
      pos[:3] / np.linalg.norm(pos[:3], axis=1, keepdims=True)).T
  want = -(logits[0, 0] - np.log(np.exp(logits[0]).sum()))
  assert float(masked) == pytest.approx(float(want), abs=1e-4)
  # Row 1 with and without the mask: the duplicate (its own positive) must not be a negative.
  row1 = jnp.array([0, 1.0, 0, 0])
  unmasked1, _ = info_nce(q, pos, weights=row1)
  masked1, _ = info_nce(q, pos, doc_ids=ids, weights=row1)
  assert float(masked1) < float(unmasked1)


def test_false_negative_filter_masks_exactly_the_near_copies():
  q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  d = np.array([[1.0, 0.2], [0.1, 1.0]], np.float32)
  hn = np.array([[[1.0, 0.1]], [[1.0, 0.0]]], np.float32)  # row 0's negative beats its positive
  filtered, _ = info_nce(q, d, hard_negatives=hn, false_negative_ratio=0.95, weights=jnp.array([1.0, 0]))
  # Reference: row 0's softmax over its candidates minus the too-similar negative (numpy float64).
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  cand = unit(np.concatenate([d, hn[:, 0]]).astype(np.float64))
  s = 20 * cand @ unit(q[0].astype(np.float64))
  keep = s / 20 <= 0.95 * s[0] / 20
  keep[0] = True
  want = -(s[0] - np.log(np.exp(s[keep]).sum()))
  assert keep.sum() < len(s)
  assert float(filtered) == pytest.approx(want, abs=1e-4)
  plain, _ = info_nce(q, d, hard_negatives=hn)
  same, _ = info_nce(q, d, hard_negatives=hn, false_negative_ratio=1.5)
  assert float(same) == pytest.approx(float(plain), abs=1e-6)


def test_learnable_scale_gets_a_gradient_and_jit_matches_eager():
  q, pos, negs = _columns(np.random.default_rng(5), h=1)
  f = lambda s: info_nce(q, pos, scale=s, hard_negatives=negs)[0]
  g = jax.grad(f)(jnp.float32(20.0))
  assert np.isfinite(g) and g != 0
  assert float(jax.jit(f)(20.0)) == pytest.approx(float(f(20.0)), abs=1e-6)


def test_bad_arguments():
  q = np.zeros((2, 4), np.float32)
  with pytest.raises(ValueError, match='query_to_doc'):
    info_nce(q, q, directions=('doc_to_query',))
  with pytest.raises(ValueError, match='per_direction'):
    info_nce(q, q, directions=('query_to_doc', 'query_to_query'), partition_mode='per_direction')
  with pytest.raises(ValueError, match='exceeds'):
    matryoshka(info_nce, (8,))(q, q)
