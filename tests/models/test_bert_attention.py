"""BERT's fused attention path (``attention_impl``): padding as per-row lengths through
``jax.nn.dot_product_attention`` (cuDNN on a GPU, XLA's implementation here), checked against a
float64 numpy reference and against the einsum path, for right-padded rows and rows that are not
(their real tokens moved first), forward and gradients."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.models import bert
from embedjax.models.bert import BertConfig, BertEncoder

CFG = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=32)
RIGHT = np.array([[1] * 10, [1] * 6 + [0] * 4, [1] * 3 + [0] * 7])
LEFT = RIGHT[:, ::-1].copy()
HOLES = np.array([[1, 0, 1, 1, 0, 1, 1, 1, 1, 1]] * 3)  # not a prefix either


def _numpy_attention(q, k, v, lengths):
  """float64 softmax attention of each row's first ``length`` queries over its first ``length``
  keys; q, k, v (B, L, heads, D). Rows past a length are left at 0."""
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  out = np.zeros_like(q)
  for b, n in enumerate(lengths):
    logits = np.einsum('qhd,khd->hqk', q[b, :n], k[b, :n]) / np.sqrt(q.shape[-1])
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out[b, :n] = np.einsum('hqk,khd->qhd', p, v[b, :n])
  return out


def test_fused_attention_equals_float64_numpy():
  q, k, v = (jax.random.normal(key, (3, 10, 4, 8)) for key in jax.random.split(jax.random.key(0), 3))
  lengths = jnp.asarray([10, 6, 3])
  got = np.asarray(bert._attend_fused(q, k, v, lengths))
  want = _numpy_attention(q, k, v, [10, 6, 3])
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-6)  # padding queries: 0 on both
  assert (got[~RIGHT.astype(bool)] == 0).all()


def test_an_empty_row_gives_zeros_not_nan():
  q, k, v = (jax.random.normal(key, (2, 5, 2, 8)) for key in jax.random.split(jax.random.key(1), 3))
  got = np.asarray(bert._attend_fused(q, k, v, jnp.asarray([5, 0])))
  assert np.isfinite(got).all() and (got[1] == 0).all()
  np.testing.assert_allclose(got[0], _numpy_attention(q[:1], k[:1], v[:1], [5])[0], atol=2e-6)


def test_real_tokens_first_by_hand():
  order, lengths = bert.real_tokens_first(jnp.asarray(HOLES[:1]))
  assert order.tolist() == [[0, 2, 3, 5, 6, 7, 8, 9, 1, 4]] and lengths.tolist() == [8]
  order, lengths = bert.real_tokens_first(jnp.asarray(LEFT))
  assert lengths.tolist() == [10, 6, 3]
  assert order[2].tolist() == [7, 8, 9, 0, 1, 2, 3, 4, 5, 6]
  order, _ = bert.real_tokens_first(jnp.asarray(RIGHT))
  assert (np.asarray(order) == np.arange(10)).all()  # right-padded rows stay as they are


@pytest.fixture(scope='module')
def encoders():
  ids = jax.random.randint(jax.random.key(0), (3, 10), 1, 50)
  out = {}
  for dtype in ('float32', 'bfloat16'):
    einsum = BertEncoder(dataclasses.replace(CFG, dtype=dtype, attention_impl='xla'))
    fused = BertEncoder(dataclasses.replace(CFG, dtype=dtype, attention_impl='cudnn'))
    out[dtype] = einsum, fused
  params = out['float32'][0].init(jax.random.key(1), ids, jnp.asarray(RIGHT))
  return ids, params, out


@pytest.mark.parametrize('dtype,tol', [('float32', 2e-6), ('bfloat16', 3e-2)])
@pytest.mark.parametrize('mask', [RIGHT, LEFT, HOLES], ids=['right', 'left', 'holes'])
def test_encoder_fused_path_equals_einsum_path(encoders, dtype, tol, mask):
  ids, params, models = encoders
  einsum, fused = models[dtype]
  mask = jnp.asarray(mask)
  real = np.asarray(mask, bool)
  want = np.asarray(einsum.apply(params, ids, mask), np.float32)
  got = np.asarray(fused.apply(params, ids, mask), np.float32)
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got[real], want[real], atol=tol, rtol=tol)

  def loss(model):  # what reads only real tokens, as pooling does
    return lambda p: (model.apply(p, ids, mask).astype(jnp.float32) * mask[..., None]).sum()
  g_want, g_got = jax.grad(loss(einsum))(params), jax.grad(loss(fused))(params)
  for a, b in zip(jax.tree.leaves(g_want), jax.tree.leaves(g_got)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=50 * tol, rtol=50 * tol)


def test_the_fused_path_is_taken_only_where_it_applies(encoders):
  ids, params, models = encoders
  einsum, fused = models['float32']
  mask = jnp.asarray(RIGHT)
  # only the fused path sorts (each row's real tokens to its front)
  sorts = lambda model, **kw: 'sort[' in str(jax.make_jaxpr(
      lambda p: model.apply(p, ids, mask, **kw))(params))
  assert sorts(fused) and not sorts(einsum)
  segments = jnp.asarray(RIGHT)  # packed rows need segment masks: the einsum path
  assert not sorts(fused, segment_ids=segments)
  # dropout on the probabilities is the einsum path's alone
  training = lambda p: fused.apply(p, ids, mask, deterministic=False,
                                   rngs={'dropout': jax.random.key(2)})
  assert 'sort[' not in str(jax.make_jaxpr(training)(params))


def test_attention_path_rules(monkeypatch):
  cfg = dataclasses.replace(CFG, dtype='bfloat16')
  path = lambda c, **kw: bert.attention_path(
      c, **{'packed': False, 'dropout': False, 'blocked': False, **kw})
  assert path(cfg) == 'xla'  # 'auto' on a CPU
  monkeypatch.setattr(bert.jax, 'default_backend', lambda: 'gpu')
  assert path(cfg) == 'cudnn'
  assert path(dataclasses.replace(cfg, dtype='float32')) == 'xla'
  assert path(cfg, packed=True) == path(cfg, dropout=True) == path(cfg, blocked=True) == 'xla'
  assert path(dataclasses.replace(cfg, attention_impl='xla')) == 'xla'
  odd = dataclasses.replace(cfg, hidden_size=36, num_attention_heads=3)  # head width 12
  assert path(odd) == 'xla' and path(dataclasses.replace(odd, attention_impl='cudnn')) == 'cudnn'


def test_attention_impl_is_checked_and_not_written_to_hf():
  with pytest.raises(ValueError, match="attention_impl 'flash'"):
    dataclasses.replace(CFG, attention_impl='flash')
  hf = dataclasses.replace(CFG, attention_impl='cudnn').to_hf()
  assert 'attention_impl' not in hf
  assert BertConfig.from_hf({**hf, 'attention_impl': 'cudnn'}).attention_impl == 'auto'


def test_fused_path_under_remat_equals_without(encoders):
  # remat scans one checkpointed layer: the fused path's (mask, lengths, flag) tuple rides along
  ids, params, models = encoders
  _, fused = models['float32']
  scanned = BertEncoder(dataclasses.replace(fused.cfg, remat='full'))
  mask = jnp.asarray(RIGHT)
  loss = lambda model: lambda p: (model.apply(p, ids, mask) * mask[..., None]).sum()
  np.testing.assert_allclose(np.asarray(scanned.apply(params, ids, mask))[RIGHT.astype(bool)],
                             np.asarray(fused.apply(params, ids, mask))[RIGHT.astype(bool)],
                             atol=2e-6)
  for a, b in zip(jax.tree.leaves(jax.grad(loss(fused))(params)),
                  jax.tree.leaves(jax.grad(loss(scanned))(params))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)


def test_embed_reaches_the_fused_path_with_one_text_per_row(encoders):
  # embed() hands the encoder one text per row: no segment ids, so the fused path applies
  from embedjax.models.embedder import embed, embed_packed
  from embedjax.models.spec import EmbedderSpec
  ids, params, models = encoders
  einsum, fused = models['float32']
  mask = jnp.asarray(RIGHT)
  outs = {}
  for name, model in (('einsum', einsum), ('fused', fused)):
    spec = EmbedderSpec(bert=model.cfg, pooling='mean', normalize=True, max_seq_length=10)
    run = lambda p, spec=spec: embed(p, spec, ids, mask)
    outs[name] = np.asarray(run(params['params']))
    assert ('sort[' in str(jax.make_jaxpr(run)(params['params']))) == (name == 'fused')
    packed = lambda p, spec=spec: embed_packed(p, spec, ids, mask, jnp.zeros_like(ids), 2)
    assert 'sort[' not in str(jax.make_jaxpr(packed)(params['params']))  # several texts per row
  np.testing.assert_allclose(outs['fused'], outs['einsum'], atol=2e-6)
