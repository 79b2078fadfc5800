"""MTEB tasks that read the shared data folder instead of the Hugging Face hub, and the helpers
that run mteb offline.

``LocalSTSBenchmark`` and ``LocalSciFact`` are mteb's own ``STSBenchmark`` and ``SciFact`` task
classes (same metadata: name, type, main score, splits) whose ``load_data`` reads
``<data>/stsb/sts-test.csv`` and ``<data>/scifact`` (BEIR layout) with embedjax's strict readers,
so mteb's own evaluators score them without any download. Against the statistics mteb ships for
its hub datasets, STS-B test (1,379 pairs) is the same data; SciFact test has the same 300 queries,
qrels and 5,183 documents, but the documents hold 0.19% more characters in all (the corpus was
rebuilt from the original abstracts, see the folder's SOURCE.md), so a local SciFact score can
differ slightly from mteb's published one. ``LocalSciFact`` can take a deterministic subset
(``retrieval_subset``) for quick runs.

This module imports mteb (and through it torch and datasets): it belongs to the experiments and
tests, never to ``embedjax``. It switches ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` on (unless
set) before importing mteb. Point ``MTEB_CACHE`` somewhere harmless before importing it:
``import mteb`` creates its result cache folder (default ``~/.cache/mteb``) at import time.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np


os.environ.setdefault('HF_HUB_OFFLINE', '1')  # this module never downloads; make sure mteb doesn't
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')

import mteb  # noqa: E402  (after the offline switches)
from datasets import Dataset, DatasetDict  # noqa: E402
from mteb.models import ModelMeta  # noqa: E402
from mteb.tasks import SciFact, STSBenchmarkSTS  # noqa: E402

from embedjax.data import readers  # noqa: E402
from embedjax.data.readers import RetrievalData  # noqa: E402


class MemoEncoder:
  """embedjax's packed encoder behind ``.encode(texts, prompt=...)`` (the model interface
  ``MTEBEncoder`` takes), each distinct (prompt, text) embedded once: mteb's run and embedjax's
  own evaluator then share the same embeddings. ``calls`` records, per call, (prompt, number of
  texts, number newly embedded)."""

  def __init__(self, pretrained, *, rows_per_batch: int | None = None, progress: bool = False):
    self.pretrained = pretrained
    self.rows_per_batch = rows_per_batch
    self.progress = progress
    self.rows: dict[tuple[str | None, str], np.ndarray] = {}
    self.calls: list[tuple[str | None, int, int]] = []

  def __getattr__(self, name):  # spec, params, source, prompts ... of the wrapped model
    if name == 'pretrained':
      raise AttributeError(name)
    return getattr(self.pretrained, name)

  def encode(self, texts: Sequence[str], prompt: str | None = None) -> np.ndarray:
    """(N, D) float32 embeddings of each text with ``prompt`` prepended."""
    from embedjax.encoding import encode
    prompt = prompt or None
    new = [t for t in dict.fromkeys(texts) if (prompt, t) not in self.rows]
    if new:
      emb = encode(self.pretrained, new, prompt=prompt, rows_per_batch=self.rows_per_batch,
                   progress=self.progress, allow_empty=True)
      self.rows.update(((prompt, t), e) for t, e in zip(new, np.asarray(emb)))
    self.calls.append((prompt, len(texts), len(new)))
    if not texts:
      return np.zeros((0, self.pretrained.spec.embedding_dim), np.float32)
    return np.stack([self.rows[(prompt, t)] for t in texts])


def _id_order(doc_id: str):
  """Sort key: numeric ids in numeric order, then the others as strings."""
  return (0, int(doc_id), '') if doc_id.isdigit() else (1, 0, doc_id)


def retrieval_subset(data: RetrievalData, num_queries: int = 0,
                     num_other_docs: int = 0) -> RetrievalData:
  """A deterministic slice of a retrieval split (0 = keep all).

  The first ``num_queries`` queries by id, every document judged for them, and the first
  ``num_other_docs`` other documents by id; queries and documents stay in file order.
  """
  if num_queries < 0 or num_other_docs < 0:
    raise ValueError(f'num_queries and num_other_docs must be >= 0, got {num_queries}, '
                     f'{num_other_docs}')
  query_ids = set(sorted(data.query_ids, key=_id_order)[:num_queries or None])
  qrels = {q: dict(d) for q, d in data.qrels.items() if q in query_ids}
  judged = {d for docs in qrels.values() for d in docs}
  others = sorted((d for d in data.corpus_ids if d not in judged), key=_id_order)
  docs = judged | set(others[:num_other_docs] if num_other_docs else others)
  q_keep = [i for i, q in enumerate(data.query_ids) if q in query_ids]
  d_keep = [i for i, d in enumerate(data.corpus_ids) if d in docs]
  return RetrievalData(corpus_ids=[data.corpus_ids[i] for i in d_keep],
                       corpus_texts=[data.corpus_texts[i] for i in d_keep],
                       query_ids=[data.query_ids[i] for i in q_keep],
                       query_texts=[data.query_texts[i] for i in q_keep], qrels=qrels)


def _titles_and_texts(folder: Path) -> dict[str, tuple[str, str]]:
  """_id -> (title, text) of a BEIR corpus, unjoined: mteb joins them itself."""
  path = next((p for p in (folder / 'corpus.jsonl', folder / 'corpus.jsonl.gz') if p.is_file()),
              folder / 'corpus.jsonl')
  return {str(obj['_id']): (obj.get('title') or '', obj['text'])
          for _, obj in readers.read_jsonl(path)}


class LocalSTSBenchmark(STSBenchmarkSTS):
  """mteb's STSBenchmark (test split) read from ``<data_dir>/stsb``; ``every`` > 1 keeps every
  every-th pair (all genres stay represented: the file is grouped by genre), then ``num_pairs`` > 0
  the first pairs of those."""

  # Same task; the hub dataset's "superseded by v2" note does not apply to the local files.
  metadata = STSBenchmarkSTS.metadata.model_copy(update={'superseded_by': None})

  def __init__(self, data_dir: str | os.PathLike, *, every: int = 1, num_pairs: int = 0,
               **kwargs: Any):
    super().__init__(**kwargs)
    if every < 1 or num_pairs < 0:
      raise ValueError(f'every must be >= 1 and num_pairs >= 0, got {every}, {num_pairs}')
    self.data_dir = Path(data_dir)
    self.every = every
    self.num_pairs = num_pairs

  def pairs(self) -> readers.PairData:
    """The pairs as embedjax reads them (gold scores in [0, 5])."""
    data = readers.read_stsb(self.data_dir / 'stsb', 'test')
    keep = slice(None, None, self.every)
    n = self.num_pairs or len(data)
    return readers.PairData(data.sentences1[keep][:n], data.sentences2[keep][:n],
                            data.scores[keep][:n])

  def load_data(self, num_proc: int | None = None, *, timer=None, **kwargs: Any) -> None:
    if self.data_loaded:
      return
    data = self.pairs()
    split = Dataset.from_dict({'sentence1': list(data.sentences1),
                               'sentence2': list(data.sentences2),
                               'score': [float(s) for s in data.scores]})
    self.dataset = {'default': DatasetDict({'test': split})}
    self.data_loaded = True


class LocalSciFact(SciFact):
  """mteb's SciFact (test split) read from ``<data_dir>/scifact``, optionally a
  ``retrieval_subset``."""

  def __init__(self, data_dir: str | os.PathLike, *, num_queries: int = 0, num_other_docs: int = 0,
               **kwargs: Any):
    super().__init__(**kwargs)
    self.data_dir = Path(data_dir)
    self.num_queries = num_queries
    self.num_other_docs = num_other_docs

  def retrieval_data(self) -> RetrievalData:
    """The split as embedjax reads it (texts joined as (title + ' ' + text).strip())."""
    data = readers.read_beir(self.data_dir / 'scifact', 'test')
    return retrieval_subset(data, self.num_queries, self.num_other_docs)

  def load_data(self, num_proc: int | None = None, *, timer=None, **kwargs: Any) -> None:
    if self.data_loaded:
      return
    data = self.retrieval_data()
    raw = _titles_and_texts(self.data_dir / 'scifact')
    corpus = Dataset.from_dict({'id': list(data.corpus_ids),
                                'title': [raw[d][0] for d in data.corpus_ids],
                                'text': [raw[d][1] for d in data.corpus_ids]})
    queries = Dataset.from_dict({'id': list(data.query_ids), 'text': list(data.query_texts)})
    self.dataset = {'default': {'test': {
        'corpus': corpus, 'queries': queries, 'top_ranked': None,
        'relevant_docs': {q: dict(d) for q, d in data.qrels.items()}}}}
    self.data_loaded = True


def model_meta(fields: dict[str, Any]) -> ModelMeta:
  """A validated ``mteb.models.ModelMeta`` of ``MTEBEncoder.meta_fields()`` (the rest empty)."""
  return ModelMeta.model_validate({**ModelMeta.create_empty().model_dump(), **fields})


@dataclasses.dataclass(frozen=True)
class TaskScores:
  """One task's scores from an mteb run: main score name and value, and every score mteb gave."""
  task: str
  main_score: str
  value: float
  scores: dict[str, Any]


def run_mteb(model, tasks: Sequence[Any], *, cache_dir: str | os.PathLike | None = None,
             batch_size: int = 64) -> dict[str, TaskScores]:
  """Runs mteb's evaluators on ``tasks`` and returns {task name: TaskScores} (test split).

  Nothing is written unless ``cache_dir`` is given (then mteb's result JSON files go there); the
  run always recomputes (``overwrite_strategy='always'``) and tracks no CO2.
  """
  cache = mteb.ResultCache(cache_dir) if cache_dir is not None else None
  result = mteb.evaluate(model, list(tasks), cache=cache, co2_tracker=False,
                         overwrite_strategy='always', show_progress_bar=False,
                         encode_kwargs={'batch_size': batch_size, 'show_progress_bar': False})
  if result.exceptions:
    raise RuntimeError(f'mteb failed: {result.exceptions}')
  main = {t.metadata.name: t.metadata.main_score for t in tasks}
  out = {}
  for task_result in result.task_results:
    (scores,) = task_result.scores['test']
    name = task_result.task_name
    out[name] = TaskScores(name, main[name], float(scores['main_score']), dict(scores))
  return out


def embedjax_scores(task, encode_fn) -> dict[str, float]:
  """embedjax's own evaluator (``embedjax.evals.tasks``' runners) on a local task's data."""
  from embedjax.evals import tasks as ej_tasks
  if hasattr(task, 'retrieval_data'):
    return ej_tasks._retrieval(task.retrieval_data(), encode_fn, None)
  if hasattr(task, 'pairs'):
    return ej_tasks._sts(task.pairs(), encode_fn, None)
  raise TypeError(f'no embedjax evaluator for {type(task).__name__}')
