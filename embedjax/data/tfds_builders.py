"""TFDS builders over the local benchmark files, stored as ArrayRecord and read through grain.

No TensorFlow is needed or imported (checked with tensorflow-datasets 4.9.10 and grain 0.2.18):

* the builders are ``tfds.core.GeneratorBasedBuilder`` subclasses created with
  ``file_format='array_record'``; ``download_and_prepare()`` then encodes examples with TFDS's
  numpy-only example serializer, and nothing is downloaded: ``_split_generators`` reads the folder
  given to the constructor as ``source_dir`` through :mod:`embedjax.data.readers`;
* reading goes through ``builder.as_data_source()`` (an ``ArrayRecordDataSource`` with ``len`` and
  random access) into ``grain.MapDataset`` for shuffling, batching and checkpointable iteration.

Limitations of the TF-free path, and how this module deals with them:

* ``DatasetBuilder.as_dataset()`` (the ``tf.data`` path) needs TensorFlow; use
  :func:`load_pairs_source` / :func:`pairs_loader` instead.
* ``DatasetBuilder.code_path`` needs the ``importlib_resources`` backport, which TFDS 4.9.10 only
  declares for Python < 3.9; the builders here override it with this file's path.
* ``dataset_info_from_configs()`` expects a TFDS dataset package directory (README, checksums);
  the builders here build ``tfds.core.DatasetInfo`` directly.
* Example float lists are float32 (4.4 -> 4.4000001); float64 scores are stored as raw bytes
  (``Encoding.BYTES``) so they round-trip exactly.
* Text features come back from ``as_data_source()`` as UTF-8 ``bytes``; :class:`DecodedSource`
  turns them into ``str``.
* TFDS caches a prepared dataset by name/config/version only, and would happily serve stale rows
  after the source files change. The config name therefore carries a content hash of the source
  files (``stsb_3f0c9a1e2b4d``), so a changed or different source folder gets its own directory.
* TFDS announces a preparation as "Downloading and preparing dataset"; the builders here print
  ``preparing NAME from FOLDER (local files, nothing downloaded)`` instead, once per source.
* Rows are written in reader order (``disable_shuffling=True``), so index ``i`` of a split is row
  ``i`` of the reader; shuffling is grain's job (deterministic from a seed).

Datasets (``name`` argument) and the keys of one element:

* ``'stsb'``, ``'sick'``, ``'mrpc'``: ``sentence1``, ``sentence2`` (str), ``score`` (float64),
  ``label`` (str; SICK entailment label, ``''`` for the others). Splits: stsb train/dev/test,
  sick train/trial/test, mrpc train/test.
* ``'beir'``: retrieval training pairs from a BEIR folder, one element per judged (query,
  document) pair with relevance > 0: ``query_id``, ``doc_id``, ``query``, ``positive`` (str),
  ``score`` (int64). Splits: every ``qrels/<split>.tsv`` of the folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from etils import epath
import grain
import numpy as np
import tensorflow_datasets as tfds

from embedjax.data import readers

PAIR_DATASETS = ('stsb', 'sick', 'mrpc')
DATASETS = PAIR_DATASETS + ('beir',)

_PAIR_READERS: dict[str, tuple[Callable[..., readers.PairData], tuple[str, ...]]] = {
    'stsb': (readers.read_stsb, readers.STSB_SPLITS),
    'sick': (readers.read_sick, tuple(readers.SICK_SPLITS)),
    'mrpc': (readers.read_mrpc, readers.MRPC_SPLITS),
}

# Source files that define each dataset, for the content hash (missing ones are skipped here; the
# readers report them).
_SOURCE_GLOBS = {
    'stsb': ('sts-*.csv',),
    'sick': ('SICK.txt', 'SICK.txt.gz'),
    'mrpc': ('msr_paraphrase_*.txt',),
    'beir': ('corpus.jsonl', 'corpus.jsonl.gz', 'queries.jsonl', 'queries.jsonl.gz', 'qrels/*.tsv'),
}


@dataclasses.dataclass(eq=False)
class SourceConfig(tfds.core.BuilderConfig):
  """A builder config naming the dataset kind; ``name`` is ``<dataset>_<content hash>``."""

  dataset: str = ''


def source_fingerprint(name: str, source_dir: str | os.PathLike) -> str:
  """12 hex digits of SHA-256 over the relative names and bytes of the dataset's source files."""
  _check_name(name)
  folder = Path(source_dir)
  digest = hashlib.sha256()
  files = sorted({p for pattern in _SOURCE_GLOBS[name] for p in folder.glob(pattern) if p.is_file()})
  for path in files:
    digest.update(path.relative_to(folder).as_posix().encode() + b'\0')
    digest.update(path.read_bytes())
    digest.update(b'\0')
  return digest.hexdigest()[:12]


def _check_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; choose one of {list(DATASETS)}')


class _DropCustomConfigWarning(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Using custom data configuration')


@contextlib.contextmanager
def _without_custom_config_warning() -> Iterator[None]:
  """Drops TFDS's "WARNING: Using custom data configuration: SourceConfig(...)": every builder
  here has a custom config by design (its name carries the source's content hash)."""
  log = logging.getLogger('absl')  # TFDS logs through absl, whose records go to this logger
  drop = _DropCustomConfigWarning()
  log.addFilter(drop)
  try:
    yield
  finally:
    log.removeFilter(drop)


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base: a builder that reads ``source_dir`` instead of downloading."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 computes this with the `importlib_resources` backport, which it only declares
    # as a dependency for Python < 3.9; without it every builder outside `__main__` fails.
    return epath.Path(__file__)

  def __init__(self, *, source_dir: str | os.PathLike, **kwargs: Any):
    self._source_dir = Path(source_dir)
    with _without_custom_config_warning():
      super().__init__(**kwargs)

  # TFDS announces preparation as "Downloading and preparing dataset ..." and "... downloaded and
  # prepared" (``download_and_prepare`` calls these two hooks; tensorflow-datasets 4.9.10). Nothing
  # is downloaded here, so :func:`build` prints its own line instead.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def _splits(self) -> tuple[str, ...]:
    raise NotImplementedError

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    del dl_manager  # Everything is local.
    return {split: self._generate_examples(split) for split in self._splits()}


class PairsBuilder(_LocalBuilder, skip_registration=True):
  """STS-B / SICK / MRPC sentence pairs; ``config.dataset`` picks the reader."""

  name = 'embedjax_pairs'

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Sentence pairs with a gold score (STS) or 0/1 label, read from local files.',
        features=tfds.features.FeaturesDict({
            'sentence1': tfds.features.Text(),
            'sentence2': tfds.features.Text(),
            # Raw bytes: tf.train.Example float lists are float32 and would round 4.4 to 4.4000001.
            'score': tfds.features.Tensor(shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES),
            'label': tfds.features.Text(),
        }),
        disable_shuffling=True,
    )

  def _splits(self) -> tuple[str, ...]:
    return _PAIR_READERS[self.builder_config.dataset][1]

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    reader = _PAIR_READERS[self.builder_config.dataset][0]
    data = reader(self._source_dir, split)
    labels = data.labels if data.labels is not None else [''] * len(data)
    for i, (s1, s2, score, label) in enumerate(zip(data.sentences1, data.sentences2, data.scores, labels)):
      yield i, {'sentence1': s1, 'sentence2': s2, 'score': float(score), 'label': label}


class RetrievalPairsBuilder(_LocalBuilder, skip_registration=True):
  """(query, positive document) pairs from a BEIR folder, one per judged pair with relevance > 0."""

  name = 'embedjax_retrieval_pairs'

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Retrieval training pairs (query, positive document) from a local BEIR folder.',
        features=tfds.features.FeaturesDict({
            'query_id': tfds.features.Text(),
            'doc_id': tfds.features.Text(),
            'query': tfds.features.Text(),
            'positive': tfds.features.Text(),
            'score': tfds.features.Scalar(np.int64),
        }),
        disable_shuffling=True,
    )

  def _splits(self) -> tuple[str, ...]:
    splits = tuple(readers.beir_splits(self._source_dir))
    if not splits:
      raise FileNotFoundError(f'no qrels/<split>.tsv files under {self._source_dir}')
    return splits

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    for i, row in enumerate(retrieval_pairs(readers.read_beir(self._source_dir, split))):
      yield i, row


def retrieval_pairs(data: readers.RetrievalData) -> list[dict[str, Any]]:
  """The rows of the ``'beir'`` dataset: queries in order, their positives in qrels order."""
  doc_text = dict(zip(data.corpus_ids, data.corpus_texts))
  rows = []
  for query_id, query in zip(data.query_ids, data.query_texts):
    for doc_id, score in data.qrels[query_id].items():
      if score > 0:
        rows.append({'query_id': query_id, 'doc_id': doc_id, 'query': query,
                     'positive': doc_text[doc_id], 'score': score})
  return rows


def build(name: str, source_dir: str | os.PathLike, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
  """Prepares (once) and returns the builder for ``name`` over ``source_dir``, stored in ``data_dir``.

  Preparing is skipped when ``data_dir`` already holds this source's content hash and version.
  """
  _check_name(name)
  source_dir = Path(source_dir)
  if not source_dir.is_dir():
    raise FileNotFoundError(f'missing source folder: {source_dir}')
  config = SourceConfig(name=f'{name}_{source_fingerprint(name, source_dir)}', dataset=name,
                        description=f'{name} read from {source_dir}')
  cls = RetrievalPairsBuilder if name == 'beir' else PairsBuilder
  builder = cls(source_dir=source_dir, config=config, data_dir=os.fspath(data_dir), file_format='array_record')
  # The test download_and_prepare() itself makes (is_prepared() logs a warning when it is False).
  if not builder.data_path.exists():
    print(preparing_message(name, source_dir), flush=True)
    builder.download_and_prepare()
  return builder


def preparing_message(name: str, source_dir: str | os.PathLike) -> str:
  return f'preparing {name} from {source_dir} (local files, nothing downloaded)'


def _decode_value(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode('utf-8')
  # Scalars come back as Python ints (int64 features) or 0-d arrays (bytes-encoded float64);
  # make both numpy scalars so a row's types do not depend on the storage encoding.
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return value[()]
  if isinstance(value, int) and not isinstance(value, bool):
    return np.int64(value)
  if isinstance(value, float):
    return np.float64(value)
  return value


class DecodedSource:
  """A grain random-access source over a TFDS ``ArrayRecordDataSource`` with text as ``str``.

  ``len(source)`` is the number of rows; ``source[i]`` is a dict whose ``bytes`` values are
  decoded from UTF-8 and whose numbers are numpy scalars. Picklable, so grain worker processes can use it.
  """

  def __init__(self, source: Any):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {k: _decode_value(v) for k, v in self._source[index].items()}

  def __repr__(self) -> str:
    return f'DecodedSource({self._source!r})'


def load_pairs_source(name: str, split: str, source_dir: str | os.PathLike,
                      data_dir: str | os.PathLike) -> DecodedSource:
  """A random-access source of one split's rows (keys: see the module docstring).

  Builds the ArrayRecord files into ``data_dir`` on first use. Raises ValueError for an unknown
  dataset or split.
  """
  builder = build(name, source_dir, data_dir)
  splits = list(builder.info.splits)
  if split not in splits:
    raise ValueError(f'unknown {name} split {split!r}; choose one of {sorted(splits)}')
  # A data source keeps its builder; a read-only one pickles as its directory (grain worker
  # processes), where the local builders would need their source_dir.
  return DecodedSource(tfds.builder_from_directory(builder.data_dir).as_data_source(split=split))


def pairs_loader(name: str, split: str, source_dir: str | os.PathLike, data_dir: str | os.PathLike, *,
                 batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = 1,
                 drop_remainder: bool = False, num_threads: int = 2) -> grain.DatasetIterator:
  """A deterministic, checkpointable iterator of batches.

  Each batch is a dict of numpy arrays of leading size ``batch_size`` (text as unicode arrays).
  With ``shuffle`` the order is a global permutation fixed by ``seed`` and re-drawn (still from
  ``seed``) each epoch; ``num_epochs=None`` repeats forever. ``it.get_state()`` gives a small dict
  and ``it.set_state(state)`` on a fresh iterator built with the same arguments resumes at the
  same batch.
  """
  ds = grain.MapDataset.source(load_pairs_source(name, split, source_dir, data_dir))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(1, 2 * num_threads))
  return iter(ds.to_iter_dataset(read_options))
