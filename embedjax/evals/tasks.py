"""Evaluation tasks: read a benchmark, embed its texts with any encode function, score it.

A task is a plain record (kind, loader, main metric); ``TASKS`` maps names to them. The runner only
needs ``encode_fn(texts) -> (N, D) array``, so it evaluates any model, a quantised one included.

Protocols (stated here because numbers are only comparable under the same protocol):
- retrieval: exact inner-product top-1000 over the whole corpus (embeddings as returned, so cosine
  for normalised models); trec_eval metrics; SciFact uses the test qrels and title + " " + text.
- sts: Spearman (and Pearson) correlation of cosine similarity with the gold scores.
- pair: MTEB pair classification on cosine similarity: average precision, best-threshold
  accuracy and F1.
- classification: multinomial logistic regression (L2, sklearn's C=1 objective) fitted to
  convergence on the *full* train split's embeddings, accuracy / macro-F1 on the test split.
  (MTEB instead averages 10 runs of LR with 100 iterations on undersampled train sets, so its
  numbers differ by a point or two.)
- clustering: k-means (k = number of classes, k-means++ init, 5 restarts) on the embeddings;
  V-measure against the labels.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from embedjax.data import long_synthetic, readers, synthetic
from embedjax.data.long_scifact import long_scifact
from embedjax.evals import classification, clustering, metrics, pair_classification, sts
from embedjax.search.exact import topk_blocked

EncodeFn = Callable[[Sequence[str]], np.ndarray]
RETRIEVAL_KS = (1, 2, 3, 5, 10, 20, 100, 1000)


@dataclasses.dataclass(frozen=True)
class Task:
  kind: str                               # retrieval | sts | pair | classification | clustering
  load: Callable[[Path | None], Any]      # shared data dir (None for synthetic tasks) -> data
  main_metric: str
  needs_shared_data: bool = True


def _classification_pair(reader, folder):
  return lambda d: (reader(d / folder, 'train'), reader(d / folder, 'test'))


TASKS: dict[str, Task] = {
    'scifact': Task('retrieval', lambda d: readers.read_beir(d / 'scifact', 'test'), 'ndcg@10'),
    'stsb': Task('sts', lambda d: readers.read_stsb(d / 'stsb', 'test'), 'spearman'),
    'sickr': Task('sts', lambda d: readers.read_sick(d / 'sick', 'test'), 'spearman'),
    'mrpc': Task('pair', lambda d: readers.read_mrpc(d / 'mrpc', 'test'), 'ap'),
    'banking77': Task('classification', _classification_pair(readers.read_banking77, 'banking77'),
                      'accuracy'),
    'banking77_clustering': Task('clustering',
                                 lambda d: readers.read_banking77(d / 'banking77', 'test'),
                                 'v_measure'),
    'agnews_clustering': Task('clustering', lambda d: readers.read_ag_news(d / 'ag_news', 'test'),
                              'v_measure'),
    'limit_small': Task('retrieval', lambda d: readers.read_limit(d / 'limit' / 'limit-small'),
                        'recall@2'),
    # The project's own data, so that every default works without ../shared/data.
    'synthetic_retrieval': Task('retrieval', lambda d: synthetic.synthetic_retrieval(seed=0),
                                'ndcg@10', needs_shared_data=False),
    'synthetic_sts': Task('sts', lambda d: synthetic.synthetic_sts(seed=0), 'spearman',
                          needs_shared_data=False),
    'synthetic_pairs': Task('pair', lambda d: synthetic.synthetic_pairs(seed=0), 'ap',
                            needs_shared_data=False),
    'synthetic_classification': Task('classification',
                                     lambda d: synthetic.synthetic_classification(seed=0),
                                     'accuracy', needs_shared_data=False),
    # LongEmbed's synthetic long-context tasks (embedjax.data.long_synthetic), nDCG@1 as LongEmbed
    # reports them: passkey_256 ... passkey_8192, needle_256 ... needle_8192.
    **{f'{kind}_{n}': Task('retrieval', lambda d, f=getattr(long_synthetic, kind), n=n: f(n, seed=0),
                           'ndcg@1', needs_shared_data=False)
       for kind in ('passkey', 'needle') for n in long_synthetic.LENGTHS},
    # SciFact's relevant abstracts hidden in long documents of n tokens (embedjax.data.long_scifact)
    **{f'long_scifact_{n}': Task('retrieval', lambda d, n=n: long_scifact(d / 'scifact', n),
                                 'ndcg@10') for n in long_synthetic.LENGTHS},
}
# The folder of ../shared/data each task reads (its provenance inputs); synthetic tasks read none.
DATA_FOLDERS: dict[str, str] = {
    'scifact': 'scifact', 'stsb': 'stsb', 'sickr': 'sick', 'mrpc': 'mrpc', 'banking77': 'banking77',
    'banking77_clustering': 'banking77', 'agnews_clustering': 'ag_news',
    'limit_small': 'limit/limit-small',
    **{f'long_scifact_{n}': 'scifact' for n in long_synthetic.LENGTHS}}


def task_inputs(names: Sequence[str], data_dir: Path | None) -> list[Path]:
  """The data folders the named tasks read, once each, in order."""
  if data_dir is None:
    return []
  folders = dict.fromkeys(DATA_FOLDERS[n] for n in names if n in DATA_FOLDERS)
  return [Path(data_dir) / f for f in folders]


DEFAULT_TASKS = ('scifact', 'stsb', 'sickr', 'mrpc', 'banking77', 'banking77_clustering', 'limit_small')
SYNTHETIC_TASKS = ('synthetic_retrieval', 'synthetic_sts', 'synthetic_pairs',
                   'synthetic_classification')


def encode_unique(encode_fn: EncodeFn, texts: Sequence[str]) -> np.ndarray:
  """Embeds each distinct text once (STS and pair sets repeat sentences) and expands back."""
  unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
  emb = np.asarray(encode_fn(list(unique)))
  return emb[inverse.reshape(-1)]


def _retrieval(data: readers.RetrievalData, encode_fn: EncodeFn, key,
               doc_encode_fn: EncodeFn | None = None) -> dict:
  q = encode_fn(data.query_texts)
  d = (doc_encode_fn or encode_fn)(data.corpus_texts)
  _, idx = topk_blocked(q, d, min(1000, len(data.corpus_ids)))
  return metrics.retrieval_metrics(np.asarray(idx), data.qrels, data.query_ids, data.corpus_ids,
                                   ks=[k for k in RETRIEVAL_KS if k <= len(data.corpus_ids)])


def _sts(data: readers.PairData, encode_fn: EncodeFn, key,
         doc_encode_fn: EncodeFn | None = None) -> dict:
  if doc_encode_fn is not None:  # asymmetric: sentence1 by one model, sentence2 by the other
    return sts.sts_scores(encode_unique(encode_fn, list(data.sentences1)),
                          encode_unique(doc_encode_fn, list(data.sentences2)), data.scores)
  emb = encode_unique(encode_fn, list(data.sentences1) + list(data.sentences2))
  n = len(data.sentences1)
  return sts.sts_scores(emb[:n], emb[n:], data.scores)


def _pair(data: readers.PairData, encode_fn: EncodeFn, key) -> dict:
  emb = encode_unique(encode_fn, list(data.sentences1) + list(data.sentences2))
  n = len(data.sentences1)
  return pair_classification.pair_classification_scores(emb[:n], emb[n:], data.scores.astype(int))


def _classification(data, encode_fn: EncodeFn, key) -> dict:
  train, test = data
  scores, _ = classification.logistic_probe(encode_fn(train.texts), train.labels,
                                            encode_fn(test.texts), test.labels)
  return scores


def _clustering(data: readers.ClassificationData, encode_fn: EncodeFn, key) -> dict:
  emb = encode_fn(data.texts)
  return clustering.clustering_scores(emb, data.labels, len(data.label_names), key, n_init=5)


_RUNNERS = {'retrieval': _retrieval, 'sts': _sts, 'pair': _pair,
            'classification': _classification, 'clustering': _clustering}


def _counts(data) -> dict:
  if isinstance(data, tuple):
    return {f'{split}_{k}': v for split, part in zip(('train', 'test'), data)
            for k, v in part.counts.items()}
  return dict(data.counts)


# Task kinds with two sides that two models may embed (queries / documents, sentence1 / 2).
ASYMMETRIC_KINDS = ('retrieval', 'sts')


def run_task(name: str, encode_fn: EncodeFn, data_dir: Path | None, *,
             key: jax.Array | None = None, doc_encode_fn: EncodeFn | None = None) -> dict:
  """Runs one task; returns its metrics plus 'main_metric', 'counts' and 'seconds'.

  ``doc_encode_fn``: embeds the other side (retrieval documents, STS sentence2) when given, for
  an asymmetric evaluation (e.g. a distilled student's queries against a teacher's documents);
  only for ASYMMETRIC_KINDS.
  """
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; choose from {", ".join(TASKS)}')
  task = TASKS[name]
  if doc_encode_fn is not None and task.kind not in ASYMMETRIC_KINDS:
    raise ValueError(f'task {name!r} ({task.kind}) has no query/document sides; asymmetric '
                     f'evaluation covers {ASYMMETRIC_KINDS}')
  if task.needs_shared_data and data_dir is None:
    raise FileNotFoundError(f'task {name!r} needs the shared data folder (../shared/data or '
                            f'EMBEDJAX_DATA_DIR); the synthetic tasks need none')
  key = jax.random.key(0) if key is None else key
  start = time.perf_counter()
  data = task.load(data_dir)
  sides = {} if doc_encode_fn is None else {'doc_encode_fn': doc_encode_fn}
  result = {k: float(v) for k, v in _RUNNERS[task.kind](data, encode_fn, key, **sides).items()}
  result.update(main_metric=task.main_metric, counts=_counts(data),
                seconds=round(time.perf_counter() - start, 2))
  return result


def format_table(results: dict[str, dict]) -> str:
  """A plain-text table: task, kind, main metric and value (x100), and a few secondary metrics."""
  secondary = {'retrieval': ('recall@100', 'mrr@10', 'map@10'), 'sts': ('pearson',),
               'pair': ('accuracy', 'f1'), 'classification': ('f1_macro',), 'clustering': ()}
  lines = [f'{"task":<24} {"kind":<15} {"main metric":<12} {"score":>7}  others']
  for name, r in results.items():
    kind = TASKS[name].kind if name in TASKS else '?'
    main = r['main_metric']
    others = ', '.join(f'{m} {100 * r[m]:.2f}' for m in secondary.get(kind, ()) if m in r)
    lines.append(f'{name:<24} {kind:<15} {main:<12} {100 * r[main]:>7.2f}  {others}')
  return '\n'.join(lines)
