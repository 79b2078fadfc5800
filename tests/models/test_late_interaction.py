"""Late interaction: token vectors from an encoder, query augmentation, token pruning, and the
MaxSim InfoNCE loss against float64 numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.losses.late_interaction import maxsim_info_nce
from embedjax.models import late_interaction as li
from embedjax.models.bert import BertConfig
from embedjax.models.embedder import embed
from embedjax.models.pretrained import init_params
from embedjax.models.spec import EmbedderSpec

BERT = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=24)


def test_token_vectors_are_the_projected_unit_token_states():
  params = init_params(BERT, jax.random.key(0))
  head = li.init_head(jax.random.key(1), 16, 8)
  ids = jnp.array([[2, 5, 7, 9, 0, 0], [3, 4, 0, 0, 0, 0]], jnp.int32)
  mask = (ids != 0).astype(jnp.int32)
  spec = EmbedderSpec(bert=BERT, pooling='cls', normalize=False, max_seq_length=24)
  vecs = np.asarray(li.token_embeddings(params, head, spec, ids, mask))
  # The [CLS] state is what cls pooling returns: project and normalise it in float64.
  cls = np.asarray(embed(params, spec, ids, mask), np.float64)
  want = cls @ np.asarray(head['kernel'], np.float64)
  want /= np.linalg.norm(want, axis=1, keepdims=True)
  np.testing.assert_allclose(vecs[:, 0], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(vecs[mask == 1], axis=1), 1.0, rtol=1e-5)
  assert np.all(vecs[mask == 0] == 0)


def test_query_augmentation_pads_with_mask_tokens_that_count():
  ids = jnp.array([[101, 7, 102, 0], [101, 102, 0, 0]], jnp.int32)
  mask = (ids != 0).astype(jnp.int32)
  new_ids, new_mask = li.augment_queries(ids, mask, 6, mask_token_id=103)
  assert new_ids.tolist() == [[101, 7, 102, 103, 103, 103], [101, 102, 103, 103, 103, 103]]
  assert new_mask.tolist() == [[1] * 6] * 2
  with pytest.raises(ValueError, match='4 tokens long but the augmented length is 3'):
    li.augment_queries(ids, mask, 3, mask_token_id=103)


def test_token_pruning_by_id_and_by_importance():
  ids = jnp.array([[101, 5, 1010, 6, 1012, 102]], jnp.int32)
  mask = jnp.array([[1, 1, 1, 1, 1, 0]], jnp.int32)
  assert li.drop_tokens(ids, mask, {1010, 1012}).tolist() == [[1, 1, 0, 1, 0, 0]]
  importance = jnp.array([[0.5, 3.0, 1.0, 3.0, 2.0, 9.0]])
  # The padded position (importance 9) never counts; the tie at 3.0 keeps both (m = 2).
  assert li.keep_top_tokens(mask, importance, 2).tolist() == [[0, 1, 0, 1, 0, 0]]
  assert li.keep_top_tokens(mask, importance, 10).tolist() == mask.tolist()


def _np_maxsim(q, qm, d, dm):
  s = np.einsum('bid,njd->bnij', q, d)
  s = np.where(dm[None, :, None, :] != 0, s, -np.inf).max(-1)
  return np.where(qm[:, None, :] != 0, s, 0).sum(-1)


@pytest.mark.parametrize('with_negatives', [False, True])
def test_maxsim_info_nce_equals_a_float64_reference(with_negatives):
  rng = np.random.default_rng(0)
  b, tq, td, tn, dim, h = 4, 5, 7, 6, 8, 2
  q = rng.standard_normal((b, tq, dim)).astype(np.float32)
  d = rng.standard_normal((b, td, dim)).astype(np.float32)
  qm = (rng.random((b, tq)) > 0.3).astype(np.int32)
  dm = np.ones((b, td), np.int32)
  dm[:, 5:] = 0
  kw, docs, masks = {}, d.astype(np.float64), dm
  if with_negatives:
    n = rng.standard_normal((b, h, tn, dim)).astype(np.float32)
    nm = np.ones((b, h, tn), np.int32)
    nm[..., 4:] = 0
    kw = dict(hard_negatives=n, hard_negatives_mask=nm)
    pad = np.zeros((b * h, td, dim))
    pad[:, :tn] = n.reshape(b * h, tn, dim)
    pm = np.zeros((b * h, td), np.int32)
    pm[:, :tn] = nm.reshape(b * h, tn)
    docs, masks = np.concatenate([docs, pad]), np.concatenate([dm, pm])
  scores = 0.5 * _np_maxsim(q.astype(np.float64), qm, docs, masks)
  logz = np.log(np.exp(scores - scores.max(1, keepdims=True)).sum(1)) + scores.max(1)
  want = np.mean(logz - scores[np.arange(b), np.arange(b)])
  loss, metrics = jax.jit(lambda *a: maxsim_info_nce(*a, scale=0.5, **kw))(q, qm, d, dm)
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert float(metrics['accuracy']) == np.mean(scores.argmax(1) == np.arange(b))
  # Its gradient against central differences of the float64 loss along one direction.
  grad = np.asarray(jax.grad(lambda x: maxsim_info_nce(x, qm, d, dm, scale=0.5, **kw)[0])(q))
  direction = rng.standard_normal(q.shape)
  eps = 1e-4

  def f64(x):
    s = 0.5 * _np_maxsim(x, qm, docs, masks)
    m = s.max(1, keepdims=True)
    return np.mean(np.log(np.exp(s - m).sum(1)) + m[:, 0] - s[np.arange(b), np.arange(b)])

  fd = (f64(q + eps * direction) - f64(q - eps * direction)) / (2 * eps)
  assert float(np.sum(grad * direction)) == pytest.approx(fd, rel=1e-3, abs=1e-5)
