"""The LIMIT experiment scripts' own logic: resumable sweep, summary/fit, recall table rows."""

import importlib.util

import ml_collections as mlc
import numpy as np

from embedjax.data.readers import RetrievalData
from embedjax.paths import repo_root


def _load(rel: str, name: str):
  spec = importlib.util.spec_from_file_location(name, repo_root() / rel)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


limit_eval = _load('experiments/limit_eval.py', 'limit_eval')
lfe = _load('experiments/limit_free_embedding.py', 'limit_free_embedding')


def _cfg(dims, doc_vectors=1):
  c = mlc.ConfigDict()
  c.seed, c.dims, c.start, c.extrapolate, c.doc_vectors = 0, dims, 3, [64], doc_vectors
  c.protocol = dict(learning_rate=0.05, temperature=0.1, patience=300, max_steps=3000,
                    check_every=50, restarts=2)
  return c


def test_sweep_resumes_and_summarises():
  saved = []
  done = lfe.sweep(_cfg([2]), {}, saved.append, log=lambda s: None)
  assert done['2']['critical_n'] == 3 and len(saved) == 1  # geometry: 3 points fit a circle, 4 don't
  again = []
  lfe.sweep(_cfg([2]), dict(done), again.append, log=lambda s: None)
  assert again == []  # nothing recomputed
  # The summary with a synthetic cubic: the fit recovers it and extrapolates.
  fake = {str(d): {'critical_n': int(2 * d ** 2 + 1), 'first_failure': int(2 * d ** 2 + 2),
                   'seconds': 1.0} for d in range(4, 10)}
  res = lfe.summarise(_cfg(list(range(4, 10))), fake)
  np.testing.assert_allclose(res['fit'], [1, 0, 2, 0], atol=1e-6)
  assert res['extrapolated'] == {'64': 2 * 64 ** 2 + 1} and res['fit_r2'] == 1.0
  assert '| 4 | 33 | 34 |' in lfe.markdown(res)
  assert res['doc_vectors'] == 1 and 'MaxSim' not in lfe.markdown(res)


def test_multi_vector_sweep_passes_the_vectors_per_document_through():
  done = lfe.sweep(_cfg([2], doc_vectors=2), {}, lambda d: None, log=lambda s: None)
  assert done['2']['doc_vectors'] == 2
  res = lfe.summarise(_cfg([2], doc_vectors=2), done)
  assert res['doc_vectors'] == 2 and 'scored by MaxSim' in lfe.markdown(res)


def test_largest_solved_and_first_failed_come_from_the_probe_records():
  att = lambda solved: {'solved': solved}
  # Probes 10, 12 solved; 14, 16 failed; 13 never probed: the first failure is 13 or 14.
  run = {'critical_n': 12, 'first_failure': 14,
         'attempts': {'10': att(True), '16': att(False), '12': att(True), '14': att(False)}}
  assert lfe.probe_bounds(run) == {'largest_solved': 12, 'first_failed': 14, 'unprobed': [13],
                                   'monotone': True}
  # A failure below a success is reported, not hidden.
  odd = {'attempts': {'10': att(False), '11': att(True), '12': att(False)}}
  assert lfe.probe_bounds(odd) == {'largest_solved': 11, 'first_failed': 10, 'unprobed': [],
                                   'monotone': False}
  res = {'critical_n': {'5': 12}, 'first_failure': {'5': 14}, 'seconds_per_dim': {'5': 1.0},
         'device_per_dim': {'5': 'cpu'}, 'sweep_seconds': 1.0, 'runs': {'5': run}}
  table = lfe.markdown(res)
  assert '| 5 | 12 | 14 † | 11 | 1 | cpu |' in table
  assert '† d = 5: n = 13 not probed, so the first failure lies in 13 ... 14.' in table


def test_predicted_start():
  assert lfe.predicted_start([], 3) == (3, 4)       # nothing known: the config's start
  assert lfe.predicted_start([9], 3) == (9, 4)      # one point: from it, wide steps
  # last + mean of the last three increments (3, 6, 5 -> 4.67 -> 5), then steps of 1
  assert lfe.predicted_start([5, 9, 12, 18, 23], 3) == (28, 1)
  assert lfe.predicted_start([7, 7], 3) == (8, 1)   # never predicts no growth


def test_recalls_and_quantized_run():
  data = RetrievalData(corpus_ids=['a', 'b', 'c', 'd'], corpus_texts=['w', 'x', 'y', 'z'],
                       query_ids=['q1', 'q2'], query_texts=['q1', 'q2'],
                       qrels={'q1': {'a': 1, 'b': 1}, 'q2': {'c': 1, 'd': 1}})
  run = np.array([[0, 2, 1, 3], [0, 1, 2, 3]])
  r = limit_eval.recalls(run, data, ks=(2, 10))
  # q1 finds a (not b) in its top 2, q2 none: recall@2 = (0.5 + 0) / 2; k = 10 is capped at 4.
  assert r['recall@2'] == 25.0 and 'recall@10' not in r
  rng = np.random.default_rng(0)
  corpus = rng.normal(size=(50, 16)).astype(np.float32)
  corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
  queries = corpus[:5] + 0.01 * rng.normal(size=(5, 16)).astype(np.float32)
  idx, nbytes = limit_eval.quantized_run('int8', queries, corpus, 3)
  assert nbytes == 16 and idx[:, 0].tolist() == [0, 1, 2, 3, 4]
  idx, nbytes = limit_eval.quantized_run('binary_hamming', queries, corpus, 3)
  assert nbytes == 2 and idx[:, 0].tolist() == [0, 1, 2, 3, 4]
  t = limit_eval.truncate_and_renormalize(corpus, 4)
  np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, rtol=1e-6)


def test_redo_searches_a_recorded_dimension_again(tmp_path):
  # A results file with a hand-made record for d = 2 (critical n 7: wrong) and a hand_assembled
  # mark: redo=(2,) searches d = 2 again and the rewritten file is the program's.
  import json
  cfg = _cfg([2])
  cfg.name, cfg.out_dir, cfg.redo = 'cn', str(tmp_path), (2,)
  fake = {'critical_n': 7, 'first_failure': 8, 'seconds': 1.0, 'note': 'by hand'}
  (tmp_path / 'cn.json').write_text(json.dumps(
      {'protocol': dict(cfg.protocol), 'seed': 0, 'hand_assembled': 'd = 2',
       'runs': {'2': fake}}))
  lfe.main(cfg)
  res = json.loads((tmp_path / 'cn.json').read_text())
  assert res['critical_n'] == {'2': 3} and 'hand_assembled' not in res
  assert 'note' not in res['runs']['2'] and res['runs']['2']['attempts']
  cfg.redo = ()
  lfe.main(cfg)  # kept as it is now
  assert json.loads((tmp_path / 'cn.json').read_text())['runs']['2']['attempts'] == \
      res['runs']['2']['attempts']
