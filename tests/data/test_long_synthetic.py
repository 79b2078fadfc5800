"""The passkey and needle tasks: shape, depths, lengths, determinism; and a run of the eval runner
on the passkey task at 256 tokens with the packaged model."""

from __future__ import annotations

import pytest

from embedjax.data import long_synthetic as ls
from embedjax.evals.tasks import TASKS


@pytest.mark.parametrize('make', [ls.passkey, ls.needle], ids=['passkey', 'needle'])
def test_fifty_queries_one_document_each_answer_at_five_depths(make):
  data = make(512, seed=0)
  assert len(data.query_texts) == len(data.corpus_texts) == ls.SAMPLES
  assert all(data.qrels[q] == {f'doc{i}': 1} for i, q in enumerate(data.query_ids))
  marker = 'pass key for' if make is ls.passkey else None
  for i, (query, doc) in enumerate(zip(data.query_texts, data.corpus_texts)):
    n = ls.count_tokens(doc)
    assert 480 <= n <= 512 + 40, n  # filler up to the length, plus the answer sentence
    name = query.rstrip('?').split()[-1]
    assert doc.count(name) >= 1
    first = doc.index(marker if marker else name)
    depth = ls.DEPTHS[i % 5]
    # the answer sits at its relative depth (in characters, within a sentence or two)
    assert abs(first / len(doc) - depth) < 0.1, (i, first / len(doc), depth)
  assert make(512, seed=0) == data and make(512, seed=1) != data
  assert len({ls.count_tokens(t) // 100 for t in make(2048).corpus_texts}) <= 2


def test_registered_for_every_length():
  for kind in ('passkey', 'needle'):
    for n in ls.LENGTHS:
      task = TASKS[f'{kind}_{n}']
      assert task.kind == 'retrieval' and not task.needs_shared_data and task.main_metric == 'ndcg@1'
  with pytest.raises(ValueError, match='too short'):
    ls.passkey(8)


def test_long_scifact_hides_each_relevant_abstract_in_a_long_document(data_dir):
  from embedjax.data import readers
  from embedjax.data.long_scifact import long_scifact
  data = long_scifact(data_dir / 'scifact', 1024)
  assert len(data.query_ids) == 100 and len(data.corpus_ids) == 1000
  test = readers.read_beir(data_dir / 'scifact', 'test')
  text_of = dict(zip(test.corpus_ids, test.corpus_texts))
  long_of = dict(zip(data.corpus_ids, data.corpus_texts))
  for q in data.query_ids:
    relevant = {d for d, r in test.qrels[q].items() if r > 0}
    assert set(data.qrels[q]) == {f'long-{d}' for d in relevant}
    for d in relevant:
      doc = long_of[f'long-{d}']
      assert text_of[d] in doc
      assert ls.count_tokens(doc) >= min(0.95 * 1024, ls.count_tokens(text_of[d]))
  fillers = [t for i, t in long_of.items() if i.startswith('filler-')]
  assert all(970 <= ls.count_tokens(t) <= 1024 for t in fillers)
  assert long_scifact(data_dir / 'scifact', 1024).corpus_texts == data.corpus_texts
