"""Per-layer rematerialisation: the same params, outputs and gradients under every policy, and less
temporary memory (XLA's compiled memory analysis) with it than without."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.models.bert import BertConfig
from embedjax.models.decoder import DecoderConfig
from embedjax.models.embedder import embed
from embedjax.models.pretrained import init_model_params
from embedjax.models.remat import REMAT_POLICIES
from embedjax.models.spec import EmbedderSpec

BERT = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64)
DECODER = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
SPECS = {'bert': EmbedderSpec(bert=BERT, pooling='mean', max_seq_length=64),
         'decoder': EmbedderSpec(decoder=DECODER, pooling='last_token', max_seq_length=64)}


def with_remat(spec: EmbedderSpec, policy: str) -> EmbedderSpec:
  if spec.decoder is not None:
    return dataclasses.replace(spec, decoder=dataclasses.replace(spec.decoder, remat=policy))
  return dataclasses.replace(spec, bert=dataclasses.replace(spec.bert, remat=policy))


def loss_fn(spec):
  def f(params, ids, mask):
    return jnp.sum(embed(params, spec, ids, mask) ** 3)
  return f


# Each (backbone, policy) costs two gradient compilations: 'full' (the configs' choice) on the
# decoder and 'dots' on BERT cover both backbones' scanned layers and both policy kinds.
CASES = (('decoder', 'full'), ('bert', 'dots'))


@pytest.fixture(scope='module', params=[c for c in CASES], ids=[f'{b}-{p}' for b, p in CASES])
def setup(request):
  name, policy = request.param
  spec = SPECS[name]
  params = init_model_params(spec, jax.random.key(0))
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(1, 64, (4, 16)), jnp.int32)
  mask = jnp.asarray((np.arange(16)[None] < np.array([16, 9, 5, 1])[:, None]).astype(np.int32))
  base = jax.jit(jax.value_and_grad(loss_fn(spec)))(params, ids, mask)
  return name, policy, spec, params, ids, mask, base


def test_same_params_values_and_gradients(setup):
  name, policy, spec, params, ids, mask, (value, grads) = setup
  remat_spec = with_remat(spec, policy)
  fresh = init_model_params(remat_spec, jax.random.key(0))
  assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(params)
  v, g = jax.jit(jax.value_and_grad(loss_fn(remat_spec)))(params, ids, mask)
  # float32 reordering only; the loss is a small sum with cancellation (-0.0094 for the decoder),
  # where one CPU (AMD EPYC) differs by 5e-8 from the plain run
  np.testing.assert_allclose(v, value, rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(grads)):
    # recomputation fuses differently: float32 reordering only
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)


def test_remat_lowers_temporary_memory():
  # Big enough that activations dominate: 4 layers, 32 x 64 tokens.
  spec = EmbedderSpec(bert=dataclasses.replace(BERT, num_hidden_layers=4, hidden_size=32,
                                               intermediate_size=128), max_seq_length=64)
  params = jax.eval_shape(lambda: init_model_params(spec, jax.random.key(0)))
  ids = jax.ShapeDtypeStruct((32, 64), jnp.int32)

  def temp_bytes(policy):
    s = with_remat(spec, policy)
    grad = jax.jit(jax.grad(loss_fn(s)))
    return grad.lower(params, ids, ids).compile().memory_analysis().temp_size_in_bytes

  none, full = temp_bytes('none'), temp_bytes('full')
  assert full < 0.6 * none, (full, none)
  assert set(REMAT_POLICIES) == {'none', 'full', 'dots', 'dots_no_batch'}


def test_unknown_policy_is_named():
  with pytest.raises(ValueError, match="remat 'some' is not one of"):
    dataclasses.replace(BERT, remat='some')
  with pytest.raises(ValueError, match="remat 'some' is not one of"):
    dataclasses.replace(DECODER, remat='some')
