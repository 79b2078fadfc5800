"""Synthetic tasks: determinism, consistency, solvability by a bag-of-words baseline; BEIR round trip."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedjax.data import readers, synthetic


def _tokens(text: str) -> list[str]:
  return re.findall(r'[a-z]+', text.lower())


def _bow(texts: list[str], vocab: dict[str, int]) -> np.ndarray:
  """L2-normalised TF-IDF rows, float64 (N, V)."""
  counts = np.zeros((len(texts), len(vocab)))
  for i, text in enumerate(texts):
    for token in _tokens(text):
      if token in vocab:
        counts[i, vocab[token]] += 1
  idf = np.log((1 + len(texts)) / (1 + (counts > 0).sum(0))) + 1
  x = counts * idf
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _vocab(texts: list[str]) -> dict[str, int]:
  return {w: i for i, w in enumerate(sorted({t for text in texts for t in _tokens(text)}))}


def _ranks(x: np.ndarray) -> np.ndarray:
  """Average ranks (ties share their mean rank)."""
  order = np.argsort(x, kind='stable')
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x))
  for value in np.unique(x):
    tie = x == value
    ranks[tie] = ranks[tie].mean()
  return ranks


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


@pytest.mark.parametrize('make', [
    lambda s: synthetic.synthetic_retrieval(seed=s, n_docs=60, n_queries=10),
    lambda s: synthetic.synthetic_sts(s, 30),
    lambda s: synthetic.synthetic_pairs(s, 30),
    lambda s: synthetic.synthetic_classification(s, 5, 3),
])
def test_deterministic_from_seed(make):
  def same(a, b):
    if isinstance(a, tuple):
      return all(same(x, y) for x, y in zip(a, b))
    for field in dataclasses.fields(a):
      x, y = getattr(a, field.name), getattr(b, field.name)
      if isinstance(x, np.ndarray):
        if not np.array_equal(x, y):
          return False
      elif x != y:
        return False
    return True

  assert same(make(3), make(3))
  assert not same(make(3), make(4))


def test_synthetic_retrieval_structure():
  data = synthetic.synthetic_retrieval()
  assert data.counts['docs'] == 300 and data.counts['queries'] == 50
  assert len(set(data.corpus_ids)) == 300 and len(set(data.query_ids)) == 50
  doc_words = dict(zip(data.corpus_ids, (set(_tokens(t)) for t in data.corpus_texts)))
  topic_words = {w for words in synthetic.TOPICS.values() for w in words}
  for query_id, text in zip(data.query_ids, data.query_texts):
    keys = set(_tokens(text)) & topic_words
    assert len(keys) == 3
    relevant = {d for d, words in doc_words.items() if keys <= words}
    assert set(data.qrels[query_id]) == relevant  # exact by construction
    assert all(score == 1 for score in data.qrels[query_id].values())
  sizes = [len(v) for v in data.qrels.values()]
  assert min(sizes) >= 1 and np.mean(sizes) < 4  # a few relevant docs out of 300


def test_synthetic_retrieval_is_solvable_above_chance():
  data = synthetic.synthetic_retrieval(seed=1)
  vocab = _vocab(data.corpus_texts + data.query_texts)
  scores = _bow(data.query_texts, vocab) @ _bow(data.corpus_texts, vocab).T
  reciprocal_ranks = []
  for row, query_id in zip(scores, data.query_ids):
    ranked = [data.corpus_ids[i] for i in np.argsort(-row, kind='stable')]
    first = min(ranked.index(d) for d in data.qrels[query_id])
    reciprocal_ranks.append(1 / (first + 1))
  assert np.mean(reciprocal_ranks) > 0.6  # chance is about 0.02


def test_synthetic_sts_scores_follow_overlap():
  data = synthetic.synthetic_sts(seed=0, n=300)
  assert len(data) == 300 and data.scores.dtype == np.float64 and data.labels is None
  assert data.scores.min() >= 0 and data.scores.max() <= 5
  assert set(np.round(data.scores, 6)) <= {0.0, 1.0, 2.5, 5.0}
  assert len(set(data.scores)) == 4
  overlap = np.array([len(set(_tokens(a)) & set(_tokens(b))) / len(set(_tokens(a)) | set(_tokens(b)))
                      for a, b in zip(data.sentences1, data.sentences2)])
  assert _spearman(overlap, data.scores) > 0.5


def test_synthetic_pairs_labels():
  data = synthetic.synthetic_pairs(seed=0, n=200)
  assert set(data.scores) == {0.0, 1.0}
  assert 60 < data.scores.sum() < 140
  topic_words = {w for words in synthetic.TOPICS.values() for w in words}
  for a, b, label in zip(data.sentences1, data.sentences2, data.scores):
    shared = set(_tokens(a)) & set(_tokens(b)) & topic_words
    assert a != b
    assert len(shared) == (3 if label else 0)


def test_synthetic_classification():
  train, test = synthetic.synthetic_classification(seed=0, n_per_class=20, n_classes=5)
  for split in (train, test):
    assert len(split) == 100 and split.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(split.labels), [20] * 5)
    assert split.label_names == list(synthetic.TOPICS)[:5]
  assert not set(train.texts) & set(test.texts)
  vocab = _vocab(train.texts + test.texts)
  x_train, x_test = _bow(train.texts, vocab), _bow(test.texts, vocab)
  centroids = np.stack([x_train[train.labels == c].mean(0) for c in range(5)])
  accuracy = np.mean((x_test @ centroids.T).argmax(1) == test.labels)
  assert accuracy > 0.9
  with pytest.raises(ValueError, match='n_classes'):
    synthetic.synthetic_classification(n_classes=len(synthetic.TOPICS) + 1)


def test_write_beir_round_trip(tmp_path):
  data = synthetic.synthetic_retrieval(seed=2, n_docs=80, n_queries=20)
  folder = synthetic.write_beir(data, tmp_path / 'beir')
  assert readers.read_beir(folder) == data
  # Writing again over the folder replaces the files and leaves no temporaries behind.
  other = synthetic.synthetic_retrieval(seed=3, n_docs=40, n_queries=5)
  synthetic.write_beir(other, folder)
  assert readers.read_beir(folder) == other
  assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*')) == [
      'corpus.jsonl', 'qrels', 'qrels/test.tsv', 'queries.jsonl']


def test_write_beir_unicode_and_split(tmp_path):
  data = readers.RetrievalData(
      corpus_ids=['Zoë Ång', 'd 2'], corpus_texts=['Zoë likes crème brûlée.', 'Tabs\tand "quotes"'],
      query_ids=['q/1'], query_texts=['Who likes crème?'], qrels={'q/1': {'Zoë Ång': 1, 'd 2': 0}})
  folder = synthetic.write_beir(data, tmp_path, split='train')
  assert readers.read_beir(folder, 'train') == data
  with pytest.raises(ValueError, match='tabs'):
    synthetic.write_beir(dataclasses.replace(data, qrels={'q/1': {'a\tb': 1}}), tmp_path)


_ID = st.text(st.characters(blacklist_characters='\t\n\r', blacklist_categories=('Cs',)), min_size=1, max_size=8)
_TEXT = st.text(st.characters(blacklist_categories=('Cs',)), min_size=1, max_size=30).map(str.strip).filter(bool)


@settings(max_examples=40, deadline=None)
@given(docs=st.dictionaries(_ID, _TEXT, min_size=1, max_size=5),
       queries=st.dictionaries(_ID, _TEXT, min_size=1, max_size=3), data=st.data())
def test_write_beir_round_trip_property(tmp_path_factory, docs, queries, data):
  qrels = {q: data.draw(st.dictionaries(st.sampled_from(sorted(docs)), st.integers(0, 3), min_size=1)) for q in queries}
  original = readers.RetrievalData(list(docs), list(docs.values()), list(queries), list(queries.values()), qrels)
  folder = synthetic.write_beir(original, tmp_path_factory.mktemp('beir'))
  assert readers.read_beir(folder) == original
