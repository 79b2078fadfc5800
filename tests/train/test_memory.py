"""The memory planner: per-device division by mesh sizes by hand, and totals against XLA's compiled
memory analysis of the real train step (CPU backend, compiled from shapes only, never run)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from embedjax.models.bert import BertConfig
from embedjax.models.decoder import DecoderConfig
from embedjax.models.pretrained import init_model_params
from embedjax.models.spec import EmbedderSpec
from embedjax.train.base_config import base_config
from embedjax.train.memory import memory_table, plan_memory
from embedjax.train.optim import make_optimizer
from embedjax.train.state import create_state
from embedjax.train.step import StepConfig, make_train_step

TINY_BERT = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=64)
TINY_DECODER = DecoderConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
BASE_BERT = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                       num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512)
# name -> (backbone, batch, query_len, doc_len, chunk)
SHAPES = {'tiny_bert': (TINY_BERT, 8, 16, 32, 4), 'tiny_decoder': (TINY_DECODER, 8, 16, 32, 4),
          'base_bert': (BASE_BERT, 8, 32, 64, 4)}


def _spec(backbone, remat):
  backbone = dataclasses.replace(backbone, remat=remat)
  if isinstance(backbone, BertConfig):
    return EmbedderSpec(bert=backbone, max_seq_length=64)
  return EmbedderSpec(decoder=backbone, pooling='last_token', max_seq_length=64)


def _xla_total(spec, b, lq, ld, chunk, grad_cache):
  """argument + temp + output - alias bytes of the jitted step (state donated, as the loop runs
  it), compiled from ShapeDtypeStructs only."""
  params = {'encoder': jax.eval_shape(lambda k: init_model_params(spec, k), jax.random.key(0))}
  optim = base_config().optim
  optim.update(lr=1e-3, warmup_steps=0, decay='constant', clip_norm=0.0)
  tx = make_optimizer(optim, params, 100)
  state = jax.eval_shape(lambda p: create_state(p, tx), params)
  i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  batch = {'query_ids': i32(b, lq), 'query_mask': i32(b, lq), 'doc_ids': i32(b, ld),
           'doc_mask': i32(b, ld), 'doc_key': i32(b)}
  cfg = StepConfig(spec=spec, chunk_size=chunk if grad_cache else 0, grad_cache=grad_cache,
                   dropout=False)
  step = jax.jit(make_train_step(cfg, tx), donate_argnums=0)
  m = step.lower(state, batch, jax.random.key(0)).compile().memory_analysis()
  return (m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
          - m.alias_size_in_bytes)


# Known miss, kept visible (strict): at the tiny shapes, remat 'full' with gradient caching
# compiles to more temporaries than the planner's largest-column chunk + cached embeddings
# (XLA 1.56 MB vs 0.95 MB planned for the BERT, 1.19 MB vs 0.98 MB for the decoder); the same
# combination holds for a 3-layer H 48 BERT (-5%) and the 0.1B shape. Not yet modelled.
_MISS = pytest.mark.xfail(strict=True, reason='tiny remat full + grad cache: unmodelled XLA CPU '
                          'temporaries (see the comment above CASES)')


def _marks(name, remat, gc):
  marks = [pytest.mark.slow] if name == 'base_bert' else []
  if name.startswith('tiny') and remat == 'full' and gc:
    marks.append(_MISS)
  return marks


# The 0.1B shape compiles slowly on 2 cores: one combination only, the one with the most terms
# (remat 'full' and gradient caching).
# Each tiny backbone: remat 'none' with gradient caching, and the combinations that differ from it
# in one term each ('full' without caching for the decoder, 'none' without for BERT), plus the
# known miss ('full' with caching).
_TINY = {'tiny_bert': (('none', True), ('none', False), ('full', True)),
         'tiny_decoder': (('none', True), ('full', False), ('full', True))}
CASES = [pytest.param(name, remat, gc, marks=_marks(name, remat, gc))
         for name in SHAPES for remat, gc in _TINY.get(name, (('full', True),))]


@pytest.mark.parametrize('name, remat, grad_cache', CASES)
def test_total_within_10_percent_of_xla(name, remat, grad_cache):
  backbone, b, lq, ld, chunk = SHAPES[name]
  spec = _spec(backbone, remat)
  plan = plan_memory(spec, batch=b, query_len=lq, doc_len=ld, chunk_size=chunk,
                     grad_cache=grad_cache)
  xla = _xla_total(spec, b, lq, ld, chunk, grad_cache)
  assert plan.total == pytest.approx(xla, rel=0.10), (plan.total, xla, plan.to_dict())


# A BERT small enough to count by hand: H 8, 2 heads, I 16, one layer, vocab 10, 16 positions.
HAND = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=16, max_position_embeddings=16)
# Matrices: word 10x8 + positions 16x8 + token types 2x8 = 224; q, k, v, o 4 x 8x8 = 256;
# intermediate 8x16 + output 16x8 = 256 -> 736. Vectors: embedding LayerNorm 16; q/k/v/o biases
# 32; attention LayerNorm 16; intermediate bias 16; output bias 8; output LayerNorm 16 -> 104.
MATRICES, VECTORS = 736, 104
LAYER_MATRICES, LAYER_VECTORS = 512, 88


def test_params_and_optimizer_divide_matrices_over_fsdp_and_tensor():
  spec = EmbedderSpec(bert=HAND, max_seq_length=16)
  one = plan_memory(spec, batch=4, query_len=2, doc_len=4)
  assert one.param_count == MATRICES + VECTORS
  assert one.params == one.gradients == 4 * (MATRICES + VECTORS)
  assert one.optimizer_state == 2 * 4 * (MATRICES + VECTORS) + 4
  for mesh in ({'fsdp': 2, 'tensor': 2}, {'fsdp': 4}, {'data': 8, 'fsdp': 4}):
    shard = mesh.get('fsdp', 1) * mesh.get('tensor', 1)
    plan = plan_memory(spec, batch=8, query_len=2, doc_len=4, mesh=mesh)
    # every leaf here divides evenly; norms and biases stay whole on each device
    assert plan.params == 4 * (MATRICES // shard + VECTORS), mesh
    assert plan.optimizer_state == 2 * plan.params + 4
  # data parallelism alone replicates the model
  assert plan_memory(spec, batch=8, query_len=2, doc_len=4, mesh={'data': 8}).params == one.params


def test_activations_divide_batch_over_data_fsdp_and_heads_over_tensor():
  spec = EmbedderSpec(bert=HAND, max_seq_length=16)
  plan = plan_memory(spec, batch=4, query_len=2, doc_len=4, mesh={'data': 2, 'tensor': 2})
  # 2 rows per device. Per column S = T*4*(6*8 + (7*8 + 3*16)/2) + 2 rows*2 heads*L^2/2*5 bytes;
  # 'none' = (1 layer + 0.13) S + 4.4 * T*4*8.
  s_q = 4 * 4 * (48 + 52) + 2 * 2 * 4 / 2 * 5          # T = 2 rows x 2 tokens
  s_d = 8 * 4 * (48 + 52) + 2 * 2 * 16 / 2 * 5         # T = 2 rows x 4 tokens
  none = 1.13 * (s_q + s_d) + 4.4 * (4 + 8) * 4 * 8
  assert plan.activations_none == round(none)
  # 'full': each layer's input (T*4*8) + 0.86 S + the embedding term + 2 x layer params, whose
  # matrices are split over tensor (fsdp 1): 2 * 4 * (512 / 2 + 88) bytes.
  full = (4 + 8) * 4 * 8 + 0.86 * (s_q + s_d) + 4.4 * (4 + 8) * 4 * 8 + 2 * 4 * (
      LAYER_MATRICES / 2 + LAYER_VECTORS)
  assert plan.activations_full == round(full)
  # batch: int32 ids and masks of 2 rows per device, plus doc_key
  assert plan.batch == 4 * (2 * 2 * 2 + 2 * 2 * 4 + 2)
  # the fsdp axis splits the batch like data does
  assert plan_memory(spec, batch=4, query_len=2, doc_len=4,
                     mesh={'fsdp': 2, 'tensor': 2}).activations_none == plan.activations_none
  # no remat: at the peak only the non-layer gradients sit beside the activations
  layer_grads = 4 * (LAYER_MATRICES // 2 + LAYER_VECTORS)
  assert plan.total == (plan.params + plan.optimizer_state + plan.batch
                        + max(plan.gradients - layer_grads + plan.activations_none, plan.gradients))


def test_grad_cache_chunk_is_the_largest_column_plus_cached_embeddings():
  spec = EmbedderSpec(bert=HAND, max_seq_length=16)
  plan = plan_memory(spec, batch=8, query_len=2, doc_len=4, chunk_size=2, grad_cache=True)
  doc_only = plan_memory(spec, batch=2, query_len=1, doc_len=4)
  one_token = plan_memory(spec, batch=2, query_len=1, doc_len=1)
  # doc column at 2 rows (the larger column) = doc_only minus its 2 x 1-token query column
  doc_chunk = doc_only.activations - (one_token.activations // 2)
  cached = 2 * 4 * 8 * 8 * 2                            # embeddings + grads, B x D, 2 columns
  assert abs(plan.grad_cache_chunk - (doc_chunk + cached)) <= 1
  assert plan.total == (plan.params + plan.gradients + plan.optimizer_state + plan.batch
                        + plan.grad_cache_chunk)


def test_bad_mesh_and_optimizer_are_named():
  spec = EmbedderSpec(bert=HAND, max_seq_length=16)
  with pytest.raises(ValueError, match='expert'):
    plan_memory(spec, batch=4, query_len=2, doc_len=4, mesh={'expert': 2})
  with pytest.raises(ValueError, match='optimizer'):
    plan_memory(spec, batch=4, query_len=2, doc_len=4, optimizer='lion')


def test_table_and_memory_table():
  spec = EmbedderSpec(bert=HAND, max_seq_length=16)
  plan = plan_memory(spec, batch=4, query_len=2, doc_len=4)
  assert '| total |' in plan.table() and plan.to_dict()['mesh'] == {'data': 1, 'fsdp': 1,
                                                                     'tensor': 1}
  md = memory_table([('hand', spec, dict(batch=4, query_len=2, doc_len=4, mesh={'fsdp': 2}))])
  assert md.count('\n') == 2 and '| hand | 1 x 2 x 1 | none |' in md
