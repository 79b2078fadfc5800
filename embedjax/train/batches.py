"""Rows -> training batches: tokenization (each text once a run under ``data.token_cache_texts``),
padding or packing (``data.padding``), and the grain loader that makes them.

A batch of rows (a dict of arrays of texts, as grain batches the rows of
:mod:`embedjax.train.data`'s sources) becomes this process's slice of token arrays:
``query_ids`` / ``query_mask``, ``doc_ids`` / ``doc_mask``, ``neg_ids`` / ``neg_mask`` (B, H, L),
``doc_key``, and ``score`` or ``target`` where the rows have them; packed (``'pack'``): per column
``{col}_ids`` / ``{col}_segments`` / ``{col}_positions`` (R, L) and each text's flat (row, slot)
place ``{col}_index``. Padding: ``'bucket'`` pads each column of a batch to the shortest rung of a
ladder (64, 128, 256, ... tokens, then the column's maximum length) that holds its longest text,
so short texts do not pay for ``query_len`` / ``doc_len`` tokens of masked attention; the step
compiles once per rung pair it meets (a few shapes, each static under jit). ``'max_length'`` pads
every batch to the maximum lengths (one shape). ``'pack'`` packs each column's texts into rows of
its maximum length, up to ``data.pack_segments`` texts a row (as ``embedjax.encoding`` packs), so
a batch of mostly short texts with a few long ones costs its tokens, not B x max_length;
documents and hard negatives are packed together (``neg_index`` (B, H) into the documents'
rows). Without dropout the loss and gradients are the same under every padding (padded positions
and other texts are masked out of attention and pooling); dropout masks are drawn for the batch's
shape, so with dropout the paddings give runs that differ by their noise.

Multi-process: every process builds the same global batches and keeps its own contiguous slice of
rows, so the data order does not depend on the number of processes.

This module needs grain, numpy and the tokenizer, not tensorflow-datasets (which the sources'
builders use), so the loader also runs where only those are installed (a GPU host's image).
"""

from __future__ import annotations

import functools
import zlib
from typing import Any

import grain
import numpy as np

from embedjax.config import ConfigError
from embedjax.models.tokenizer import TextTokenizer


def text_key(text: str) -> int:
  """A stable 31-bit id of a text, for duplicate-positive masking (``doc_key``; crc32 is stable
  across processes and runs)."""
  return zlib.crc32(text.encode('utf-8')) & 0x7FFFFFFF


PADDINGS = ('bucket', 'max_length', 'pack')
SHORTEST_RUNG = 64  # the ladder's first padded length (as encoding's rows)
ROW_STEPS = 8  # 'pack': row counts rounded up to multiples of 1/8 of the texts (<= 8 shapes)


def padded_length(ids: list[list[int]], max_length: int, padding: str) -> int:
  """Tokens a column is padded to: ``max_length``, or under ``'bucket'`` the shortest rung of
  64, 128, 256, ... (then ``max_length``) holding the longest of ``ids``."""
  if padding in ('max_length', 'pack'):  # (packed rows are max_length long)
    return max_length
  if padding != 'bucket':
    raise ConfigError(f'data.padding {padding!r}: not one of {list(PADDINGS)}')
  from embedjax.encoding import row_length_ladder  # (it imports the models)
  longest = max((len(x) for x in ids), default=1)
  return next(r for r in row_length_ladder(max_length, SHORTEST_RUNG) if r >= longest)


def tokenize_batch(rows: dict[str, np.ndarray], *, query_tok: Tokenizer, doc_tok: Tokenizer,
                   padding: str, pack_segments: int, process_index: int = 0,
                   process_count: int = 1, row_multiple: int = 1) -> dict[str, np.ndarray]:
  """A grain batch (dict of arrays of texts) -> this process's slice of token arrays, each column
  padded as ``padding`` says (``data.padding``: :func:`padded_length`), or packed (``'pack'``:
  :func:`pack_column`, at most ``pack_segments`` (``data.pack_segments``) texts a row, rows a
  multiple of ``row_multiple``, the devices this process feeds). Lengths and row counts are the
  global batch's, so that every process's slice has the same shape."""
  if 'label' in rows and 'text' in rows:  # a labelled file's rows: (text, label)
    rows = {'query': rows['text'], 'positive': rows['text'],
            'doc_key': np.asarray(rows['label'], np.int64)}
  if 'text1' in rows:  # a scored file's rows: (text1, text2, score)
    rows = {'query': rows['text1'], 'positive': rows['text2'], 'score': rows['score'],
            'doc_key': np.array([text_key(str(t)) for t in rows['text2']])}
  n = len(rows['query'])
  per = n // process_count
  sl = slice(process_index * per, (process_index + 1) * per)

  if padding == 'pack':
    return _packed_batch(rows, query_tok, doc_tok, process_index, process_count, pack_segments,
                         row_multiple)

  def columns(tok: TextTokenizer, *texts) -> list[dict[str, np.ndarray]]:
    # Every process tokenizes the whole batch (cheap next to the step) so that the bucketed
    # length is the global batch's; columns given together share one length.
    ids = [tok.encode([str(t) for t in col]) for col in texts]
    length = padded_length([x for col in ids for x in col], tok.max_length, padding)
    return [tok.pad(col[sl], length) for col in ids]

  (q,) = columns(query_tok, rows['query'])
  if 'target' in rows:  # distillation rows: a text and its teacher embedding, no document
    return {'query_ids': q['input_ids'], 'query_mask': q['attention_mask'],
            'target': np.asarray(rows['target'][sl], np.float32)}
  d, *negs = columns(doc_tok, rows['positive'], *_negative_columns(rows))
  out = {'query_ids': q['input_ids'], 'query_mask': q['attention_mask'],
         'doc_ids': d['input_ids'], 'doc_mask': d['attention_mask'],
         'doc_key': np.asarray(rows['doc_key'][sl], np.int32)}
  if 'score' in rows:
    out['score'] = np.asarray(rows['score'][sl], np.float32)
  if negs:
    out['neg_ids'] = np.stack([x['input_ids'] for x in negs], axis=1)
    out['neg_mask'] = np.stack([x['attention_mask'] for x in negs], axis=1)
  return out


def _negative_columns(rows) -> list:
  if 'negative' in rows:
    return [rows['negative']]
  # (File rows: grain batches the list of k negatives into k arrays of (B,) texts.)
  return list(rows['negatives']) if len(rows.get('negatives', ())) else []


def pack_column(texts: list[list[list[int]]], row_length: int, max_segments: int,
                row_multiple: int, process_index: int, pad_id: int) -> tuple[dict, list]:
  """Packs each process's texts (``texts[p]``: its token id lists) into rows; returns this
  process's arrays ``{'ids', 'segments', 'positions'}`` (R, row_length) and each of its texts'
  global flat place ``(p * R + row) * max_segments + slot`` in the (global rows x slots) grid.

  R is the same for every process: the most rows any process needs, rounded up to a multiple of
  ``max(row_multiple, texts / ROW_STEPS)`` (rounded to ``row_multiple``), so a run compiles at
  most about ROW_STEPS row counts."""
  from embedjax.encoding import make_batch, pack_rows
  plans = [pack_rows([len(t) for t in mine], row_length, max_segments) for mine in texts]
  n = max(len(mine) for mine in texts)
  quantum = -(-max(1, n // ROW_STEPS) // row_multiple) * row_multiple
  num_rows = -(-max(len(p) for p in plans) // quantum) * quantum
  mine, plan = texts[process_index], plans[process_index]
  packed = make_batch(mine, plan, row_length, num_rows, max_segments, pad_id)
  place = [0] * len(mine)
  for r, row in enumerate(packed.text_index):
    for slot, i in enumerate(row):
      if i >= 0:
        place[i] = (process_index * num_rows + r) * max_segments + slot
  arrays = {'ids': packed.input_ids, 'segments': packed.segment_ids,
            'positions': packed.position_ids}
  return arrays, place


def _packed_batch(rows, query_tok: Tokenizer, doc_tok: Tokenizer, process_index: int,
                  process_count: int, max_segments: int,
                  row_multiple: int) -> dict[str, np.ndarray]:
  """``tokenize_batch``'s ``'pack'`` form (the keys of the module docstring)."""
  n = len(rows['query'])
  per = n // process_count
  slices = [slice(p * per, (p + 1) * per) for p in range(process_count)]

  def pack(tok: TextTokenizer, per_process: list[list[list[int]]], name: str) -> list:
    arrays, place = pack_column(per_process, tok.max_length, max_segments, row_multiple,
                                process_index, tok.pad_id)
    out.update({f'{name}_{k}': v for k, v in arrays.items()})
    return place

  out: dict[str, np.ndarray] = {}
  q = query_tok.encode([str(t) for t in rows['query']])
  out['query_index'] = np.asarray(pack(query_tok, [q[sl] for sl in slices], 'query'), np.int32)
  mine = slices[process_index]
  if 'target' in rows:  # distillation rows: a text and its teacher embedding, no document
    out['target'] = np.asarray(rows['target'][mine], np.float32)
    return out
  docs = doc_tok.encode([str(t) for t in rows['positive']])
  negs = [doc_tok.encode([str(t) for t in col]) for col in _negative_columns(rows)]
  # A process's documents, then its negatives row by row (row b's H negatives together).
  texts = [docs[sl] + [col[b] for b in range(sl.start, sl.stop) for col in negs] for sl in slices]
  place = pack(doc_tok, texts, 'doc')
  out['doc_index'] = np.asarray(place[:per], np.int32)
  if negs:
    out['neg_index'] = np.asarray(place[per:], np.int32).reshape(per, len(negs))
  out['doc_key'] = np.asarray(rows['doc_key'][mine], np.int32)
  if 'score' in rows:
    out['score'] = np.asarray(rows['score'][mine], np.float32)
  return out


class TokenIdCache:
  """A tokenizer whose ``encode`` remembers the ids of up to ``max_texts`` distinct texts, so that
  a run tokenizes a text once (in its first epoch) rather than once an epoch: the tokenizer is
  nearly all of the loader's time (BENCHMARKS.md). Ids are kept as int32 arrays keyed by the
  text; once ``max_texts`` are kept, further texts are tokenized each time they come, so memory
  stays bounded for a training set of any size. The ids are the tokenizer's own, cached or not.
  Safe under grain's read threads: a text two threads meet at once is tokenized twice, to the
  same ids."""

  def __init__(self, tokenizer: TextTokenizer, max_texts: int):
    self.tokenizer = tokenizer
    self.max_length = tokenizer.max_length
    self.pad_id = tokenizer.pad_id
    self.max_texts = max_texts
    self._ids: dict[str, np.ndarray] = {}

  def __len__(self) -> int:
    """Distinct texts cached."""
    return len(self._ids)

  def encode(self, texts: list[str]) -> list[np.ndarray]:
    new = [t for t in dict.fromkeys(texts) if t not in self._ids]
    fresh = {t: np.asarray(ids, np.int32) for t, ids in zip(new, self.tokenizer.encode(new))}
    for text in new[:max(0, self.max_texts - len(self._ids))]:
      self._ids[text] = fresh[text]
    return [self._ids[t] if t in self._ids else fresh[t] for t in texts]

  def pad(self, ids, length: int | None = None) -> dict[str, np.ndarray]:
    return self.tokenizer.pad(ids, length)


Tokenizer = TextTokenizer | TokenIdCache  # what tokenize_batch reads ids with


def make_loader(rows, tokenizer: TextTokenizer, *, batch_size: int, query_len: int,
                doc_len: int, seed: int, process_index: int = 0, process_count: int = 1,
                padding: str, pack_segments: int, token_cache_texts: int, prefetch: int = 2,
                row_multiple: int = 1, read_threads: int = 1) -> Any:
  """An endless, deterministic, checkpointable iterator of tokenized batches (numpy dicts) over
  ``rows`` (a list, or a random-access source as ``load_rows`` returns), padded or packed as
  ``padding`` says (:func:`tokenize_batch`). ``token_cache_texts`` (``data.token_cache_texts``):
  the ids of up to that many distinct queries, and as many documents, kept after their first
  tokenization (:class:`TokenIdCache`; 0: none); the batches are the same either way."""
  if batch_size % process_count:
    raise ConfigError(f'batch size {batch_size} is not divisible by {process_count} processes')
  if len(rows) < batch_size:
    raise ConfigError(f'{len(rows)} training rows are fewer than one batch of {batch_size}')
  query_tok = tokenizer.with_max_length(query_len)
  doc_tok = tokenizer.with_max_length(doc_len)
  if token_cache_texts:
    query_tok = TokenIdCache(query_tok, token_cache_texts)
    doc_tok = TokenIdCache(doc_tok, token_cache_texts)
  fn = functools.partial(tokenize_batch, query_tok=query_tok, doc_tok=doc_tok,
                         process_index=process_index, process_count=process_count,
                         padding=padding, pack_segments=pack_segments, row_multiple=row_multiple)
  ds = (grain.MapDataset.source(rows).shuffle(seed=seed).repeat(None)
        .batch(batch_size, drop_remainder=True).map(fn))
  # read_threads > 1: batches made (tokenized) in parallel threads, still in order
  options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))
