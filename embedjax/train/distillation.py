"""LEAF-style embedding distillation: teacher targets, a narrow student, asymmetric evaluation.

LEAF (Vujanic & Rueckstiess 2025, "LEAF: Knowledge Distillation of Text Embedding Models with
Teacher-Aligned Representations") trains a small student so that its embedding of a text equals
the teacher's embedding of the same text: student = Norm(Linear(MeanPool(Transformer(x)))), the
linear head mapping the student's width to the teacher's, and the loss ||y_i - t_i||^2 per text
(``embedjax.losses.embedding_mse``). No labels, pairs or negatives are needed, and the student
lives in the teacher's space, so its queries can search an index of *teacher* documents
(asymmetric retrieval: a cheap query model over an existing index).

Pieces:
  teacher_targets(teacher, texts, cache_dir)   (N, D) teacher embeddings, cached on disk
  TEXT_SETS / distill_texts                    the texts distilled on (training data only)
  target_source / with_distill_sources         training sources of {'query', 'target'} rows:
                                               data.train='distill:SET+SET...' with the teacher
                                               in train.guide
  leaf_student(c, ...)                         a narrow random BERT + linear head, in a config
  param_count(model_cfg)                       parameters of the model a config's block builds
  init_word_embeddings(params, teacher)        word embeddings from a PCA of the teacher's table
  evaluate_asymmetric / evaluate_distillation  student queries (or sentence1) against teacher
                                               documents (or sentence2), with run_task's runners

Distillation texts come from training splits and corpora only, never from test queries: the
SciFact corpus (the documents every split searches) and the SciFact *train* claims, STS-B train
sentences, MRPC train sentences and SICK train sentences. The evaluations (SciFact test claims,
STS-B test pairs) are thus never seen by the student, whose targets for the SciFact corpus are
those documents' teacher embeddings: the asymmetric retrieval index itself. (That is LEAF's
setting: the documents are known and indexed; the queries are new.)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
from pathlib import Path
from typing import Sequence

import jax
import ml_collections
import numpy as np

from embedjax.config import ConfigError
from embedjax.data import readers, synthetic
from embedjax.encoding import encode
from embedjax.evals.tasks import TASKS, run_task
from embedjax.io import atomic_write_bytes
from embedjax.models.pretrained import Pretrained, init_model_params, load_pretrained
from embedjax.train import data as train_data
from embedjax.train import loop

PREFIX = 'distill:'
MINILM_PARAMS = 22_565_376  # all-MiniLM-L6-v2 as embedjax builds it, embeddings included (the
                            # 22.7M usually quoted adds the unused 148k pooler of the HF checkpoint)


# --- texts ----------------------------------------------------------------------------------

def _unique(texts) -> list[str]:
  return list(dict.fromkeys(t for t in texts if t.strip()))


def _pairs_texts(read, folder):
  def texts(data_dir: Path) -> list[str]:
    data = read(data_dir / folder, 'train')
    return _unique(list(data.sentences1) + list(data.sentences2))
  return texts


# name -> (shared-data folder or '' for none, data_dir -> texts). Training splits and corpora only.
TEXT_SETS = {
    'scifact_corpus': ('scifact', lambda d: _unique(readers.read_beir(d / 'scifact', 'train')
                                                   .corpus_texts)),
    'scifact_claims': ('scifact', lambda d: _unique(readers.read_beir(d / 'scifact', 'train')
                                                   .query_texts)),
    'stsb': ('stsb', _pairs_texts(readers.read_stsb, 'stsb')),
    'mrpc': ('mrpc', _pairs_texts(readers.read_mrpc, 'mrpc')),
    'sick': ('sick', _pairs_texts(readers.read_sick, 'sick')),
    # the project's synthetic corpus (documents only): a source that needs no shared data
    'synthetic_corpus': ('', lambda d: _unique(synthetic.synthetic_retrieval(seed=0).corpus_texts)),
}
# 'distill:all' (the study's texts): every set of the shared data.
ALL_SETS = ('scifact_corpus', 'scifact_claims', 'stsb', 'mrpc', 'sick')


def text_sets(name: str) -> tuple[str, ...]:
  """'distill:scifact_corpus+stsb' -> ('scifact_corpus', 'stsb'); 'distill:all' -> ALL_SETS."""
  body = name[len(PREFIX):] if name.startswith(PREFIX) else name
  sets = ALL_SETS if body == 'all' else tuple(s.strip() for s in body.split('+') if s.strip())
  unknown = [s for s in sets if s not in TEXT_SETS]
  if not sets or unknown:
    raise ConfigError(f"data.train {name!r}: 'distill:' takes '+'-joined text sets among "
                      f"{sorted(TEXT_SETS)}, or 'all'")
  return sets


def distill_texts(sets: Sequence[str], data_dir: Path | None) -> list[str]:
  """The distinct texts of the named sets, in order (first occurrence kept)."""
  out: list[str] = []
  for s in sets:
    folder, read = TEXT_SETS[s]
    if folder and data_dir is None:
      raise FileNotFoundError(f'distillation texts {s!r} need the shared data folder')
    out += read(Path(data_dir) if data_dir is not None else None)
  return _unique(out)


# --- teacher targets ------------------------------------------------------------------------

def fingerprint(model: Pretrained) -> str:
  """sha256 of a model's spec and every parameter's path, dtype, shape and bytes."""
  h = hashlib.sha256(repr(model.spec).encode())
  for path, x in jax.tree_util.tree_flatten_with_path(model.params)[0]:
    x = np.asarray(x)
    h.update(f'{jax.tree_util.keystr(path)}|{x.dtype}|{x.shape}'.encode())
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()


def teacher_targets(teacher_model: Pretrained, texts: Sequence[str], cache_dir: str | Path | None,
                    *, progress: bool = False) -> np.ndarray:
  """The teacher's embeddings of ``texts``: (N, D) float32, computed once per (teacher, texts).

  Cached as ``cache_dir/teacher_<hash>.npy``, the hash over the teacher's fingerprint (spec and
  params, so a fine-tuned or truncated teacher gets its own file) and the texts; written
  atomically (``embedjax.io``), so an interrupted encode leaves no file that looks complete.
  ``cache_dir`` None: no cache.
  """
  texts = list(texts)
  if cache_dir is None:
    return np.asarray(encode(teacher_model, texts, progress=progress), np.float32)
  key = hashlib.sha256((fingerprint(teacher_model) + json.dumps(texts)).encode()).hexdigest()
  path = Path(cache_dir) / f'teacher_{key[:24]}.npy'
  if path.exists():
    out = np.load(path)
    if out.shape == (len(texts), teacher_model.spec.embedding_dim):
      return out
  out = np.asarray(encode(teacher_model, texts, progress=progress), np.float32)
  buf = io.BytesIO()
  np.save(buf, out)
  atomic_write_bytes(path, buf.getvalue())
  return out


def target_source(teacher: str, texts_of, *, width: int, max_seq_length: int,
                  folders: tuple[str, ...] = (), needs_shared_data: bool = False,
                  dtype: str = 'float32') -> train_data.Source:
  """A training source of rows {'query': text, 'target': (width,) teacher embedding}.

  Args:
    teacher: the teacher's name or path (``load_pretrained``), read only when rows are loaded.
    texts_of: ``data_dir -> texts``, or a list of texts.
    width: the teacher's embedding width (the batch shapes need it before any encoding).
    max_seq_length: tokens the teacher reads per text: the student's ``data.query_len``, so that
      a target describes the text the student sees.
  """
  return train_data.Source(
      functools.partial(_load_targets, teacher, texts_of, max_seq_length, dtype),
      needs_shared_data=needs_shared_data, hard_negatives=False, folders=folders,
      target_dim=int(width))


def _load_targets(teacher, texts_of, max_seq_length, dtype, data_dir, cache) -> list[dict]:
  texts = list(texts_of(data_dir) if callable(texts_of) else texts_of)
  model = load_pretrained(teacher, dtype=dtype)
  length = min(max_seq_length, model.spec.max_seq_length)
  model = dataclasses.replace(model, spec=dataclasses.replace(model.spec, max_seq_length=length),
                              tokenizer=model.tokenizer.with_max_length(length))
  targets = teacher_targets(model, texts, Path(cache) / 'distill', progress=False)
  return [{'query': t, 'target': targets[i]} for i, t in enumerate(texts)]


def with_distill_sources(cfg: ml_collections.ConfigDict,
                         sources: dict[str, train_data.Source]) -> dict[str, train_data.Source]:
  """``sources`` plus a target source for every 'distill:SETS' name of ``cfg.data.train``, the
  teacher being ``cfg.train.guide``. Nothing is encoded here (rows are made when loaded)."""
  out = dict(sources)
  for name in train_data.source_names(cfg.data.train):
    if not name.startswith(PREFIX):
      continue
    sets = text_sets(name)
    if not cfg.train.guide:
      raise ConfigError(f"data.train {name!r}: set the teacher in train.guide "
                        "('pretrained:NAME_OR_PATH')")
    folders = tuple(dict.fromkeys(TEXT_SETS[s][0] for s in sets if TEXT_SETS[s][0]))
    out[name] = target_source(
        loop._guide_name(cfg), functools.partial(distill_texts, sets),
        width=loop.guide_spec(cfg).embedding_dim, max_seq_length=int(cfg.data.query_len),
        folders=folders, needs_shared_data=bool(folders), dtype=cfg.model.dtype)
  return out


# --- the student ----------------------------------------------------------------------------

def leaf_student(c: ml_collections.ConfigDict, *, teacher: str = 'pretrained:all-MiniLM-L6-v2',
                 texts: str = 'all', hidden_size: int = 192, num_hidden_layers: int = 3,
                 num_attention_heads: int = 3, intermediate_size: int = 768,
                 pca_init: bool = True) -> ml_collections.ConfigDict:
  """Sets config ``c`` up for LEAF distillation; returns ``c``.

  The student is a narrow BERT with MiniLM's tokenizer and mean pooling ('random:all-MiniLM-L6-v2'
  with model.bert overrides), a linear head to the teacher's width and L2 normalisation, trained
  with ``embedding_mse`` on data.train='distill:TEXTS' against ``teacher`` (train.guide). With
  ``pca_init`` its word embeddings start from a PCA projection of the teacher's table (our
  choice, not LEAF's: it needs the teacher's vocabulary, MiniLM's here).
  """
  from embedjax.train.base_config import use_loss
  c.model.init = 'random:all-MiniLM-L6-v2'
  c.model.bert.update(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                      num_attention_heads=num_attention_heads,
                      intermediate_size=intermediate_size)
  c.train.guide = teacher
  c.model.projection = loop.guide_spec(c).embedding_dim
  c.model.word_embeddings_from = teacher.partition(':')[2] if pca_init else ''
  c.data.train = PREFIX + texts
  use_loss(c, 'embedding_mse')
  return c


def param_count(model_cfg: ml_collections.ConfigDict) -> int:
  """Parameters of the model ``model_cfg`` (a config's model block) builds, embeddings and heads
  included (abstractly: nothing is initialised)."""
  spec, _ = loop.model_spec(model_cfg)
  shapes = jax.eval_shape(lambda k: init_model_params(spec, k), jax.random.key(0))
  return int(sum(x.size for x in jax.tree_util.tree_leaves(shapes)))


def pca_projection(table: np.ndarray, width: int) -> np.ndarray:
  """(V, D) table -> (V, width): the centred rows on their top-``width`` principal axes, rescaled
  to the table's per-entry standard deviation (the student's LayerNorm sees the scale the
  teacher's embeddings had relative to its position embeddings)."""
  table = np.asarray(table, np.float64)
  if not 0 < width <= table.shape[1]:
    raise ValueError(f'PCA width {width} outside 1..{table.shape[1]}')
  centred = table - table.mean(axis=0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  out = centred @ vt[:width].T
  return (out * (table.std() / (out.std() + 1e-12))).astype(np.float32)


def init_word_embeddings(params: dict, teacher: str) -> dict:
  """``params`` (a random-init BERT student's) with its word embeddings replaced by the PCA
  projection of ``teacher``'s word-embedding table (the same vocabulary required)."""
  table = np.asarray(load_pretrained(teacher).params['word_embeddings']['embedding'])
  mine = params['word_embeddings']['embedding']
  if table.shape[0] != mine.shape[0]:
    raise ConfigError(f'model.word_embeddings_from {teacher!r}: its vocabulary has '
                      f'{table.shape[0]} rows, the model {mine.shape[0]}')
  out = dict(params)
  out['word_embeddings'] = {'embedding': jax.numpy.asarray(pca_projection(table, mine.shape[1]))}
  return out


# --- asymmetric evaluation ------------------------------------------------------------------

def _encoder(model: Pretrained, params, progress: bool):
  cache: dict = {}

  def fn(texts):
    key = hash(tuple(texts))
    if key not in cache:
      cache[key] = encode(model, list(texts), params=params, progress=progress)
    return cache[key]
  return fn


def evaluate_asymmetric(query_model: Pretrained, query_params, doc_model: Pretrained,
                        doc_params, task: str, data_dir: Path | None, *,
                        progress: bool = False) -> dict:
  """``task`` with queries (STS: sentence1) embedded by ``query_model`` and documents (STS:
  sentence2) by ``doc_model``: the metrics of ``run_task``. Only retrieval and STS tasks. With
  the same model on both sides this is the symmetric ``run_task``."""
  return run_task(task, _encoder(query_model, query_params, progress), data_dir,
                  doc_encode_fn=_encoder(doc_model, doc_params, progress))


def evaluate_distillation(student: Pretrained, student_params, teacher: Pretrained,
                          teacher_params, tasks: Sequence[str], data_dir: Path | None, *,
                          progress: bool = False) -> dict:
  """Per task: the main metric of the teacher, of the student alone ('symmetric') and of student
  queries against teacher documents ('asymmetric'), and the last two as fractions of the
  teacher's. Each model's embeddings of a text list are computed once."""
  s = _encoder(student, student_params, progress)
  t = _encoder(teacher, teacher_params, progress)
  out = {}
  for task in tasks:
    main = TASKS[task].main_metric
    r = {'teacher': run_task(task, t, data_dir)[main],
         'symmetric': run_task(task, s, data_dir)[main],
         'asymmetric': run_task(task, s, data_dir, doc_encode_fn=t)[main]}
    r.update(symmetric_fraction=r['symmetric'] / r['teacher'],
             asymmetric_fraction=r['asymmetric'] / r['teacher'], metric=main)
    out[task] = r
  return out
