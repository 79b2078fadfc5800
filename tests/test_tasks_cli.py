"""The task runner and the CLI: composition checked against references, bad input named."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import scipy.stats

from embedjax import cli
from embedjax.data import synthetic
from embedjax.evals.tasks import encode_unique, run_task


def hashed_bow(texts):
  """A deterministic hashed bag-of-words embedding, independent of embedjax's model code."""
  out = np.zeros((len(texts), 64), np.float64)
  for i, t in enumerate(texts):
    for w in t.lower().split():
      h = int(hashlib.md5(w.encode()).hexdigest(), 16)
      out[i, h % 64] += ((h >> 8) % 10007) / 10007 - 0.5  # continuous weights: no tied cosines
  return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_sts_task_equals_scipy_on_same_embeddings():
  data = synthetic.synthetic_sts(seed=0)
  got = run_task('synthetic_sts', hashed_bow, None)
  a, b = hashed_bow(data.sentences1), hashed_bow(data.sentences2)
  cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
  assert got['spearman'] == pytest.approx(scipy.stats.spearmanr(cos, data.scores)[0], abs=1e-6)
  assert got['main_metric'] == 'spearman' and got['counts']['pairs'] == len(data)


def test_retrieval_task_equals_pytrec_eval_on_same_embeddings():
  pytrec_eval = pytest.importorskip('pytrec_eval')
  data = synthetic.synthetic_retrieval(seed=0)
  got = run_task('synthetic_retrieval', hashed_bow, None)
  scores = hashed_bow(data.query_texts) @ hashed_bow(data.corpus_texts).T
  run = {q: {d: float(s) for d, s in zip(data.corpus_ids, row)}
         for q, row in zip(data.query_ids, scores)}
  ev = pytrec_eval.RelevanceEvaluator(data.qrels, {'ndcg_cut.10', 'recall.100'})
  per_q = ev.evaluate(run).values()
  assert got['ndcg@10'] == pytest.approx(np.mean([m['ndcg_cut_10'] for m in per_q]), abs=1e-6)
  assert got['recall@100'] == pytest.approx(np.mean([m['recall_100'] for m in per_q]), abs=1e-6)


def test_encode_unique_embeds_each_text_once():
  calls = []
  def enc(texts):
    calls.append(list(texts))
    return hashed_bow(texts)
  texts = ['b', 'a', 'b', 'c', 'a']
  np.testing.assert_array_equal(encode_unique(enc, texts), hashed_bow(texts))
  assert sorted(calls[0]) == ['a', 'b', 'c']


def test_unknown_task_and_missing_data_are_clear(capsys):
  with pytest.raises(ValueError, match='unknown task'):
    run_task('nope', hashed_bow, None)
  with pytest.raises(FileNotFoundError, match='shared data'):
    run_task('scifact', hashed_bow, None)
  assert cli.main(['eval', '--tasks', 'stsb,nope']) == 2  # one line on stderr, exit status 2
  assert 'unknown task(s) nope' in capsys.readouterr().err


@pytest.mark.slow
def test_cli_eval_writes_json_with_provenance(tmp_path, minilm, capsys):
  out = tmp_path / 'r.json'
  assert cli.main(['eval', '--tasks', 'synthetic_sts', '--quiet', '--out', str(out)]) == 0
  record = json.loads(out.read_text())
  assert record['synthetic_sts']['spearman'] > 0.3  # a real encoder clearly tracks word overlap
  for key in ('command', 'date', 'versions', 'machine', 'model'):
    assert key in record
  assert 'synthetic_sts' in capsys.readouterr().out


def test_cli_encode_txt_and_jsonl(tmp_path, minilm):
  from embedjax.encoding import encode
  txt = tmp_path / 'in.txt'
  txt.write_text('first text\nsecond text here\n', encoding='utf-8')
  assert cli.main(['encode', '--input', str(txt), '--output', str(tmp_path / 'a.npy'), '--quiet']) == 0
  got = np.load(tmp_path / 'a.npy')
  np.testing.assert_allclose(got, encode(minilm, ['first text', 'second text here'], progress=False),
                             atol=1e-6)
  jl = tmp_path / 'in.jsonl'
  jl.write_text('{"_id": "1", "title": "T", "text": "body"}\n', encoding='utf-8')
  assert cli.main(['encode', '--input', str(jl), '--output', str(tmp_path / 'b.npy'), '--quiet']) == 0
  np.testing.assert_allclose(np.load(tmp_path / 'b.npy'), encode(minilm, ['T body'], progress=False),
                             atol=1e-6)
  assert not list(tmp_path.glob('*.partial*'))


@pytest.mark.parametrize('name, content, match', [
    ('empty.txt', b'one\n\nthree\n', r'empty.txt:2'),
    ('bad.txt', b'ok\n\xff\xfe\n', r'bad.txt:2: not UTF-8'),
    ('trunc.jsonl', b'{"text": "a"}\n{"text": "b\n', r'trunc.jsonl:2'),
    ('nofield.jsonl', b'{"text": "a"}\n{"body": "b"}\n', r"nofield.jsonl:2: field 'text'"),
    ('nothing.txt', b'', r'no texts'),
])
def test_cli_encode_bad_input_names_file_and_line(tmp_path, capsys, name, content, match):
  path = tmp_path / name
  path.write_bytes(content)
  assert cli.main(['encode', '--input', str(path), '--output', str(tmp_path / 'o.npy'), '--quiet']) == 2
  assert re.search(match, capsys.readouterr().err)
  assert not (tmp_path / 'o.npy').exists()


def test_encode_rejects_empty_input(minilm):
  from embedjax.encoding import encode
  with pytest.raises(ValueError, match='no texts'):
    encode(minilm, [], progress=False)
  with pytest.raises(ValueError, match='text 1 is empty'):
    encode(minilm, ['fine', '  '], progress=False)
  with pytest.raises(TypeError, match='not a single string'):
    encode(minilm, 'a string', progress=False)
