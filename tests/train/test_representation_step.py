"""The train step with multi-vector (ColBERT) and sparse (SPLADE) representations: its loss is the
loss of the representation computed outside the step, and gradient caching gives the same
gradients as the plain step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.config import ConfigError
from embedjax.losses import info_nce
from embedjax.losses.late_interaction import maxsim_info_nce
from embedjax.models import late_interaction as li
from embedjax.models.bert import BertConfig
from embedjax.models.pretrained import init_params
from embedjax.models.spec import EmbedderSpec
from embedjax.models.splade import flops, init_mlm_head, splade_weights
from embedjax.train.step import StepConfig, build_loss, loss_and_grads
from batches import FAST_COMPILE, random_batch

BERT = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)
SPEC = EmbedderSpec(bert=BERT, pooling='mean', normalize=True, max_seq_length=32)
MASK_ID, SKIP = 3, (5, 6)


def _params(kind):
  head = (li.init_head(jax.random.key(1), 16, 8) if kind == 'multi_vector'
          else init_mlm_head(jax.random.key(1), BERT))
  return {'encoder': init_params(BERT, jax.random.key(0)), 'head': head}


def _cfg(kind, **kw):
  if kind == 'multi_vector':
    return StepConfig(spec=SPEC, loss='maxsim_info_nce', representation='multi_vector', scale=1.0,
                      query_augment=8, mask_token_id=MASK_ID, skip_ids=SKIP, dropout=False, **kw)
  return StepConfig(spec=SPEC, loss='info_nce', representation='sparse', scale=1.0,
                    loss_kwargs=(('similarity', 'dot'),), flops_weights=(0.3, 0.1), dropout=False,
                    **kw)


def _outside(kind, params, batch):
  """The loss of the representation, computed without the step."""
  enc, head = params['encoder'], params['head']
  b, h, ld = batch['neg_ids'].shape
  negs = (batch['neg_ids'].reshape(b * h, ld), batch['neg_mask'].reshape(b * h, ld))
  if kind == 'multi_vector':
    qi, qm = li.augment_queries(batch['query_ids'], batch['query_mask'], 8, MASK_ID)
    vec = lambda ids, m: li.token_embeddings(enc, head, SPEC, ids, m)  # noqa: E731
    n = vec(*negs).reshape(b, h, ld, -1)
    return maxsim_info_nce(
        vec(qi, qm), qm, vec(batch['doc_ids'], batch['doc_mask']),
        li.drop_tokens(batch['doc_ids'], batch['doc_mask'], SKIP), hard_negatives=n,
        hard_negatives_mask=li.drop_tokens(batch['neg_ids'], batch['neg_mask'], SKIP))[0]
  w = lambda ids, m: splade_weights(enc, head, SPEC, ids, m)  # noqa: E731
  q, d, n = w(batch['query_ids'], batch['query_mask']), w(batch['doc_ids'], batch['doc_mask']), w(*negs)
  value = info_nce(q, d, hard_negatives=n.reshape(b, h, -1), scale=1.0, similarity='dot')[0]
  return value + 0.3 * flops(q) + 0.1 * flops(jnp.concatenate([d, n]))


@pytest.mark.parametrize('kind', ['multi_vector', 'sparse'])
def test_step_loss_is_the_representation_loss_and_grad_cache_matches(kind):
  params = _params(kind)
  batch = random_batch(np.random.default_rng(0), 4, 6, 10, h=1)
  plain = jax.jit(lambda p: loss_and_grads(_cfg(kind), p, batch, jax.random.key(2)),
                  compiler_options=FAST_COMPILE)
  cached = jax.jit(lambda p: loss_and_grads(_cfg(kind, chunk_size=2, grad_cache=True), p, batch,
                                            jax.random.key(2)), compiler_options=FAST_COMPILE)
  (loss, metrics), grads = plain(params)
  want = jax.jit(lambda p: _outside(kind, p, batch), compiler_options=FAST_COMPILE)(params)
  assert float(loss) == pytest.approx(float(want), rel=1e-5)
  (loss2, _), grads2 = cached(params)
  assert float(loss2) == pytest.approx(float(loss), rel=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                         grads, grads2)
  assert set(grads) == {'encoder', 'head'}
  assert float(optax_norm(grads['head'])) > 0
  if kind == 'sparse':
    assert float(metrics['flops_query']) > 0 and float(metrics['flops_doc']) > 0


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def test_representation_and_loss_must_agree():
  with pytest.raises(ConfigError, match='representation multi_vector trains with'):
    build_loss(StepConfig(spec=SPEC, loss='info_nce', representation='multi_vector'))
  with pytest.raises(ConfigError, match='representation multi_vector trains with'):
    build_loss(StepConfig(spec=SPEC, loss='maxsim_info_nce'))
  with pytest.raises(ConfigError, match='trains without Matryoshka'):
    build_loss(StepConfig(spec=SPEC, representation='sparse', matryoshka_dims=(8,)))
  with pytest.raises(ConfigError, match="representation 'dense'"):
    build_loss(StepConfig(spec=SPEC, representation='dense'))
