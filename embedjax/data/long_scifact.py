"""A long-document retrieval task built from SciFact (issue: long context): each relevant abstract
of 100 test queries is hidden at a random depth inside unrelated abstracts, making documents of a
chosen length; unrelated long documents fill the corpus to about 1,000.

For ``length`` n (tokens counted as in :mod:`embedjax.data.long_synthetic`): the first 100 test
queries with judgements (in the queries file's order) are kept; every abstract they judge relevant
becomes one long document: other abstracts (never relevant to any kept query), drawn at random,
are concatenated up to n tokens (within 5%) and the relevant abstract is put between two of them at a uniform
random depth. Distractor documents of only unrelated abstracts bring the corpus to
``corpus_size``. The qrels map each query to the long documents holding its relevant abstracts.
Everything is drawn from ``np.random.default_rng([seed, n])``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedjax.data import readers
from embedjax.data.long_synthetic import count_tokens

QUERIES = 100
CORPUS_SIZE = 1000


def long_scifact(folder: str | Path, length: int, *, seed: int = 0, queries: int = QUERIES,
                 corpus_size: int = CORPUS_SIZE) -> readers.RetrievalData:
  test = readers.read_beir(Path(folder), 'test')
  keep = [q for q in test.query_ids if any(r > 0 for r in test.qrels.get(q, {}).values())][:queries]
  text_of = dict(zip(test.corpus_ids, test.corpus_texts))
  query_text = dict(zip(test.query_ids, test.query_texts))
  relevant = sorted({d for q in keep for d, r in test.qrels[q].items() if r > 0})
  unrelated = [d for d in test.corpus_ids if d not in set(relevant)]
  rng = np.random.default_rng([seed, length])
  tokens = {d: count_tokens(text_of[d]) for d in unrelated}

  def filler(budget: int) -> list[str]:
    """Unrelated abstracts in random order, each taken if it still fits, until within 5% of the
    budget (or none is left that fits)."""
    out, total = [], 0
    for i in rng.permutation(len(unrelated)):
      d = unrelated[int(i)]
      if total + tokens[d] <= budget:
        out.append(text_of[d])
        total += tokens[d]
        if total >= 0.95 * budget:
          break
    return out

  corpus_ids, corpus, holder = [], [], {}
  for d in relevant:
    parts = filler(max(length - count_tokens(text_of[d]), 0))
    at = int(rng.integers(len(parts) + 1))
    corpus_ids.append(f'long-{d}')
    corpus.append(' '.join(parts[:at] + [text_of[d]] + parts[at:]))
    holder[d] = f'long-{d}'
  for i in range(max(corpus_size - len(corpus), 0)):
    corpus_ids.append(f'filler-{i}')
    corpus.append(' '.join(filler(length)))
  qrels = {q: {holder[d]: 1 for d, r in test.qrels[q].items() if r > 0} for q in keep}
  return readers.RetrievalData(corpus_ids=corpus_ids, corpus_texts=corpus, query_ids=keep,
                               query_texts=[query_text[q] for q in keep], qrels=qrels)
