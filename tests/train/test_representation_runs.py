"""Multi-vector (ColBERT) and sparse (SPLADE) training runs from a config: the config checks, a
few steps of a tiny run through the loop, and the exported head read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedjax.config import ConfigError, load_config
from embedjax.train import representation
from embedjax.train.loop import dry_build, model_spec, step_config, train

REPO = Path(__file__).resolve().parents[2]
TINY = ('--config.model.bert.num_hidden_layers=1', '--config.data.batch_size=4',
        '--config.data.query_len=8', '--config.data.doc_len=12', '--config.steps=2',
        '--config.ckpt_every=2', '--config.log_every=1', '--config.optim.decay=constant',
        '--config.eval_before=False')


def _config(*extra):
  return load_config(str(REPO / 'configs' / 'tiny_synthetic.py'), [*TINY, *extra])


def test_bad_combinations_are_one_line_errors():
  with pytest.raises(ConfigError, match="trains with loss.name 'info_nce'"):
    dry_build(_config('--config.model.representation=multi_vector', '--config.loss.name=cosent'))
  with pytest.raises(ConfigError, match='loss.matryoshka_dims: not with model.representation'):
    dry_build(_config('--config.model.representation=sparse', '--config.loss.matryoshka_dims=(8,)'))
  with pytest.raises(ConfigError, match="model.representation 'dense': not one of"):
    dry_build(_config('--config.model.representation=dense'))


def test_multi_vector_step_settings_come_from_the_tokenizer():
  cfg = _config('--config.model.representation=multi_vector')
  spec, tokenizer = model_spec(cfg.model)
  step = step_config(cfg, spec)
  vocab = tokenizer.vocab()
  assert (step.loss, step.representation, step.query_augment) == ('maxsim_info_nce',
                                                                   'multi_vector', 8)
  assert step.mask_token_id == vocab['[MASK]']
  assert vocab['.'] in step.skip_ids and vocab[','] in step.skip_ids and vocab['the'] not in step.skip_ids


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A tiny run of each representation, two steps, exported: {kind: (summary, workdir)}."""
  out = {}
  for kind in ('multi_vector', 'sparse'):
    tmp = tmp_path_factory.mktemp(kind)
    extra = (['--config.model.token_dim=16', '--config.loss.scale=1.0'] if kind == 'multi_vector'
             else ['--config.loss.flops_query=0.01', '--config.loss.flops_doc=0.01',
                   '--config.loss.scale=1.0', '--config.loss.similarity=dot'])
    cfg = _config(f'--config.model.representation={kind}', f'--config.data.cache_dir={tmp}/cache',
                  *extra)
    assert 'head' in dry_build(cfg)['state'].params
    out[kind] = (train(cfg, tmp / 'run', progress=False), tmp / 'run')
  return out


@pytest.mark.parametrize('kind', ['multi_vector', 'sparse'])
def test_a_tiny_run_trains_and_exports_its_head(kind, runs):
  summary, workdir = runs[kind]
  assert summary['steps_done'] == 2
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert len(losses) == 2 and np.isfinite(losses).all()
  info, head = representation.load_head(workdir / 'export')
  assert info['representation'] == kind
  trained = summary['state'].params['head']
  if kind == 'multi_vector':
    assert head['kernel'].shape == (32, 16) and info['query_length'] == 8
    np.testing.assert_array_equal(head['kernel'], np.asarray(trained['kernel']))
  else:
    assert head['bias'].shape == (30522,)
    np.testing.assert_array_equal(head['dense']['kernel'], np.asarray(trained['dense']['kernel']))


def _brute_force_ranking(scores):
  return np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)


@pytest.mark.parametrize('kind', ['multi_vector', 'sparse'])
def test_evaluation_equals_brute_force_scoring_of_the_same_representation(kind, runs):
  from embedjax.evals import metrics
  from embedjax.evals.representations import (TokenModel, encode_sparse, encode_token_vectors,
                                              evaluate_retrieval)
  from embedjax.evals.tasks import TASKS
  model = TokenModel.load(runs[kind][1] / 'export')
  data = TASKS['synthetic_retrieval'].load(None)
  result = evaluate_retrieval(model, 'synthetic_retrieval', None)
  if kind == 'multi_vector':
    q, qm, qc = encode_token_vectors(model, data.query_texts, queries=True)
    d, dm, _ = encode_token_vectors(model, data.corpus_texts, queries=False)
    assert qm.all() and q.shape[1] == 8  # augmented to the trained query length, all counted
    sims = np.einsum('qid,njd->qnij', q.astype(np.float64), d.astype(np.float64))
    scores = np.where(dm[None, :, None, :] != 0, sims, -np.inf).max(-1).sum(-1)
    assert result['bytes_per_doc'] == pytest.approx(dm.sum(1).mean() * 4 * 16)
  else:
    qw, _ = encode_sparse(model, data.query_texts)
    dw, _ = encode_sparse(model, data.corpus_texts)
    scores = (qw.astype(np.float64) @ dw.astype(np.float64).T).toarray()
    assert result['bytes_per_doc'] == pytest.approx(8 * dw.nnz / dw.shape[0])
  k = min(1000, len(data.corpus_ids))
  want = metrics.retrieval_metrics(_brute_force_ranking(scores)[:, :k], data.qrels, data.query_ids,
                                   data.corpus_ids, ks=[10])
  assert result['ndcg@10'] == pytest.approx(want['ndcg@10'], abs=1e-9)
  assert result['counts']['queries']['texts'] == len(data.query_texts)


def test_plaid_evaluation_runs_and_reports_its_storage(runs):
  from embedjax.evals.representations import TokenModel, evaluate_retrieval
  model = TokenModel.load(runs['multi_vector'][1] / 'export')
  exact = evaluate_retrieval(model, 'synthetic_retrieval', None)
  plaid = evaluate_retrieval(model, 'synthetic_retrieval', None, search='plaid', plaid_centroids=8)
  assert plaid['plaid_centroids'] == 8 and plaid['bytes_per_doc'] < exact['bytes_per_doc'] / 4
  assert 0 <= plaid['ndcg@10'] <= 1


def test_the_cli_refuses_to_score_such_a_folder_as_one_vector(runs):
  from embedjax.cli import UsageError, load_model
  with pytest.raises(UsageError, match='is a multi-vector or sparse model'):
    load_model(str(runs['sparse'][1] / 'export'), 'float32')


def test_the_beyond_single_vector_study_scores_as_the_eval_runner(runs):
  # The study encodes each text once for every search; its exact multi-vector and sparse rows
  # must be the eval runner's, and its compressed rows smaller.
  import ml_collections
  from embedjax.evals.representations import TokenModel, evaluate_retrieval
  from embedjax.evals.tasks import TASKS
  from tests.experiments.study_modules import load_experiment
  study = load_experiment('beyond_single_vector', 'beyond_single_vector_eval')
  data = TASKS['synthetic_retrieval'].load(None)
  cfg = ml_collections.ConfigDict({'seed': 0, 'plaid': {'bits': (2, 1), 'kmeans_sample': 64,
                                                        'kmeans_iters': 2}})
  rows = {}
  for kind in ('multi_vector', 'sparse'):
    model = TokenModel.load(runs[kind][1] / 'export')
    want = evaluate_retrieval(model, 'synthetic_retrieval', None)
    rows[kind] = (study.eval_multi_vector(cfg, model, data) if kind == 'multi_vector'
                  else study.eval_sparse(model, data))
    got = rows[kind]['exact' if kind == 'multi_vector' else 'inverted_index']
    for key in ('ndcg@10', 'recall@10', 'bytes_per_doc'):
      assert got[key] == pytest.approx(want[key], abs=1e-12), (kind, key)
  mv = rows['multi_vector']
  assert mv['plaid_1bit']['bytes_per_doc'] < mv['plaid_2bit']['bytes_per_doc'] < (
      mv['exact']['bytes_per_doc'] / 4)
  assert 0 <= mv['plaid_2bit']['recall@10_of_exact'] <= 1
  # every centroid probed on this small corpus: the search is the exhaustive one over its codes
  assert mv['plaid_2bit']['recall@10_of_exhaustive_compressed'] == pytest.approx(1.0)
  assert mv['plaid_2bit']['exhaustive_compressed_recall@10_of_exact'] == pytest.approx(
      mv['plaid_2bit']['recall@10_of_exact'])
