"""2DMSE (layer x dim) training and hard-negative mixing through the train step.

The step (gradient-cached over chunks of 2 rows, hard negatives mixed) is checked against
``losses.elastic.matryoshka_2d(losses.mixing.mix_hard_negatives(info_nce))`` applied to
``layerwise.embed_layers`` outputs computed outside the step with the same key: the loss and the
gradient norm. Training lowers the loss; a resumed run replays the same steps; the config fields
reach the step and are checked. One step compile and one reference compile for the module."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from embedjax.config import ConfigError
from embedjax.losses.contrastive import info_nce
from embedjax.losses.elastic import matryoshka_2d
from embedjax.losses.mixing import mix_hard_negatives
from embedjax.models.bert import BertConfig
from embedjax.models.layerwise import embed_layers
from embedjax.models.pretrained import init_params
from embedjax.models.spec import EmbedderSpec
from embedjax.train.base_config import base_config, check_config
from embedjax.train.loop import step_config
from embedjax.train.state import TrainState, create_state
from embedjax.train.step import StepConfig, loss_and_grads, loss_key, make_train_step
from batches import random_batch

BERT = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)
SPEC = EmbedderSpec(bert=BERT, pooling='mean', normalize=True, max_seq_length=32)
DIMS = (16, 8)
# sentence-transformers' Matryoshka2dLoss defaults: one sampled prior layer and dim per step.
LAYER_KWARGS = (('n_layers_per_step', 1), ('n_dims_per_step', 1), ('last_layer_weight', 1.0),
                ('prior_layers_weight', 1.0), ('kl_div_weight', 1.0), ('kl_temperature', 0.3),
                ('layer_weighting', 'uniform'))
MIX = dict(n_synthetic=2, n_hardest=3, n_query_mixed=1)
# Dropout off so that the reference sees the same embeddings; its keys per chunk are covered by
# tests/train/test_step.py (the elastic path uses the same _chunk_keys).
CFG = StepConfig(spec=SPEC, dropout=False, matryoshka_dims=DIMS, layer_elastic='matryoshka_2d',
                 layer_kwargs=LAYER_KWARGS, chunk_size=2, grad_cache=True, mix_negatives=2,
                 mix_hardest=3, mix_query=1)
STEPS = 6


def _batch(rng, b=4, lq=6, ld=8, h=1):
  return random_batch(rng, b, lq, ld, h)


@pytest.fixture(scope='module')
def run():
  """STEPS steps of 2DMSE training on one batch, every state and metrics kept (one compile)."""
  batch = _batch(np.random.default_rng(0))
  tx = optax.adam(1e-2)
  step = jax.jit(make_train_step(CFG, tx))
  rng = jax.random.key(5)
  states = [create_state({'encoder': init_params(BERT, jax.random.key(0))}, tx)]
  metrics = []
  for _ in range(STEPS):
    state, m = step(states[-1], batch, rng)
    states.append(state)
    metrics.append(jax.device_get(m))
  return dict(batch=batch, tx=tx, step=step, rng=rng, states=states, metrics=metrics)


@jax.jit
def _reference(encoder, batch, key):
  """(loss, metrics), gradient norm of matryoshka_2d(mixed info_nce) on embed_layers outputs,
  computed outside the step (whole batch at once, no gradient caching)."""
  return _value_and_grad_norm(encoder, batch, key)


def _value_and_grad_norm(encoder, batch, key):
  (loss, metrics), grads = jax.value_and_grad(_reference_loss, has_aux=True)(encoder, batch, key)
  return (loss, metrics), optax.tree_utils.tree_norm(grads)


def _reference_loss(encoder, batch, key):
  layers = lambda ids, mask: embed_layers(encoder, SPEC, ids, mask)
  q = layers(batch['query_ids'], batch['query_mask'])
  d = layers(batch['doc_ids'], batch['doc_mask'])
  b, h, l = batch['neg_ids'].shape
  n = layers(batch['neg_ids'].reshape(b * h, l), batch['neg_mask'].reshape(b * h, l))
  n = n.reshape(n.shape[0], b, h, -1)
  loss_fn = matryoshka_2d(mix_hard_negatives(info_nce, **MIX), DIMS, keyed_loss=True,
                          **dict(LAYER_KWARGS))
  return loss_fn(q, d, hard_negatives_layers=n, key=key, scale=20.0, doc_ids=batch['doc_key'])


def test_step_loss_is_matryoshka_2d_of_embed_layers_with_the_step_key(run):
  for i in (0, 1):  # the key is the step's: fold_in(rng, step), then loss_key
    key = loss_key(jax.random.fold_in(run['rng'], i))
    (ref, ref_metrics), ref_norm = _reference(run['states'][i].params['encoder'], run['batch'], key)
    got = run['metrics'][i]
    assert float(got['loss']) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    for k in ('last_layer_loss', 'prior_layers_loss', 'kl_div_loss', 'synthetic_similarity'):
      assert float(got[k]) == pytest.approx(float(ref_metrics[k]), rel=1e-5, abs=1e-6)
    assert float(got['grad_norm']) == pytest.approx(float(ref_norm), rel=1e-4)
  # Another key draws other layers / dims / mixtures: the loss depends on the key it is given.
  params = run['states'][0].params['encoder']
  others = {round(float(_reference(params, run['batch'], jax.random.key(s))[0][0]), 5)
            for s in range(4)}
  assert len(others) > 1


def test_training_lowers_the_last_layer_loss(run):
  first, last = (float(run['metrics'][i]['last_layer_loss']) for i in (0, -1))
  assert last < 0.8 * first
  assert int(run['states'][-1].step) == STEPS


def test_resumed_run_replays_the_same_steps(run):
  # A "checkpoint" after 3 steps: host copies, restored into a fresh state.
  saved = jax.device_get(run['states'][3])
  state = TrainState(step=jnp.asarray(saved.step), params=jax.tree_util.tree_map(jnp.asarray, saved.params),
                     opt_state=jax.tree_util.tree_map(jnp.asarray, saved.opt_state))
  for i in range(3, STEPS):
    state, m = run['step'](state, run['batch'], run['rng'])
    assert float(m['loss']) == float(run['metrics'][i]['loss'])
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(state.params),
                         jax.device_get(run['states'][-1].params))


def test_config_fields_reach_the_step_and_are_checked():
  c = base_config()
  # The defaults keep every existing config as it was: nothing elastic, nothing mixed.
  plain = step_config(c, SPEC)
  assert (plain.layer_elastic, plain.mix_negatives, plain.mix_query) == ('', 0, 0)
  # The option defaults are sentence-transformers' (losses.elastic.matryoshka_2d's own).
  import inspect
  sig = inspect.signature(matryoshka_2d).parameters
  assert dict(plain.layer_kwargs) == {k: sig[k].default for k, _ in LAYER_KWARGS}
  c.loss.layer_elastic = 'matryoshka_2d'
  c.loss.matryoshka_dims = DIMS
  c.loss.mix_negatives = 4
  c.loss.mix_query = 2
  c.loss.n_layers_per_step = -1
  check_config(c)
  got = step_config(c, SPEC)
  assert got.layer_elastic == 'matryoshka_2d' and dict(got.layer_kwargs)['n_layers_per_step'] == -1
  assert (got.mix_negatives, got.mix_hardest, got.mix_query) == (4, 8, 2)
  for field, value, message in [
      ('layer_elastic', 'matryoshka', "loss.layer_elastic 'matryoshka': not one of"),
      ('matryoshka_dims', (), "needs loss.matryoshka_dims"),
      ('layer_weighting', 'cubic', "loss.layer_weighting 'cubic'"),
      ('kl_temperature', -1.0, 'loss.kl_temperature -1.0: must be >= 0'),
      ('mix_negatives', -1, 'loss.mix_negatives -1: expected a non-negative int'),
      ('mix_hardest', 0, 'loss.mix_hardest 0: mixing needs')]:
    bad = base_config()
    bad.loss.update(layer_elastic='matryoshka_2d', matryoshka_dims=DIMS, mix_negatives=1)
    bad.loss[field] = value
    with pytest.raises(ConfigError, match=message):
      check_config(bad)
  # A loss without hard negatives cannot mix.
  with pytest.raises(ConfigError, match='takes no hard negatives'):
    loss_and_grads(dataclasses.replace(CFG, loss='cosent', mix_negatives=1), {}, {}, None)
