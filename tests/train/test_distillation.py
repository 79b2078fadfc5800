"""LEAF-style distillation: the loss, teacher targets, the student, a short run, asymmetric evals.

A tiny random BERT with MiniLM's vocabulary, exported as a folder, is the teacher; references are
float64 numpy (the loss, PCA) and embedjax's own symmetric evaluation (run_task).
"""

from __future__ import annotations

import importlib.util

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax import encoding
from embedjax.config import ConfigError, load_config
from embedjax.evals.tasks import run_task
from embedjax.losses import EMBEDDING_OBJECTIVES, embedding_mse
from embedjax.models.bert import BertConfig
from embedjax.models.pretrained import (export_sentence_transformers, init_model_params,
                                        load_pretrained, load_spec)
from embedjax.models.spec import EmbedderSpec
from embedjax.train import batches as train_batches
from embedjax.train import distillation as D
from embedjax.train import data as train_data
from embedjax.train.base_config import base_config, use_loss
from embedjax.train.loop import dry_build, train

REPO = Path(__file__).resolve().parents[2]


def test_leaf_student_has_at_most_a_third_of_minilm_parameters():
  assert D.param_count(base_config().model) == D.MINILM_PARAMS   # embeddings included
  c = D.leaf_student(base_config())
  n = D.param_count(c.model)
  assert n <= D.MINILM_PARAMS / 3 and n <= 22_700_000 / 3
  spec = dry_build(c)['spec']
  assert spec.bert.hidden_size == 192 and spec.embedding_dim == 384 and spec.normalize
  assert spec.dense[-1].activation == 'identity' and spec.dense[-1].in_features == 192
  # the decoder-family student (rotary positions, 512 tokens) too
  cfg = importlib.util.spec_from_file_location('_dec', REPO / 'configs' / 'distill_leaf_decoder.py')
  module = importlib.util.module_from_spec(cfg)
  cfg.loader.exec_module(module)
  dec = module.get_config()
  assert D.param_count(dec.model) <= D.MINILM_PARAMS / 3
  spec = dry_build(dec)['spec']
  assert spec.decoder is not None and spec.max_seq_length == 512 and spec.embedding_dim == 384


@pytest.mark.parametrize('objective', EMBEDDING_OBJECTIVES)
def test_embedding_mse_against_numpy(objective):
  rng = np.random.default_rng(0)
  q, t = rng.standard_normal((2, 5, 7))
  diff = ((q - t) ** 2).sum(1)
  cos = (q * t).sum(1) / np.linalg.norm(q, axis=1) / np.linalg.norm(t, axis=1)
  ref = {'l2': diff.mean(), 'mse': diff.mean() / 7, 'cosine': (1 - cos).mean()}[objective]
  f = jax.jit(lambda a, b: embedding_mse(a, b, objective=objective)[0])
  assert float(f(q.astype(np.float32), t.astype(np.float32))) == pytest.approx(ref, rel=1e-5)
  g_q, g_t = jax.grad(f, argnums=(0, 1))(jnp.float32(q), jnp.float32(t))
  assert not np.any(np.asarray(g_t))   # the target is a constant
  if objective == 'l2':
    np.testing.assert_allclose(g_q, 2 * (q - t) / 5, rtol=1e-5, atol=1e-6)


def test_pca_projection_against_numpy_eigh():
  table = np.random.default_rng(1).standard_normal((40, 6)) @ np.diag([5, 4, 3, 2, 1, 0.5])
  out = D.pca_projection(table, 3)
  centred = table - table.mean(0)
  _, vecs = np.linalg.eigh(centred.T @ centred)
  ref = centred @ vecs[:, ::-1][:, :3]          # top-3 principal axes, signs arbitrary
  ref *= table.std() / ref.std()
  np.testing.assert_allclose(np.abs(out), np.abs(ref), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
  """A tiny random BERT (width 16) with MiniLM's tokenizer, as a sentence-transformers folder."""
  spec, tok, _ = load_spec('all-MiniLM-L6-v2', max_seq_length=32)
  bert = BertConfig(vocab_size=spec.bert.vocab_size, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
  spec = EmbedderSpec(bert=bert, pooling='mean', normalize=True, max_seq_length=32)
  folder = tmp_path_factory.mktemp('teacher') / 'model'
  export_sentence_transformers(folder, spec, init_model_params(spec, jax.random.key(7)), tok)
  return folder


def test_teacher_targets_are_cached_by_teacher_and_texts(teacher, tmp_path, monkeypatch):
  model = load_pretrained(str(teacher))
  texts = ['a first text', 'another text', 'a third one']
  out = D.teacher_targets(model, texts, tmp_path)
  np.testing.assert_array_equal(out, encoding.encode(model, texts, progress=False))
  assert len(list(tmp_path.glob('teacher_*.npy'))) == 1

  def fail(*a, **k):
    raise AssertionError('encoded again')
  monkeypatch.setattr(D, 'encode', fail)
  np.testing.assert_array_equal(D.teacher_targets(model, texts, tmp_path), out)  # from the cache
  other = dict(model.params, word_embeddings={'embedding': model.params['word_embeddings']
                                              ['embedding'] * 2})
  with pytest.raises(AssertionError, match='encoded again'):   # other params: another key
    D.teacher_targets(type(model)(**{**model.__dict__, 'params': other}), texts, tmp_path)
  with pytest.raises(AssertionError, match='encoded again'):   # other texts: another key
    D.teacher_targets(model, texts[:2], tmp_path)


def _with_loss(cfg, name):
  with cfg.unlocked():
    use_loss(cfg, name)   # adds the loss's own fields (embedding_mse: objective)
  return cfg


def _student_config(teacher, *extra, loss='embedding_mse'):
  cfg = load_config(str(REPO / 'configs' / 'tiny_synthetic.py'), (
      '--config.model.bert.hidden_size=8', '--config.model.bert.num_hidden_layers=1',
      '--config.model.bert.num_attention_heads=2', '--config.model.bert.intermediate_size=16',
      '--config.model.projection=16', f'--config.model.word_embeddings_from={teacher}',
      f'--config.train.guide=pretrained:{teacher}', '--config.data.train=distill:synthetic_corpus',
      '--config.data.batch_size=8',
      '--config.data.query_len=16', '--config.optim.lr=1e-2', '--config.optim.warmup_steps=0',
      '--config.optim.decay=constant', '--config.train.dropout=False', '--config.steps=30',
      '--config.log_every=1', '--config.ckpt_every=30', '--config.export=False', *extra))
  return _with_loss(cfg, loss) if loss != 'info_nce' else cfg


def test_distillation_run_lowers_the_distance_to_the_teacher(teacher, tmp_path, monkeypatch):
  monkeypatch.setenv('EMBEDJAX_CACHE', str(tmp_path / 'cache'))
  with pytest.raises(ConfigError, match="trains on teacher embeddings: data.train must be"):
    dry_build(_with_loss(load_config(str(REPO / 'configs' / 'tiny_synthetic.py')),
                         'embedding_mse'))
  cfg = _student_config(teacher)
  with pytest.raises(ConfigError, match='gives teacher embeddings'):
    dry_build(_student_config(teacher, loss='info_nce'))
  batch = dry_build(cfg)['batch']
  assert set(batch) == {'query_ids', 'query_mask', 'target'} and batch['target'].shape == (8, 16)
  summary = train(cfg, tmp_path / 'run', progress=False)
  losses = [json.loads(x)['train/loss']
            for x in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
  # Packed batches train the same steps as padded ones: the same losses up to rounding. At 128
  # tokens two of these texts (39-49 tokens) share a row.
  runs = {}
  for padding in ('max_length', 'pack'):
    c = _student_config(teacher, f'--config.data.padding={padding}',
                        '--config.data.query_len=128', '--config.data.pack_segments=4',
                        '--config.steps=4', '--config.ckpt_every=4')
    train(c, tmp_path / padding, progress=False)
    runs[padding] = [json.loads(x)['train/loss'] for x in
                     (tmp_path / padding / 'metrics.jsonl').read_text().splitlines()]
  assert set(dry_build(c)['batch']) == {'query_ids', 'query_segments', 'query_positions',
                                        'query_index', 'target'}
  np.testing.assert_allclose(runs['pack'], runs['max_length'], rtol=1e-4)
  rows = train_data.load_rows(c.data.train, None, None,
                              D.with_distill_sources(c, train_data.SOURCES))
  tok = load_pretrained(str(teacher)).tokenizer
  first = next(train_batches.make_loader(rows, tok, batch_size=8, query_len=128, doc_len=128,
                                         seed=0, padding='pack', pack_segments=4,
                                         token_cache_texts=0))
  assert first['query_ids'].shape[0] < 8  # (the packing this compares happened)
  # The rows: every synthetic-corpus text with the teacher's embedding at 16 tokens.
  sources = D.with_distill_sources(cfg, train_data.SOURCES)
  rows = train_data.load_rows(cfg.data.train, None, None, sources)
  texts = D.distill_texts(['synthetic_corpus'], None)
  assert [r['query'] for r in rows] == texts and summary['train_rows'] == len(texts)
  short = load_pretrained(str(teacher), max_seq_length=16)
  np.testing.assert_allclose(np.stack([r['target'] for r in rows[:4]]),
                             encoding.encode(short, texts[:4], progress=False), atol=1e-6)
  # The student's word embeddings started from the teacher's table's PCA (then trained).
  table = load_pretrained(str(teacher)).params['word_embeddings']['embedding']
  pca = D.init_word_embeddings({'word_embeddings': {'embedding': np.zeros((table.shape[0], 8))}},
                               str(teacher))['word_embeddings']['embedding']
  np.testing.assert_allclose(pca, D.pca_projection(np.asarray(table), 8), rtol=1e-6)


def test_asymmetric_eval_with_one_model_equals_the_symmetric_run(teacher):
  model = load_pretrained(str(teacher))
  other = load_pretrained(str(teacher))
  other = type(other)(**{**other.__dict__,
                         'params': init_model_params(other.spec, jax.random.key(3))})

  def fn(texts):
    return encoding.encode(model, texts, progress=False)
  for task in ('synthetic_retrieval', 'synthetic_sts'):
    sym = run_task(task, fn, None)
    asym = D.evaluate_asymmetric(model, model.params, model, model.params, task, None)
    main = sym['main_metric']
    assert asym[main] == pytest.approx(sym[main], abs=1e-6)
    mixed = D.evaluate_asymmetric(model, model.params, other, other.params, task, None)
    assert mixed[main] != pytest.approx(sym[main], abs=1e-3)   # the document side is used
  with pytest.raises(ValueError, match='no query/document sides'):
    D.evaluate_asymmetric(model, model.params, model, model.params, 'synthetic_pairs', None)
  out = D.evaluate_distillation(model, model.params, model, model.params, ['synthetic_sts'], None)
  assert out['synthetic_sts']['asymmetric_fraction'] == pytest.approx(1.0, abs=1e-6)
