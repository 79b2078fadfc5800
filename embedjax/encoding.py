"""Embedding any number of texts: packed rows, few static shapes, bounded memory, streamed output.

How it works, and why:
- Texts are tokenized in chunks (``chunk_size`` texts at a time), so memory is bounded by a chunk,
  not by the corpus.
- Within a chunk, texts are sorted by length and *packed*: several texts share one row of
  ``row_length`` tokens, each with its own segment id and positions restarting at 0, and attention
  is restricted to each text's own tokens. This computes exactly what separate padded rows would
  (tested against sentence-transformers) but spends no work on padding.
- Row lengths come from a short ladder (64, 128, 256, ... up to ``max_seq_length``) and each text
  goes to the shortest row that holds it (its *length class*), so short texts are not packed into
  long rows: attention costs (row length)^2 per row, and on CPU it is the largest cost after the
  dense layers. A class that cannot fill a whole batch hands its texts to the next longer class
  (where they pack several to a row), so every row length used runs full batches and only the
  longest one has a partial last batch; that last batch is cut to a multiple of a quarter batch.
  The number of shapes to compile stays small (each costs seconds on CPU).
- Every device call holds about ``tokens_per_batch`` tokens (``rows_per_batch`` x ``row_length``,
  at most ``max_segments`` texts a row), so ``jit`` compiles once per (rows, row length).
- Results go into a preallocated array, or into an ``.npy`` memmap written under a temporary name
  and renamed when complete, so an interrupted run never leaves a truncated file that looks whole.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np
from tqdm import tqdm  # plain bars: tqdm.auto warns at import in kernels without ipywidgets

from embedjax.models.embedder import embed_packed
from embedjax.models.pretrained import Pretrained
from embedjax.models.spec import EmbedderSpec


@dataclasses.dataclass(frozen=True)
class PackedBatch:
  """Host arrays of one device call. Shapes: (R, L) for the token arrays, (R, S) for ``text_index``."""
  input_ids: np.ndarray
  segment_ids: np.ndarray
  position_ids: np.ndarray
  text_index: np.ndarray  # which text (chunk-local index) each (row, slot) holds; -1 = empty


def row_length_ladder(max_seq_length: int, shortest: int = 64) -> tuple[int, ...]:
  """Row lengths used: shortest, 2x, 4x ... below max_seq_length, then max_seq_length itself."""
  ladder = []
  row = shortest
  while row < max_seq_length:
    ladder.append(row)
    row *= 2
  return tuple(ladder) + (max_seq_length,)


def pack_rows(lengths: Sequence[int], row_length: int, max_segments: int) -> list[list[int]]:
  """Best-fit packing of texts (given their token counts) into rows of ``row_length`` tokens.

  Returns rows as lists of text indices; rows come out longest texts first, so the last rows hold
  the shortest texts. Every length must be <= row_length.
  """
  # Best fit over texts sorted longest first: each text goes to the open row whose free space
  # fits it most tightly. bins[f] holds the open rows with exactly f free tokens, so a lookup
  # scans at most row_length sizes instead of every row.
  order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
  rows: list[list[int]] = []
  bins: list[list[int]] = [[] for _ in range(row_length + 1)]
  for i in order:
    n = lengths[i]
    if n > row_length:
      raise ValueError(f'text {i} has {n} tokens, more than the row length {row_length}')
    free = next((f for f in range(n, row_length + 1) if bins[f]), None)
    if free is None:
      rows.append([])
      r, free = len(rows) - 1, row_length
    else:
      r = bins[free].pop()
    rows[r].append(i)
    if len(rows[r]) < max_segments and free - n > 0:
      bins[free - n].append(r)
  return rows


def make_batch(token_ids: Sequence[Sequence[int]], rows: Sequence[Sequence[int]], row_length: int,
               num_rows: int, max_segments: int, pad_id: int = 0) -> PackedBatch:
  """Host arrays for packed ``rows`` (lists of text indices), padded to ``num_rows`` rows."""
  ids = np.full((num_rows, row_length), pad_id, np.int32)
  seg = np.zeros((num_rows, row_length), np.int32)
  pos = np.zeros((num_rows, row_length), np.int32)
  where = np.full((num_rows, max_segments), -1, np.int64)
  for r, row in enumerate(rows):
    offset = 0
    for s, i in enumerate(row):
      toks = token_ids[i]
      ids[r, offset:offset + len(toks)] = toks
      seg[r, offset:offset + len(toks)] = s + 1
      pos[r, offset:offset + len(toks)] = np.arange(len(toks))
      where[r, s] = i
      offset += len(toks)
  return PackedBatch(ids, seg, pos, where)


def pack(token_ids: Sequence[Sequence[int]], row_length: int, rows_per_batch: int,
         max_segments: int, pad_id: int = 0) -> list[PackedBatch]:
  """Packs tokenized texts into fixed-shape batches of rows (best fit over length-sorted texts).

  Every text must fit in one row (len <= row_length). Returns batches of exactly
  ``rows_per_batch`` rows; trailing rows of the last batch are empty.
  """
  rows = pack_rows([len(t) for t in token_ids], row_length, max_segments)
  return [make_batch(token_ids, rows[start:start + rows_per_batch], row_length, rows_per_batch,
                     max_segments, pad_id)
          for start in range(0, len(rows), rows_per_batch)]


def plan_batches(lengths: Sequence[int], ladder: Sequence[int], rows_for: Callable[[int], int],
                 max_segments: int) -> list[tuple[int, int, list[list[int]]]]:
  """Splits texts into length classes and packs each: a list of (row_length, num_rows, rows).

  Each text starts in the shortest row length of ``ladder`` that holds it. A class packs into full
  batches of ``rows_for(row_length)`` rows; texts of rows that do not fill a whole batch move up to
  the next class. The longest class present keeps its partial last batch, with ``num_rows``
  rounded up to a multiple of a quarter batch (a few shapes to compile, little empty work).
  """
  if max(lengths) > ladder[-1]:
    raise ValueError(f'a text has {max(lengths)} tokens, more than the longest row {ladder[-1]}')
  classes: list[list[int]] = [[] for _ in ladder]
  for i, n in enumerate(lengths):
    classes[next(c for c, row in enumerate(ladder) if n <= row)].append(i)
  last = max(c for c, members in enumerate(classes) if members)
  plan = []
  carry: list[int] = []
  for c in range(last + 1):
    members = carry + classes[c]
    if not members:
      continue
    row_length, per_batch = ladder[c], rows_for(ladder[c])
    rows = [[members[k] for k in row]
            for row in pack_rows([lengths[i] for i in members], row_length, max_segments)]
    full = len(rows) // per_batch * per_batch if c < last else len(rows)
    for start in range(0, full, per_batch):
      chunk = rows[start:start + per_batch]
      quarter = max(1, per_batch // 4)
      plan.append((row_length, min(per_batch, -(-len(chunk) // quarter) * quarter), chunk))
    carry = [i for row in rows[full:] for i in row]
  return plan


# Tokens per device call. Measured on a 2-core AMD EPYC (XLA CPU, all-MiniLM-L6-v2): see
# BENCHMARKS.md.
TOKENS_PER_BATCH = 2048


@functools.lru_cache(maxsize=16)
def _compiled_embed(spec: EmbedderSpec, num_segments: int, prompt_length: int = 0) -> Callable:
  # Cached per (spec, S, prompt length) so repeated encode() calls reuse the jitted function (and
  # its compiled executables for each row length) instead of tracing anew.
  return jax.jit(functools.partial(embed_packed, spec=spec, num_segments=num_segments,
                                   prompt_length=prompt_length))


def encode(model: Pretrained, texts: Sequence[str], *, rows_per_batch: int | None = None,
           tokens_per_batch: int = TOKENS_PER_BATCH, max_segments: int = 32,
           chunk_size: int = 32768, out: str | os.PathLike | None = None, progress: bool = True,
           allow_empty: bool = False, params=None, prompt: str | None = None) -> np.ndarray:
  """Embeds texts with a pretrained (or fine-tuned) model.

  Args:
    model: a ``Pretrained`` (spec, params, tokenizer).
    texts: N strings. An empty list is an error; so is an empty/blank string unless allow_empty.
    rows_per_batch: rows per device call, whatever the row length; None (default): about
      ``tokens_per_batch`` tokens per call, i.e. tokens_per_batch // L rows of length L.
    tokens_per_batch: tokens per device call when rows_per_batch is None.
    max_segments: at most this many texts share a row (static S of the pooled output).
    chunk_size: texts tokenized and packed at a time (bounds host memory).
    out: optional ``.npy`` path: embeddings are streamed into a memmap there (atomic rename).
    progress: show a progress bar.
    params: optional params overriding ``model.params`` (e.g. a training state's).
    prompt: optional text prepended to every text (e.g. ``model.prompts['query']``); when the
      model's pooling excludes the prompt (``spec.include_prompt`` False) its tokens are attended
      to but not pooled, as in sentence-transformers.
  Returns:
    (N, D) float32 embeddings (D = ``model.spec.embedding_dim``), in input order (a memmap when
    ``out`` is given).
  """
  if isinstance(texts, str):
    raise TypeError('encode takes a sequence of texts, not a single string')
  n = len(texts)
  if n == 0:
    raise ValueError('encode got no texts')
  if not allow_empty:
    for i, t in enumerate(texts):
      if isinstance(t, str) and not t.strip():
        raise ValueError(f'text {i} is empty (pass allow_empty=True to embed it as [CLS] [SEP])')
  params = model.params if params is None else params
  spec, tok = model.spec, model.tokenizer
  dim = spec.embedding_dim
  prompt_length = 0
  if prompt:
    texts = [prompt + t if isinstance(t, str) else t for t in texts]
    prompt_length = 0 if spec.include_prompt else tok.prompt_length(prompt)
  fn = _compiled_embed(spec, max_segments, prompt_length)
  ladder = row_length_ladder(spec.max_seq_length, min(64, spec.max_seq_length))
  if rows_per_batch is not None and rows_per_batch < 1:
    raise ValueError(f'rows_per_batch must be positive, got {rows_per_batch}')
  rows_for = ((lambda row_length: rows_per_batch) if rows_per_batch is not None else
              (lambda row_length: max(1, tokens_per_batch // row_length)))

  tmp_path = None
  if out is not None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out.with_name(out.name + '.partial.npy')
    result = np.lib.format.open_memmap(tmp_path, mode='w+', dtype=np.float32, shape=(n, dim))
  else:
    result = np.empty((n, dim), np.float32)

  bar = tqdm(total=n, desc='encode', unit='text', disable=not progress, dynamic_ncols=True)
  try:
    for start in range(0, n, chunk_size):
      chunk = texts[start:start + chunk_size]
      ids = tok.encode(chunk)
      plan = plan_batches([len(x) for x in ids], ladder, rows_for, max_segments)
      pending = None  # overlap: dispatch batch k+1 before copying batch k back to the host
      for row_length, num_rows, rows in plan:
        batch = make_batch(ids, rows, row_length, num_rows, max_segments, tok.pad_id)
        emb = fn(params, input_ids=batch.input_ids, segment_ids=batch.segment_ids,
                 position_ids=batch.position_ids)
        if pending is not None:
          _scatter(result, start, *pending, bar)
        pending = (emb, batch.text_index)
      _scatter(result, start, *pending, bar)
    if out is not None:
      result.flush()
      del result
      os.replace(tmp_path, out)
      return np.load(out, mmap_mode='r')
    return result
  except BaseException:
    if tmp_path is not None and tmp_path.exists():
      tmp_path.unlink()
    raise
  finally:
    bar.close()


def encode_ids(model: Pretrained, ids: Sequence[Sequence[int]], *, params=None,
               tokens_per_batch: int = TOKENS_PER_BATCH, max_segments: int = 32) -> np.ndarray:
  """Embeds texts already tokenized (special tokens included, each at most the model's
  ``max_seq_length``), packed and batched as :func:`encode` does. Returns (N, D) float32."""
  spec = model.spec
  longest = max((len(x) for x in ids), default=0)
  if not ids or longest > spec.max_seq_length:
    raise ValueError(f'encode_ids needs 1+ token lists of at most {spec.max_seq_length} tokens, got '
                     f'{len(ids)} (longest {longest})')
  params = model.params if params is None else params
  fn = _compiled_embed(spec, max_segments, 0)
  ladder = row_length_ladder(spec.max_seq_length, min(64, spec.max_seq_length))
  plan = plan_batches([len(x) for x in ids], ladder,
                      lambda row_length: max(1, tokens_per_batch // row_length), max_segments)
  result = np.empty((len(ids), spec.embedding_dim), np.float32)
  for row_length, num_rows, rows in plan:
    batch = make_batch(ids, rows, row_length, num_rows, max_segments, model.tokenizer.pad_id)
    emb = fn(params, input_ids=batch.input_ids, segment_ids=batch.segment_ids,
             position_ids=batch.position_ids)
    _scatter(result, 0, emb, batch.text_index, None)
  return result


def _scatter(result: np.ndarray, offset: int, emb: jax.Array, text_index: np.ndarray, bar) -> None:
  emb = np.asarray(emb)
  filled = text_index >= 0
  result[offset + text_index[filled]] = emb[filled]
  if bar is not None:
    bar.update(int(filled.sum()))
