"""A frozen guide in the train step: GIST, MarginMSE and DistillKLDiv chosen from a config.

The step's value and gradient equal the loss functions (themselves tested equal to
sentence-transformers in tests/losses) called on embeddings computed outside the step, with the
teacher scores computed here in float64 numpy; the guide never changes and is not in the train
state; a loop run trains a few steps with a guide from a folder.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from embedjax.config import ConfigError, load_config
from embedjax.losses import GUIDE_LOSSES, LOSSES, distill_kl_div, gist, margin_mse
from embedjax.models.bert import BertConfig
from embedjax.models.embedder import embed
from embedjax.models.pretrained import (export_sentence_transformers, init_model_params,
                                        load_pretrained, load_spec)
from embedjax.models.spec import EmbedderSpec
from embedjax.train.base_config import loss_defaults, use_loss
from embedjax.train.loop import dry_build, train
from embedjax.train.state import create_state
from embedjax.train.step import StepConfig, loss_and_grads, loss_arguments, make_train_step
from batches import random_batch

REPO = Path(__file__).resolve().parents[2]
BERT = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)
SPEC = EmbedderSpec(bert=BERT, pooling='mean', normalize=True, max_seq_length=32)
# The guide: another architecture (width 8, CLS pooling) over the same vocabulary.
GUIDE_BERT = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=32)
GUIDE_SPEC = EmbedderSpec(bert=GUIDE_BERT, pooling='cls', normalize=True, max_seq_length=32)
B, H = 6, 2


def _batch(seed=0, lq=5, ld=7):
  return random_batch(np.random.default_rng(seed), B, lq, ld, H)


@pytest.fixture(scope='module')
def setup():
  params = {'encoder': init_model_params(SPEC, jax.random.key(0))}
  guide = init_model_params(GUIDE_SPEC, jax.random.key(1))
  return params, guide, _batch()


def _outside(params, guide, batch):
  """Student embeddings (a function of params) and the guide's, computed without the step."""
  @functools.partial(jax.jit, static_argnums=1)  # eager, each op of the BERT compiles alone
  def emb(p, spec, ids, mask):
    return embed(p, spec, ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, ids.shape[-1]))
  g = [np.asarray(emb(guide, GUIDE_SPEC, batch[f'{c}_ids'], batch[f'{c}_mask']), np.float64)
       for c in ('query', 'doc', 'neg')]
  g[2] = g[2].reshape(B, H, -1)

  def student(p):
    q, d, n = (emb(p['encoder'], SPEC, batch[f'{c}_ids'], batch[f'{c}_mask'])
               for c in ('query', 'doc', 'neg'))
    return q, d, n.reshape(B, H, -1)
  return student, g


def _teacher_scores(g):
  gq, gd, gn = g   # float64: dot products of the guide's unit vectors
  return np.concatenate([np.sum(gq * gd, -1)[:, None], np.einsum('bd,bhd->bh', gq, gn)], 1)


CASES = {
    'gist': dict(temperature=0.05, margin=0.05),
    'margin_mse': dict(similarity='cosine'),
    'distill_kl_div': dict(temperature=0.5, similarity='dot'),
}


def _reference(name, kwargs, student, g):
  def loss(p):
    q, d, n = student(p)
    if name == 'gist':
      return gist(q, d, g[0].astype(np.float32), g[1].astype(np.float32), hard_negatives=n,
                  guide_hard_negatives=g[2].astype(np.float32), **kwargs)
    scores = _teacher_scores(g).astype(np.float32)
    fn = margin_mse if name == 'margin_mse' else distill_kl_div
    return fn(q, d, n, scores, **kwargs)
  return loss


@pytest.mark.parametrize('grad_cache', [False, True])
def test_gist_step_equals_the_loss_on_outside_embeddings(setup, grad_cache):
  params, guide, batch = setup
  cfg = StepConfig(spec=SPEC, loss='gist', loss_kwargs=tuple(sorted(CASES['gist'].items())),
                   dropout=False, guide_spec=GUIDE_SPEC, grad_cache=grad_cache,
                   chunk_size=3 if grad_cache else 0)
  (loss, metrics), grads = jax.jit(lambda p, g: loss_and_grads(cfg, p, batch, jax.random.key(0),
                                                               g))(params, guide)
  student, g = _outside(params, guide, batch)
  (ref_loss, _), ref_grads = jax.jit(jax.value_and_grad(
      _reference('gist', CASES['gist'], student, g), has_aux=True))(params)
  assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5, abs=1e-6)
  # float32 gradients of two differently fused programs (and, with grad_cache, a chunked
  # recompute): an absolute tolerance relative to the gradient's scale, not to each element.
  scale = max(float(np.abs(b).max()) for b in jax.tree_util.tree_leaves(ref_grads))
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale),
      grads, ref_grads)
  assert set(grads) == {'encoder'}  # the guide is not a trained parameter
  assert optax.tree_utils.tree_norm(grads) > 0
  # The guide's bar masks some candidates and keeps others: the guide really decides.
  assert 0.2 < float(metrics['masked_fraction']) < 0.9


def test_a_packed_batch_gives_the_padded_batchs_guided_loss_and_gradients(setup):
  # The guide embeds the packed rows too (its own weights, no dropout).
  from test_padding import _packed
  params, guide, batch = setup
  kw = {'spec': SPEC, 'loss': 'gist', 'loss_kwargs': tuple(sorted(CASES['gist'].items())),
        'dropout': False, 'guide_spec': GUIDE_SPEC}
  segments = 4
  (packed,) = _packed(batch, segments)
  assert packed['doc_ids'].shape[0] < B * (1 + H)  # documents and negatives share rows
  runs = [jax.jit(lambda p, g, b, c=cfg: loss_and_grads(c, p, b, jax.random.key(0), g))(
      params, guide, b) for cfg, b in ((StepConfig(**kw), batch),
                                       (StepConfig(**kw, pack_segments=segments), packed))]
  (want, want_m), want_g = runs[0]
  (got, got_m), got_g = runs[1]
  assert float(got) == pytest.approx(float(want), rel=1e-5)
  assert float(got_m['masked_fraction']) == pytest.approx(float(want_m['masked_fraction']))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         got_g, want_g)


def test_margin_mse_steps_equal_the_loss_and_never_change_the_guide(setup):
  params, guide, batch = setup
  cfg = StepConfig(spec=SPEC, loss='margin_mse', dropout=False, guide_spec=GUIDE_SPEC,
                   loss_kwargs=tuple(CASES['margin_mse'].items()))
  # SGD with learning rate 1: the first update is minus the gradient, so one compiled train step
  # gives the loss, the gradient and the later steps.
  tx = optax.sgd(1.0)
  state = create_state(params, tx)
  before = jax.tree_util.tree_map(np.array, guide)
  step = jax.jit(make_train_step(cfg, tx))
  state, m = step(state, batch, jax.random.key(0), guide)
  student, g = _outside(params, guide, batch)
  (ref_loss, _), ref_grads = jax.jit(jax.value_and_grad(
      _reference('margin_mse', CASES['margin_mse'], student, g), has_aux=True))(params)
  assert float(m['loss']) == pytest.approx(float(ref_loss), rel=1e-5, abs=1e-6)
  grads = jax.tree_util.tree_map(lambda a, b: np.asarray(a) - np.asarray(b), params, state.params)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         grads, ref_grads)
  losses = [float(m['loss'])]
  for _ in range(2):
    state, m = step(state, batch, jax.random.key(0), guide)
    losses.append(float(m['loss']))
  jax.tree_util.tree_map(np.testing.assert_array_equal, guide, before)
  assert set(state.params) == {'encoder'}
  assert losses[-1] < losses[0]   # the student moved towards the guide's margins
  with pytest.raises(ConfigError, match='a guide'):
    loss_and_grads(cfg, params, batch, jax.random.key(0))


def test_the_step_gives_each_guide_loss_its_arguments():
  # distill_kl_div reads the same guide scores as margin_mse (its value is not re-run here).
  assert loss_arguments('gist') == {'guide_q', 'guide_d', 'guide_hard_negatives',
                                    'hard_negatives'}
  assert loss_arguments('margin_mse') == {'neg', 'teacher_margin'}
  assert loss_arguments('distill_kl_div') == {'negs', 'teacher_scores'}
  assert loss_arguments('embedding_mse') == {'target'}
  assert GUIDE_LOSSES <= set(LOSSES) and not set(loss_defaults('gist')) & {
      'guide_hard_negatives', 'hard_negatives'}


# --- through the loop: a guide from a folder, a file with hard negatives ----------------------

@pytest.fixture(scope='module')
def guide_folder(tmp_path_factory):
  """A tiny random BERT with MiniLM's tokenizer, exported as a sentence-transformers folder."""
  spec, tok, _ = load_spec('all-MiniLM-L6-v2', max_seq_length=32)
  bert = BertConfig(vocab_size=spec.bert.vocab_size, hidden_size=8, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=16, max_position_embeddings=64)
  spec = EmbedderSpec(bert=bert, pooling='mean', normalize=True, max_seq_length=32)
  folder = tmp_path_factory.mktemp('guide') / 'model'
  params = init_model_params(spec, jax.random.key(5))
  export_sentence_transformers(folder, spec, params, tok)
  pairs = folder.parent / 'triplets.jsonl'
  with open(pairs, 'w') as f:
    for i in range(8):
      f.write(json.dumps({'anchor': f'question {i} about topic {i % 3}',
                          'positive': f'the answer to {i} is {7 * i}',
                          'negatives': [f'the answer to {i + 1} is {7 * i + 7}']}) + '\n')
  return folder, pairs, params


def _config(guide, pairs, *extra):
  return load_config(str(REPO / 'configs' / 'tiny_synthetic.py'), (
      '--config.model.bert.num_hidden_layers=1', '--config.data.batch_size=4',
      '--config.data.query_len=8', '--config.data.doc_len=12', '--config.steps=2',
      '--config.ckpt_every=2', '--config.log_every=1', '--config.optim.decay=constant',
      f'--config.data.train=file:{pairs}', f'--config.train.guide=pretrained:{guide}', *extra))


def test_loop_trains_margin_mse_with_a_guide(guide_folder, tmp_path, monkeypatch):
  monkeypatch.setenv('EMBEDJAX_CACHE', str(tmp_path / 'cache'))
  guide, pairs, exported = guide_folder
  cfg = _config(guide, pairs, '--config.loss.name=margin_mse')
  built = dry_build(cfg)
  assert set(built['state'].params) == {'encoder'}
  summary = train(cfg, tmp_path / 'run', progress=False)
  assert summary['steps_done'] == 2
  records = [json.loads(x) for x in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert len(records) == 2 and all(np.isfinite(r['train/loss']) for r in records)
  assert 'guide' not in summary['state'].params
  # The guide's folder is read, never written.
  jax.tree_util.tree_map(np.testing.assert_array_equal, load_pretrained(str(guide)).params,
                         exported)


def test_guide_config_errors(guide_folder, tmp_path, monkeypatch):
  monkeypatch.setenv('EMBEDJAX_CACHE', str(tmp_path / 'cache'))
  guide, pairs, _ = guide_folder
  cfg = _config(guide, pairs)
  with cfg.unlocked():
    use_loss(cfg, 'gist')
  cfg.train.guide = ''
  with pytest.raises(ConfigError, match="'gist' needs a guide model"):
    dry_build(cfg)
  with pytest.raises(ConfigError, match='uses no guide'):
    dry_build(_config(guide, pairs))   # info_nce with a guide set
  cfg = _config(guide, pairs, '--config.train.guide=all-MiniLM-L6-v2')
  with cfg.unlocked():
    use_loss(cfg, 'gist')
  with pytest.raises(ConfigError, match="must be 'pretrained:NAME_OR_PATH'"):
    dry_build(cfg)
