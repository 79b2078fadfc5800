"""Hard-negative mining against sentence-transformers' ``mine_hard_negatives`` (6.3).

sentence-transformers is fed fixed embeddings through a stand-in model that looks vectors up by
text ('q0', 'd17', ...); it calls ``encode_query`` / ``encode_document`` (normalize_embeddings=
True), ``similarity`` (cos_sim, its default) and ``similarity_pairwise`` (pairwise_cos_sim) on
it, and reads ``device``. Scores are float32 on both sides but computed differently (torch
re-normalises, XLA sums in another order), so every case first checks that no two candidate
scores, and no score and filter threshold, lie within 1e-5 of each other (float64): the negatives
then cannot depend on the last bit, and must agree exactly, in order.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedjax.train.mining import default_range_max, mine_hard_negatives, mine_to_file

D, N, Q = 8, 40, 12
GAP = 1e-5  # float64 distance every score keeps from other scores and thresholds


def _vectors(seed=1):
  """Queries q0..q11, documents d0..d39, and each query's positive document indices.

  Queries 0-5 have a nearby positive (high positive scores), 6-11 a random one (some negative:
  the relative margin's |p|); q0 and q7 have a second positive.
  """
  rng = np.random.default_rng(seed)
  queries = rng.normal(size=(Q, D)).astype(np.float32)
  docs = rng.normal(size=(N, D)).astype(np.float32)
  pos = [[int(i)] for i in rng.permutation(N)[:Q]]
  for q in range(6):
    docs[pos[q][0]] = queries[q] + 0.6 * rng.normal(size=D).astype(np.float32)
  taken = {p[0] for p in pos}
  pos[0].append(next(i for i in range(N) if i not in taken))
  pos[7].append(next(i for i in range(N - 1, -1, -1) if i not in taken))
  return queries, docs, pos


class _LookupModel:
  """The parts of a SentenceTransformer that ``mine_hard_negatives`` uses, over fixed vectors."""

  def __init__(self, vectors: dict[str, np.ndarray]):
    import torch
    self.vectors = vectors
    self.device = torch.device('cpu')

  def encode(self, texts, normalize_embeddings=False, **unused):
    import torch
    out = torch.as_tensor(np.stack([self.vectors[t] for t in texts]))
    if normalize_embeddings:  # as SentenceTransformer.encode does
      out = torch.nn.functional.normalize(out, p=2, dim=1)
    return out.numpy()

  encode_query = encode_document = encode

  def similarity(self, a, b):
    from sentence_transformers.util import cos_sim
    return cos_sim(a, b)

  def similarity_pairwise(self, a, b):
    from sentence_transformers.util import pairwise_cos_sim
    return pairwise_cos_sim(a, b)


def _encoder(vectors):
  """encode_fn for mine_to_file: texts -> their fixed (raw) vectors."""
  return lambda texts: np.stack([vectors[t] for t in texts])


def _cosines(queries, docs):
  q = queries / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
  d = docs / np.linalg.norm(docs.astype(np.float64), axis=1, keepdims=True)
  return q @ d.T


def _assert_clear(scores, pos, case):
  """No near-ties among a row's scores, nor near any threshold the case compares them with."""
  for q in range(scores.shape[0]):
    row = np.sort(scores[q])
    assert np.diff(row).min() > GAP, f'query {q}: near-tied scores; pick another seed'
    p = scores[q, pos[q]].min()
    thresholds = [case.get('max_score'), case.get('min_score')]
    if case.get('absolute_margin') is not None:
      thresholds.append(p - case['absolute_margin'])
    if case.get('relative_margin') is not None:
      thresholds.append(p - abs(p) * case['relative_margin'])
    for t in thresholds:
      if t is not None:
        assert np.abs(row - t).min() > GAP, f'query {q}: a score within {GAP} of {t}'


@pytest.fixture(scope='module')
def data():
  queries, docs, pos = _vectors()
  vectors = {f'q{i}': v for i, v in enumerate(queries)} | {f'd{i}': v for i, v in enumerate(docs)}
  return queries, docs, pos, vectors


def _st_mine(vectors, pairs, corpus, **kwargs):
  st_util = pytest.importorskip('sentence_transformers.util')
  from datasets import Dataset
  dataset = Dataset.from_dict({'anchor': [a for a, _ in pairs], 'positive': [p for _, p in pairs]})
  return st_util.mine_hard_negatives(dataset, _LookupModel(vectors), corpus=corpus,
                                     sampling_strategy='top', use_faiss=False, verbose=False,
                                     **kwargs)


CASES = {
    'defaults': {},
    'window': {'range_min': 2, 'range_max': 12, 'num_negatives': 4},
    'absolute_margin': {'absolute_margin': 0.1},
    'relative_margin': {'relative_margin': 0.05},
    'relative_margin_window': {'relative_margin': 0.2, 'range_min': 1, 'range_max': 9},
    'max_score': {'max_score': 0.3, 'num_negatives': 5},
    'min_score': {'min_score': 0.45, 'range_max': 10},
}


@pytest.mark.parametrize('name', list(CASES))
def test_same_negatives_as_sentence_transformers(data, name):
  """Per (query, positive) row, the same negatives as ST's 'labeled-list' (which keeps rows with
  at least one negative and lists only the ones found), in the same order."""
  case = CASES[name]
  queries, docs, pos, vectors = data
  _assert_clear(_cosines(queries, docs), pos, case)
  pairs = [(f'q{q}', f'd{i}') for q in range(Q) for i in pos[q]]
  # The corpus given as d0..d39 (the positives are among them), so ST's deduplicated corpus keeps
  # this order and its indices are ours.
  st = _st_mine(vectors, pairs, [f'd{i}' for i in range(N)], output_format='labeled-list', **case)
  got = mine_hard_negatives(queries, docs, pos, **case)
  assert got.shape == (Q, case.get('num_negatives', 3)) and got.dtype == np.int32
  ours = [(f'q{q}', [f'd{i}'] + [f'd{j}' for j in got[q] if j >= 0])
          for q in range(Q) for i in pos[q] if (got[q] >= 0).any()]
  assert [(r['anchor'], r['positive']) for r in st] == ours
  # -1 only at the end of a row: the negatives found are the hardest that pass.
  assert all(np.all(np.diff((row < 0).astype(int)) >= 0) for row in got)
  # Never a query's own positive (either of two).
  assert not any(set(got[q]) & set(pos[q]) for q in range(Q))
  if name != 'defaults':  # the case's settings change the outcome: it is a test of them
    assert not np.array_equal(got, mine_hard_negatives(queries, docs, pos,
                                                       num_negatives=got.shape[1]))


def test_margin_uses_smallest_positive_and_negative_positive_scores(data):
  """The cases above cover what the brief asks; check they contain the situations that matter:
  a query with two positives of different scores, and a negative positive score under a
  relative margin (where |p| and p * (1 - margin) disagree)."""
  queries, docs, pos, _ = data
  scores = _cosines(queries, docs)
  assert len(pos[0]) == 2 and abs(scores[0, pos[0][0]] - scores[0, pos[0][1]]) > 0.1
  assert (np.array([scores[q, pos[q]].min() for q in range(Q)]) < 0).any()


def test_ties_rank_lower_index_first():
  """Equal scores (duplicate vectors at different rows) rank by increasing corpus index: checked
  against a float64 stable sort. (torch.topk leaves such ties unordered: not compared to ST.)"""
  rng = np.random.default_rng(1)
  queries = rng.normal(size=(5, D)).astype(np.float32)
  base = rng.normal(size=(10, D)).astype(np.float32)
  docs = np.concatenate([base, base[::-1], base[:3]])  # every vector two or three times
  pos = [[0], [5], [11], [3, 12], [20]]
  got = mine_hard_negatives(queries, docs, pos, num_negatives=6, range_max=20)
  scores = _cosines(queries, docs).astype(np.float32)
  for q in range(5):
    # Exact copies score the same in float32 too; rank by (-score, index).
    cand = np.lexsort((np.arange(len(docs)), -scores[q]))[:20 + 2]
    expected = [int(i) for i in cand if i not in pos[q]][:6]
    assert got[q].tolist() == expected


def test_argument_checks(data):
  queries, docs, pos, _ = data
  assert default_range_max(3, 2, 2, filtered=False) == 7
  assert default_range_max(3, 2, 2, filtered=True) == 34
  with pytest.raises(ValueError, match='range_min must be smaller'):
    mine_hard_negatives(queries, docs, pos, range_min=5, range_max=5)
  with pytest.raises(ValueError, match='cannot mine 4 negatives'):
    mine_hard_negatives(queries, docs, pos, num_negatives=4, range_min=2, range_max=5)
  with pytest.raises(ValueError, match='outside the corpus'):
    mine_hard_negatives(queries, docs, [[N]] * Q)
  with pytest.raises(ValueError, match='needs every query to have a positive'):
    mine_hard_negatives(queries, docs, [[]] + pos[1:], relative_margin=0.1)
  one = np.array([p[0] for p in pos])
  np.testing.assert_array_equal(mine_hard_negatives(queries, docs, one, batch_size=5),
                                mine_hard_negatives(queries, docs, [[i] for i in one]))


def _pairs_with_duplicates(pos):
  """(anchor, positive) dicts with a repeated pair, a positive shared by two anchors, and the
  positives of q0 and q7 split over two rows; the extra corpus repeats texts and holds some
  positives, and leaves some documents out."""
  pairs = [{'anchor': f'q{q}', 'positive': f'd{i}'} for q in range(Q) for i in pos[q]]
  pairs.insert(3, dict(pairs[1]))                               # a repeated pair
  pairs.append({'anchor': 'q4', 'positive': f'd{pos[9][0]}'})   # q9's positive also q4's
  corpus = [f'd{i}' for i in range(N - 5, -1, -1)] + ['d3', 'd3', f'd{pos[2][0]}']
  return pairs, corpus


@pytest.mark.parametrize('case', [{}, {'max_score': 0.2, 'range_max': 12, 'num_negatives': 4}],
                         ids=['defaults', 'max_score'])
def test_mine_to_file_matches_n_tuple(data, tmp_path, capsys, case):
  """The file's rows are ST's 'n-tuple' rows (dedup of corpus, anchors and pairs; rows without
  enough negatives dropped), in the same order, and the dropped count is printed."""
  queries, docs, pos, vectors = data
  pairs, corpus = _pairs_with_duplicates(pos)
  _assert_clear(_cosines(queries, docs), pos, case)
  st = _st_mine(vectors, [(r['anchor'], r['positive']) for r in pairs], corpus,
                output_format='n-tuple', **case)
  k = case.get('num_negatives', 3)
  expected = [(r['anchor'], r['positive'], [r[f'negative_{j}'] for j in range(1, k + 1)])
              for r in st]
  encode = _encoder(vectors)
  result = mine_to_file(pairs, encode, tmp_path / 'mined.jsonl', corpus=corpus, **case)
  rows = [json.loads(line) for line in (tmp_path / 'mined.jsonl').read_text().splitlines()]
  assert [(r['anchor'], r['positive'], r['negatives']) for r in rows] == expected
  n_distinct = len({(r['anchor'], r['positive']) for r in pairs})
  assert result.repeated == len(pairs) - n_distinct == 1
  assert result.rows == len(expected) and result.dropped == n_distinct - len(expected)
  assert result.anchors == Q
  assert result.corpus == len(dict.fromkeys(corpus + [r['positive'] for r in pairs]))
  assert f'dropped {result.dropped} pairs' in capsys.readouterr().out
  if case:
    assert result.dropped > 0  # the case exercises dropping


def test_mine_to_file_reads_back_with_prepare(data, tmp_path):
  """The written file is a valid 'pairs' training file: files.prepare reads back every row, with
  the negatives mine_hard_negatives picked (rows grouped by anchor, positives in order)."""
  from embedjax.data import files
  _, _, pos, vectors = data
  pairs, corpus = _pairs_with_duplicates(pos)
  encode = _encoder(vectors)
  out = tmp_path / 'mined.jsonl'
  result = mine_to_file(pairs, encode, out, corpus=corpus, num_negatives=2)
  source = files.prepare(f'file:{out}', tmp_path / 'cache')
  assert len(source) == result.rows == source.stats.rows and source.stats.negatives == 2
  got = [(source[i]['query'], source[i]['positive'], source[i]['negatives'])
         for i in range(len(source))]
  # The same negatives from the embedding-level function on the same corpus order.
  texts = list(dict.fromkeys(corpus + [r['positive'] for r in pairs]))
  anchors = list(dict.fromkeys(r['anchor'] for r in pairs))
  pos_lists = [list(dict.fromkeys(texts.index(r['positive']) for r in pairs if r['anchor'] == a))
               for a in anchors]
  rows_per_anchor = max(sum(r['anchor'] == a for r in pairs) for a in anchors)  # ST's count
  negs = mine_hard_negatives(encode(anchors), encode(texts), pos_lists, num_negatives=2,
                             max_positives=rows_per_anchor)
  expected = [(a, texts[p], [texts[j] for j in negs[q]])
              for q, a in enumerate(anchors) for p in pos_lists[q] if (negs[q] >= 0).all()]
  assert got == expected
  # A prepared source is accepted as input too ('query' rows; its negatives are ignored).
  from_source = mine_to_file(source, encode, tmp_path / 'a.jsonl', corpus=corpus, num_negatives=3)
  as_dicts = [{'anchor': a, 'positive': p} for a, p, _ in got]
  from_dicts = mine_to_file(as_dicts, encode, tmp_path / 'b.jsonl', corpus=corpus, num_negatives=3)
  assert from_source._replace(path=None) == from_dicts._replace(path=None)
  assert (tmp_path / 'a.jsonl').read_text() == (tmp_path / 'b.jsonl').read_text()


def test_an_anchor_in_the_corpus_is_not_its_own_negative(data, tmp_path):
  """Where the corpus holds an anchor's own text, it is never that anchor's negative (it would be
  its hardest), while other anchors' texts still are mined: the rows equal ST's 'n-tuple'."""
  queries, docs, pos, vectors = data
  pairs = [{'anchor': f'q{q}', 'positive': f'd{i}'} for q in range(Q) for i in pos[q]]
  corpus = [f'q{q}' for q in range(0, Q, 2)] + [f'd{i}' for i in range(N)]
  vec = np.stack([vectors[t] for t in corpus])
  _assert_clear(_cosines(queries, vec), [[corpus.index(f'd{i}') for i in p] for p in pos], {})
  st = _st_mine(vectors, [(r['anchor'], r['positive']) for r in pairs], corpus,
                output_format='n-tuple')
  expected = [(r['anchor'], r['positive'], [r[f'negative_{j}'] for j in (1, 2, 3)]) for r in st]
  mine_to_file(pairs, _encoder(vectors), tmp_path / 'mined.jsonl', corpus=corpus)
  rows = [json.loads(line) for line in (tmp_path / 'mined.jsonl').read_text().splitlines()]
  assert [(r['anchor'], r['positive'], r['negatives']) for r in rows] == expected
  assert all(r['anchor'] not in r['negatives'] for r in rows)
  assert any(n.startswith('q') for r in rows for n in r['negatives'])


def test_self_index_excludes_the_query_itself(data):
  """``self_index`` masks one corpus row per query: the result equals mining with that row also
  given as a positive (and the same candidate room), checked on every query's hardest row."""
  queries, docs, pos, _ = data
  own = np.argmax(_cosines(queries, docs), axis=1)   # each query's hardest corpus row
  plain = mine_hard_negatives(queries, docs, pos, num_negatives=3, range_max=8, max_positives=3)
  masked = mine_hard_negatives(queries, docs, pos, num_negatives=3, range_max=8, max_positives=2,
                               self_index=own)
  # The same candidate room, range_max + max_positives + 1 = 11, with the row as one more positive.
  as_positive = mine_hard_negatives(queries, docs, [sorted(set(p) | {int(o)}) for p, o in
                                                    zip(pos, own)], num_negatives=3, range_max=7,
                                    max_positives=3)
  np.testing.assert_array_equal(masked, as_positive)
  assert not (masked == own[:, None]).any()
  assert (plain != masked).any()
  with pytest.raises(ValueError, match='self_index must have one entry per query'):
    mine_hard_negatives(queries, docs, pos, self_index=own[:3])
  with pytest.raises(ValueError, match='outside the corpus'):
    mine_hard_negatives(queries, docs, pos, self_index=np.full(Q, N))
