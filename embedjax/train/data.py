"""Training pairs and triplets from the shared data, streamed through tfds (ArrayRecord) + grain.

Sources (``SOURCES``, a plain dict of :class:`Source`), each a list of rows
``{'query', 'positive', ['negative'], 'doc_key'}``:
  scifact   SciFact train qrels: claim -> cited abstract (title + " " + text)
  mrpc      MRPC train pairs labelled paraphrase (1)
  stsb      STS-B train pairs with gold score >= 4
  stsb_scored  every STS-B train pair with its gold score (for CoSENT, AnglE, CoDiEmb's STS loss)
  sick      SICK train triplets: (premise, an entailed hypothesis, a contradicted hypothesis)
  synthetic the project's own synthetic retrieval pairs (needs no shared data)
  scifact_titles  weak supervision (stage 1 of two-stage training): SciFact corpus title -> text
  agnews_titles   weak supervision: AG News title -> description (the test split: see below)
  file:PATH a researcher's own JSONL / CSV / TSV file of (anchor, positive[, negatives...]) rows
            (``embedjax.data.files``; the config's ``data.file`` block says how to read it):
            validated in one streaming pass and converted once into ArrayRecord, then read with
            random access, so a large file trains in bounded memory
Studies add their own sources by passing ``{**SOURCES, **theirs}`` to the loop (e.g.
``embedjax.limit.training_sources``); this module knows none of them.
The built-in sources' rows are read through the tfds builders of
``embedjax.data.tfds_builders`` (prepared once into a cache folder) and kept in memory: they are
small, and filtering (score >= 4, label 1) needs a pass anyway. File sources stay on disk. How rows
become batches (tokenization, padding, packing, the grain loader) is
:mod:`embedjax.train.batches`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from embedjax.config import ConfigError
from embedjax.data import files, synthetic, tfds_builders
# make_loader and tokenize_batch live in embedjax.train.batches; embedjax.train's names for them
# point here
from embedjax.train.batches import make_loader, text_key, tokenize_batch  # noqa: F401


def default_cache_dir() -> Path:
  return Path(os.environ.get('EMBEDJAX_CACHE', Path.home() / '.cache' / 'embedjax')) / 'tfds'


def _scifact(data_dir: Path, cache: Path) -> list[dict]:
  return beir_rows(data_dir / 'scifact', 'train', cache)


def _pairs(name: str, folder: str, keep: Callable[[dict], bool]):
  def load(data_dir: Path, cache: Path) -> list[dict]:
    src = tfds_builders.load_pairs_source(name, 'train', data_dir / folder, cache)
    return [{'query': r['sentence1'], 'positive': r['sentence2'],
             'doc_key': text_key(r['sentence2'])}
            for r in (src[i] for i in range(len(src))) if keep(r)]
  return load


def _stsb_scored(data_dir: Path, cache: Path) -> list[dict]:
  # Every STS-B train pair with its gold score (0-5), for the losses on scored pairs (CoSENT...).
  src = tfds_builders.load_pairs_source('stsb', 'train', data_dir / 'stsb', cache)
  return [{'query': r['sentence1'], 'positive': r['sentence2'], 'score': float(r['score']),
           'doc_key': text_key(r['sentence2'])} for r in (src[i] for i in range(len(src)))]


def _sick_triplets(data_dir: Path, cache: Path) -> list[dict]:
  src = tfds_builders.load_pairs_source('sick', 'train', data_dir / 'sick', cache)
  entailed: dict[str, list[str]] = {}
  contradicted: dict[str, list[str]] = {}
  for i in range(len(src)):
    r = src[i]
    if r['label'] == 'ENTAILMENT':
      entailed.setdefault(r['sentence1'], []).append(r['sentence2'])
    elif r['label'] == 'CONTRADICTION':
      contradicted.setdefault(r['sentence1'], []).append(r['sentence2'])
  rows = []
  for premise in sorted(entailed):  # sorted: a stable order whatever the file order
    for j, pos in enumerate(entailed[premise]):
      negs = contradicted.get(premise)
      if negs:
        rows.append({'query': premise, 'positive': pos, 'negative': negs[j % len(negs)],
                     'doc_key': text_key(pos)})
  return rows


def _synthetic(data_dir: Path | None, cache: Path) -> list[dict]:
  folder = cache / 'synthetic_beir_seed0'
  if not (folder / 'qrels' / 'test.tsv').exists():
    synthetic.write_beir(synthetic.synthetic_retrieval(seed=0, n_docs=300, n_queries=200), folder)
  return beir_rows(folder, 'test', cache)


# --- weakly supervised title -> text pairs (stage 1 of two-stage training) ----------------------
# Read straight from the shared files (no tfds builder: two flat files, no filtering state) and
# kept in memory like the other built-in sources.


def _scifact_titles(data_dir: Path, cache: Path) -> list[dict]:
  """SciFact corpus documents as (title -> abstract text) pairs, in the corpus order.

  Documents with an empty title or text are left out, and their count printed: none in the
  shared copy, so all 5,183 documents give a pair (two titles occur twice, each with its own text; the key is the
  document id). These are the documents SciFact's test queries are searched over: training on
  them uses no test claim or judgement, but a model trained on them has seen the test corpus
  (as any weakly supervised pre-training on a BEIR corpus has).
  """
  del cache
  from embedjax.data import readers
  folder = data_dir / 'scifact'
  path = folder / 'corpus.jsonl'
  path = path if path.is_file() else folder / 'corpus.jsonl.gz'
  rows, skipped = [], 0
  for _, obj in readers.read_jsonl(path):
    title, text = str(obj.get('title') or '').strip(), str(obj.get('text') or '').strip()
    if title and text:
      rows.append({'query': title, 'positive': text, 'doc_key': text_key(str(obj['_id']))})
    else:
      skipped += 1
  _say_skipped(path, skipped, 'an empty title or text')
  return rows


def _agnews_titles(data_dir: Path, cache: Path) -> list[dict]:
  """AG News articles as (title -> description) pairs, both cleaned as ``readers.ag_news_text``
  cleans them (backslashes to spaces, whitespace collapsed).

  The shared data has only AG News's test split (7,600 articles; no title or description is
  empty), so these pairs are its test articles: a model trained on them must not be evaluated
  on ``agnews_clustering`` (nor on any AG News test task).
  """
  del cache
  from embedjax.data import readers
  path = readers._require(data_dir / 'ag_news' / 'test.csv')
  rows, skipped = [], 0
  for number, fields in readers._iter_csv(path):  # the reader read_ag_news uses
    readers._check_columns(fields, 3, path, number)
    title, description = readers.ag_news_text(fields[1], ''), readers.ag_news_text('', fields[2])
    if title and description:
      rows.append({'query': title, 'positive': description, 'doc_key': text_key(description)})
    else:
      skipped += 1
  _say_skipped(path, skipped, 'an empty title or description')
  return rows


def _say_skipped(path: Path, count: int, why: str) -> None:
  # A weakly supervised source leaves out rows that make no pair; it says how many, never silently.
  if count:
    print(f'{path}: {count} rows left out ({why})', flush=True)


def beir_rows(folder: Path, split: str, cache: Path) -> list[dict]:
  """Rows of a BEIR folder's qrels split: (query, relevant document, its key)."""
  src = tfds_builders.load_pairs_source('beir', split, folder, cache)
  return [{'query': r['query'], 'positive': r['positive'], 'doc_key': text_key(r['doc_id'])}
          for r in (src[i] for i in range(len(src)))]


@dataclasses.dataclass(frozen=True)
class Source:
  """A training source: ``load(data_dir, cache) -> rows``, and what it needs and gives."""
  load: Callable[[Path | None, Path], list[dict]]
  needs_shared_data: bool        # reads ../shared/data (else generates its own)
  hard_negatives: bool           # rows carry a 'negative' (file sources: 'negatives')
  folders: tuple[str, ...] = ()  # the folders of the shared data it reads (its provenance inputs)
  negatives: int = 1             # hard negatives per row, when it has any
  path: Path | None = None       # a file source's file (its provenance input)
  scored: bool = False           # rows are scored pairs {'query', 'positive', 'score'} (CoSENT...)
  # rows are labelled texts {'text', 'label'} (a 'labelled' file): each text is both query and
  # document (two dropout views, as SimCSE) and its label is its doc_key, so rows of one label
  # are each other's positives for multi_positive_info_nce and masked negatives for info_nce
  labelled: bool = False
  target_dim: int = 0            # rows are {'query', 'target': (D,) float32} teacher embeddings
                                 # of this width, no document (distillation; 0 = not such rows)


SOURCES: dict[str, Source] = {
    'scifact': Source(_scifact, needs_shared_data=True, hard_negatives=False, folders=('scifact',)),
    'mrpc': Source(_pairs('mrpc', 'mrpc', lambda r: r['score'] == 1), True, False, ('mrpc',)),
    'stsb': Source(_pairs('stsb', 'stsb', lambda r: r['score'] >= 4.0), True, False, ('stsb',)),
    'stsb_scored': Source(_stsb_scored, needs_shared_data=True, hard_negatives=False,
                          folders=('stsb',), scored=True),
    'sick': Source(_sick_triplets, needs_shared_data=True, hard_negatives=True, folders=('sick',)),
    'synthetic': Source(_synthetic, needs_shared_data=False, hard_negatives=False),
    'scifact_titles': Source(_scifact_titles, needs_shared_data=True, hard_negatives=False,
                             folders=('scifact',)),
    'agnews_titles': Source(_agnews_titles, needs_shared_data=True, hard_negatives=False,
                            folders=('ag_news',)),
}


def file_spec(name: str, file_options: Any = None) -> files.FileSpec:
  """The FileSpec of a ``file:PATH`` source with the config's ``data.file`` options (a
  ConfigDict or dict: kind, format, columns as 'role=column,...' or a mapping, header, encoding;
  empty strings mean the defaults)."""
  options = dict(file_options.to_dict() if hasattr(file_options, 'to_dict') else file_options or {})
  options = {k: v for k, v in options.items() if v != ''}
  if isinstance(options.get('columns'), str):
    options['columns'] = _parse_columns(options['columns'])
  try:
    spec = files.FileSpec.from_string(name, **options)
  except ConfigError as e:
    raise ConfigError(f'data.file: {e}') from None
  return spec


def _parse_columns(text: str) -> dict:
  """'anchor=question,positive=answer,negatives=n1|n2' -> {'anchor': 'question', ...}."""
  out = {}
  for item in filter(None, (x.strip() for x in text.split(','))):
    role, sep, column = item.partition('=')
    if not sep or not role.strip() or not column.strip():
      raise ConfigError(f"data.file.columns: {item!r} is not 'role=column'")
    names = [c.strip() for c in column.split('|')]
    out[role.strip()] = tuple(names) if role.strip() == 'negatives' else names[0]
  return out


def _load_file(spec: files.FileSpec):
  def load(data_dir: Path | None, cache: Path):
    del data_dir
    return files.prepare(spec, cache / 'files')
  return load


def with_files(names: str | list[str], file_options: Any, cache_dir: Path | None,
               sources: dict[str, Source] = SOURCES) -> dict[str, Source]:
  """``sources`` plus a Source for every ``file:PATH`` name of ``names``.

  Each file is validated and converted here (once: a later call reuses the conversion), so a
  malformed file fails with ``path:line: field 'name': ...`` before anything is built or trained.
  With several processes, process 0 converts first and the others then reuse its conversion
  (the cache folder must be shared, or each process converts its own copy).
  """
  out = dict(sources)
  cache = Path(cache_dir) if cache_dir else default_cache_dir()
  for name in source_names(names):
    if not files.is_file_source(name):
      continue
    spec = file_spec(name, file_options)
    stats = _prepare_in_order(spec, cache).stats
    negatives = stats.negatives or 0
    out[name] = Source(_load_file(spec), needs_shared_data=False, hard_negatives=negatives > 0,
                       negatives=max(negatives, 1), path=Path(spec.path),
                       scored=spec.kind == 'scored', labelled=spec.kind == 'labelled')
  return out


def _prepare_in_order(spec: files.FileSpec, cache: Path):
  import jax  # only here: the rest of this module is numpy and grain
  if jax.process_count() == 1:
    return files.prepare(spec, cache / 'files')
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    source = files.prepare(spec, cache / 'files')
  multihost_utils.sync_global_devices(f'prepare {spec.path}')
  if jax.process_index() != 0:
    source = files.prepare(spec, cache / 'files')
  return source


def source_names(names: str | list[str]) -> list[str]:
  return [n.strip() for n in names.split(',')] if isinstance(names, str) else list(names)


def check_sources(names: str | list[str], sources: dict[str, Source]) -> list[Source]:
  """The named sources, or a one-line error (unknown name, or hard negatives mixed with none)."""
  picked = []
  for name in source_names(names):
    if name not in sources:
      if files.is_file_source(name):  # with_files() adds file sources; this call came without it
        raise ConfigError(f'data.train {name!r}: file sources are read through with_files()')
      hint = (f"; for your own file write 'file:{name}'"
              if name.lower().endswith(('.jsonl', '.json', '.csv', '.tsv')) else '')
      builtin = sorted(n for n in sources if not files.is_file_source(n))
      raise ConfigError(f'data.train {name!r}: unknown training source; choose from {builtin} '
                        f"or 'file:PATH'{hint}")
    picked.append(sources[name])
  if len({s.labelled for s in picked}) > 1:
    raise ConfigError(f'data.train={names!r}: cannot mix labelled texts with pairs in one batch '
                      'stream (their doc keys would be labels for some rows only)')
  if len({s.scored for s in picked}) > 1:
    raise ConfigError(f'data.train={names!r}: cannot mix scored pairs with unscored rows in one '
                      'batch stream')
  if len({s.target_dim for s in picked}) > 1:
    raise ConfigError(f'data.train={names!r}: cannot mix distillation targets (of one width) with '
                      'other rows in one batch stream')
  if len({s.hard_negatives for s in picked}) > 1:
    raise ConfigError(f'data.train={names!r}: cannot mix sources with and without hard negatives '
                     'in one batch stream')
  if picked[0].hard_negatives and len({s.negatives for s in picked}) > 1:
    raise ConfigError(f'data.train={names!r}: the sources have different numbers of hard '
                      f'negatives per row ({sorted({s.negatives for s in picked})})')
  return picked


def source_inputs(names: str | list[str], data_dir: Path | None,
                  sources: dict[str, Source] = SOURCES) -> list[Path]:
  """The shared-data folders the named sources read (none without a data folder)."""
  picked = check_sources(names, sources)
  own = [s.path for s in picked if s.path is not None]
  if data_dir is None:
    return own
  folders = dict.fromkeys(f for s in picked for f in s.folders)
  return [Path(data_dir) / f for f in folders] + own


class _Concat:
  """Random access over several row sources in order (lists in memory, prepared files on disk);
  rows with one 'negative' become rows with 'negatives' [it] when a file source is among them,
  so that every row has the same keys."""

  def __init__(self, parts: list):
    self._parts = parts
    self._starts = np.cumsum([0] + [len(p) for p in parts])
    self._as_list = any(isinstance(p, files.FileSource) for p in parts)

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, index: int) -> dict:
    part = int(np.searchsorted(self._starts, index, side='right')) - 1
    row = self._parts[part][index - int(self._starts[part])]
    if self._as_list and 'negative' in row:
      row = {k: v for k, v in row.items() if k != 'negative'} | {'negatives': [row['negative']]}
    return row


def load_rows(names: str | list[str], data_dir: Path | None, cache_dir: Path | None = None,
              sources: dict[str, Source] = SOURCES):
  """The rows of the named sources (a list or a comma-separated string), in order: a list when
  every source is in memory, else a random-access source (``len``, ``[i]``) over them."""
  cache = Path(cache_dir) if cache_dir else default_cache_dir()
  parts = []
  for name, source in zip(source_names(names), check_sources(names, sources)):
    if source.needs_shared_data and data_dir is None:
      raise FileNotFoundError(f'training source {name!r} needs the shared data folder')
    parts.append(source.load(data_dir, cache))
  if not sum(len(p) for p in parts):
    raise ValueError(f'training sources {names} produced no rows')
  if all(isinstance(p, list) for p in parts):
    rows = [r for p in parts for r in p]
    with_neg = sum('negative' in r for r in rows)
    if 0 < with_neg < len(rows):  # a source that gives negatives for only some rows
      raise ValueError('cannot mix rows with and without hard negatives in one batch stream')
    return rows
  return parts[0] if len(parts) == 1 else _Concat(parts)
