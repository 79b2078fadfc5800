"""Hard-negative mining with embedjax's own exact search (sentence-transformers' semantics).

  mine_hard_negatives(query_emb, corpus_emb, positives, ...)  (Q, num_negatives) corpus indices
  mine_to_file(pairs, encode_fn, out_path, ...)              (anchor, positive) pairs -> a JSONL
                                                             training file with mined negatives

Both follow ``sentence_transformers.util.mine_hard_negatives`` (6.3) with
``sampling_strategy='top'``, ``use_faiss=False``, ``include_positives=False`` and no
cross-encoder, step for step:

1. Candidates: the top ``range_max + max_positives + 1`` corpus rows of every query by
   similarity (``embedjax.search.exact.topk_blocked``, one jitted blocked scan), where
   ``max_positives`` is the largest number of positives of any query and the 1 is room for the
   query's own text (so that neither its positives nor itself can crowd out its negatives;
   sentence-transformers counts an anchor's dataset rows, so a repeated (anchor, positive) pair
   widens it: ``mine_to_file`` does the same). Fewer when the corpus is smaller.
2. Masks, on those candidates: the query's own text where the corpus holds it (``self_index``;
   ``mine_to_file`` finds it by exact text: an anchor is never its own negative), the query's
   own positives (every positive of the same query text), then the positive-aware margins of NV-Retriever (arXiv:2407.15831) against the query's
   *smallest* positive score p: ``absolute_margin`` drops a candidate scoring s with
   ``s + absolute_margin > p``; ``relative_margin`` drops it when ``s > p - |p| * relative_margin``
   (NV-Retriever's TopK-PercPos; sentence-transformers subtracts ``|p| * margin`` rather than
   multiplying by ``1 - margin`` so that a negative p does not raise the threshold), then
   ``max_score`` (drop ``s > max_score``) and ``min_score`` (drop ``s < min_score``). All in
   float32, as sentence-transformers' torch tensors are.
3. Rank window: the surviving candidates, by descending score, skip the first ``range_min`` *of
   the survivors* (not of the raw ranking: sentence-transformers masks first, then re-ranks and
   slices) and keep the next ``num_negatives``; -1 where fewer survive.

``range_max=None`` is sentence-transformers' default: ``range_min + num_negatives +
max_positives``, or ``range_min + 10 * num_negatives + max_positives`` when a margin or
``max_score`` is set (``min_score`` alone does not widen it).

Ties. ``topk_blocked`` orders equal scores by increasing corpus index, and the masks keep that
order, so of two equally similar candidates the lower corpus index is ranked first (and is the
one kept at the edge of the candidate list). sentence-transformers ranks with ``torch.topk``,
whose order among equal scores is unspecified; only exact float32 ties can differ.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import chex
import numpy as np

from embedjax.io import atomic_write_text
from embedjax.search.exact import topk_blocked

SIMILARITIES = ('cosine', 'dot')


def default_range_max(num_negatives: int, range_min: int, max_positives: int, *,
                      filtered: bool) -> int:
  """sentence-transformers' ``range_max`` when none is given: room for the positives and the
  negatives after ``range_min``, ten times the negatives when a margin or ``max_score`` may drop
  candidates (``filtered``)."""
  return range_min + (10 * num_negatives if filtered else num_negatives) + max_positives


def _positive_lists(positives: Any, q_rows: int, n: int) -> list[list[int]]:
  """Per-query lists of distinct corpus indices, in the order given."""
  if isinstance(positives, np.ndarray) or hasattr(positives, 'shape'):
    arr = np.asarray(positives)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f'positives as an array must be (Q,) integers, got {arr.dtype} {arr.shape}')
    lists = [[int(i)] for i in arr]
  else:
    lists = [list(dict.fromkeys(int(i) for i in p)) for p in positives]
  if len(lists) != q_rows:
    raise ValueError(f'{q_rows} queries but positives for {len(lists)}')
  for q, p in enumerate(lists):
    bad = [i for i in p if not 0 <= i < n]
    if bad:
      raise ValueError(f'query {q}: positive index {bad[0]} is outside the corpus [0, {n})')
  return lists


def _normalize(x: np.ndarray) -> np.ndarray:
  # torch.nn.functional.normalize, as sentence-transformers' encode(normalize_embeddings=True).
  norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
  return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def mine_hard_negatives(query_emb, corpus_emb, positives: Sequence[Iterable[int]] | np.ndarray, *,
                        num_negatives: int = 3, range_min: int = 0, range_max: int | None = None,
                        max_score: float | None = None, min_score: float | None = None,
                        absolute_margin: float | None = None,
                        relative_margin: float | None = None, similarity: str = 'cosine',
                        batch_size: int | None = None,
                        max_positives: int | None = None,
                        self_index: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
  """The hardest negatives of every query that pass sentence-transformers' filters.

  Args:
    query_emb: (Q, D) query embeddings (numpy or jax).
    corpus_emb: (N, D) corpus embeddings.
    positives: per query, the corpus indices of its positives (a list of Q sets/lists; a query
      may have none unless a margin is set), or a (Q,) integer array of one index each. They are
      never returned as that query's negatives.
    num_negatives: negatives per query (>= 1).
    range_min: survivors of the filters skipped first (the hardest ones; see the module
      docstring, step 3).
    range_max: candidates = the top ``range_max + max_positives + 1`` rows; None: see
      ``default_range_max``. Must leave ``num_negatives`` after ``range_min``.
    max_score, min_score: drop candidates scoring above / below.
    absolute_margin, relative_margin: drop candidates within the margin of the query's smallest
      positive score (module docstring, step 2).
    similarity: 'cosine' (both sides L2-normalised first, as sentence-transformers always does)
      or 'dot' (raw inner products).
    batch_size: queries per step of the blocked search (None: ``topk_blocked``'s default).
    max_positives: the room left for positives in the candidate list (and in the default
      ``range_max``); None: the most positives of any query. ``mine_to_file`` passes
      sentence-transformers' count, an anchor's rows with repeated pairs included.
    self_index: (Q,) per query, the corpus index of the query's own text, never its negative;
      -1 (or None for all) where the corpus does not hold it.

  Returns:
    (Q, num_negatives) int32 corpus indices, hardest first; -1 where fewer candidates pass.
    Equal scores rank by increasing corpus index.
  """
  chex.assert_rank([query_emb, corpus_emb], 2)
  query_emb, corpus_emb = np.asarray(query_emb, np.float32), np.asarray(corpus_emb, np.float32)
  (q_rows, dim), (n, corpus_dim) = query_emb.shape, corpus_emb.shape
  if dim != corpus_dim:
    raise ValueError(f'queries have dimension {dim} but the corpus has {corpus_dim}')
  if n == 0:
    raise ValueError('the corpus is empty')
  if similarity not in SIMILARITIES:
    raise ValueError(f'similarity must be one of {SIMILARITIES}, got {similarity!r}')
  if num_negatives < 1:
    raise ValueError(f'num_negatives must be at least 1, got {num_negatives}')
  pos_lists = _positive_lists(positives, q_rows, n)
  most = max((len(p) for p in pos_lists), default=0)
  if max_positives is None:
    max_positives = most
  elif max_positives < most:
    raise ValueError(f'max_positives={max_positives} but a query has {most} positives')
  margins = absolute_margin is not None or relative_margin is not None
  if range_max is None:
    range_max = default_range_max(num_negatives, range_min, max_positives,
                                  filtered=margins or max_score is not None)
  if range_min < 0:
    raise ValueError(f'range_min must be non-negative, got {range_min}')
  if range_min >= range_max:
    raise ValueError(f'range_min must be smaller than range_max, got range_min={range_min} and '
                     f'range_max={range_max}')
  if num_negatives > range_max - range_min:
    raise ValueError(f'cannot mine {num_negatives} negatives per query: only '
                     f'{range_max - range_min} candidates remain after skipping '
                     f'range_min={range_min} of range_max={range_max}')
  own = np.full(q_rows, -2, np.int64) if self_index is None else np.asarray(self_index, np.int64)
  if own.shape != (q_rows,):
    raise ValueError(f'self_index must have one entry per query ({q_rows}), got shape {own.shape}')
  if (own >= n).any():
    raise ValueError(f'self_index holds {int(own.max())}, outside the corpus of {n}')
  own = np.where(own < 0, -2, own)  # -2: never a corpus index, nor topk's -1
  if margins and any(not p for p in pos_lists):
    raise ValueError('a margin needs every query to have a positive; query '
                     f'{next(q for q, p in enumerate(pos_lists) if not p)} has none')
  out = np.full((q_rows, num_negatives), -1, np.int32)
  if q_rows == 0:
    return out

  if similarity == 'cosine':
    query_emb, corpus_emb = _normalize(query_emb), _normalize(corpus_emb)
  k = min(range_max + max_positives + 1, n)
  scores, idx = topk_blocked(query_emb, corpus_emb, k, query_block=batch_size)
  scores, idx = np.asarray(scores, np.float32), np.asarray(idx, np.int32)

  # (Q, max_positives) positives padded with -2 (never a corpus index, nor topk's -1).
  pos = np.full((q_rows, max(max_positives, 1)), -2, np.int64)
  for q, p in enumerate(pos_lists):
    pos[q, :len(p)] = p
  keep = (idx >= 0) & (idx != own[:, None]) & ~(idx[:, :, None] == pos[:, None, :]).any(axis=2)
  if margins:
    pos_scores = np.einsum('qd,qpd->qp', query_emb, corpus_emb[np.maximum(pos, 0)])
    # The smallest (hardest) positive, as sentence-transformers uses for several positives.
    threshold = np.where(pos >= 0, pos_scores, np.inf).min(axis=1).astype(np.float32)[:, None]
    if absolute_margin is not None:
      keep &= ~(scores + np.float32(absolute_margin) > threshold)
    if relative_margin is not None:
      keep &= ~(scores > threshold - np.abs(threshold) * np.float32(relative_margin))
  if max_score is not None:
    keep &= ~(scores > np.float32(max_score))
  if min_score is not None:
    keep &= ~(scores < np.float32(min_score))

  # Survivors keep the search's order (descending score, ties by index); the window counts them.
  rank = np.cumsum(keep, axis=1) - 1 - range_min
  take = keep & (rank >= 0) & (rank < num_negatives)
  rows, cols = np.nonzero(take)
  out[rows, rank[rows, cols]] = idx[rows, cols]
  return out


class MinedFile(NamedTuple):
  """What ``mine_to_file`` wrote.

  Attributes:
    path: the JSONL file.
    rows: rows written, each with ``num_negatives`` negatives.
    dropped: (anchor, positive) pairs left out for lack of negatives.
    repeated: input pairs that repeated an earlier (anchor, positive) pair (merged into it).
    anchors: distinct anchors (queries embedded).
    corpus: distinct corpus texts (embedded and searched).
  """

  path: Path
  rows: int
  dropped: int
  repeated: int
  anchors: int
  corpus: int


def _pair(row: Any, i: int) -> tuple[str, str]:
  if isinstance(row, Mapping):
    # A prepared FileSource names the anchor 'query'; its existing negatives are ignored.
    anchor = row['anchor'] if 'anchor' in row else row.get('query')
    positive = row.get('positive')
  elif isinstance(row, (tuple, list)) and len(row) == 2:
    anchor, positive = row
  else:
    raise ValueError(f"pair {i}: expected a dict with 'anchor' (or 'query') and 'positive', or an "
                     f'(anchor, positive) pair, got {type(row).__name__}')
  for name, text in (('anchor', anchor), ('positive', positive)):
    if not isinstance(text, str) or not text.strip():
      raise ValueError(f'pair {i}: {name} must be a non-empty text, got {text!r}')
  return anchor, positive


def _embed(encode_fn: Callable, texts: list[str], what: str) -> np.ndarray:
  emb = np.asarray(encode_fn(texts), np.float32)
  if emb.ndim != 2 or emb.shape[0] != len(texts):
    raise ValueError(f'encode_fn returned shape {emb.shape} for {len(texts)} {what}; expected '
                     f'({len(texts)}, D)')
  if not np.isfinite(emb).all():
    raise ValueError(f'encode_fn returned non-finite embeddings for the {what}')
  return emb


def mine_to_file(pairs: Sequence[Any], encode_fn: Callable[[list[str]], Any],
                 out_path: str | os.PathLike, *, corpus: Sequence[str] | None = None,
                 encode_query_fn: Callable[[list[str]], Any] | None = None,
                 num_negatives: int = 3, range_min: int = 0, range_max: int | None = None,
                 max_score: float | None = None, min_score: float | None = None,
                 absolute_margin: float | None = None, relative_margin: float | None = None,
                 similarity: str = 'cosine', batch_size: int | None = None) -> MinedFile:
  """Mines negatives for (anchor, positive) pairs and writes a 'pairs' JSONL training file.

  The rows are those of sentence-transformers' ``mine_hard_negatives(...,
  output_format='n-tuple')``, in its order: anchors deduplicated (first occurrence), the corpus
  is ``dict.fromkeys(corpus + positives)`` (the extra corpus first, duplicates dropped), every
  positive of an anchor, and the anchor's own text where the corpus holds it, is excluded from
  that anchor's negatives, and one row is written per
  distinct (anchor, positive) pair, grouped by anchor in order of first occurrence. Like
  sentence-transformers' 'n-tuple', a pair with fewer than ``num_negatives`` negatives is
  dropped (a training file needs the same number on every row); how many were dropped, and how
  many repeated pairs were merged, is printed and returned.

  Args:
    pairs: rows with 'anchor' (or 'query', as a prepared ``FileSource`` has) and 'positive'
      texts, or (anchor, positive) tuples; ``len`` and ``[i]`` (a list, or a FileSource).
    encode_fn: texts (list of str) -> (n, D) embeddings, for the corpus (and the anchors unless
      ``encode_query_fn`` is given).
    out_path: the JSONL file, written atomically: one ``{"anchor", "positive", "negatives":
      [...]}`` object a line, readable by ``embedjax.data.files.prepare`` (kind 'pairs').
    corpus: extra candidate texts besides the positives.
    encode_query_fn: for the anchors, when queries are embedded differently (a prompt).
    num_negatives, range_min, range_max, max_score, min_score, absolute_margin,
    relative_margin, similarity, batch_size: as ``mine_hard_negatives``.

  Returns:
    a :class:`MinedFile`. Raises ValueError, writing nothing, when no pair keeps enough negatives.
  """
  given = [_pair(pairs[i], i) for i in range(len(pairs))]
  if not given:
    raise ValueError('no (anchor, positive) pairs to mine negatives for')
  anchors_all = [a for a, _ in given]
  positives_all = [p for _, p in given]
  extra = list(corpus or [])
  for j, text in enumerate(extra):
    if not isinstance(text, str) or not text.strip():
      raise ValueError(f'corpus[{j}] must be a non-empty text, got {text!r}')
  texts = list(dict.fromkeys(extra + positives_all))
  corpus_idx = {t: i for i, t in enumerate(texts)}
  anchors = list(dict.fromkeys(anchors_all))
  anchor_idx = {a: i for i, a in enumerate(anchors)}
  pos_lists: list[list[int]] = [[] for _ in anchors]
  for anchor, positive in zip(anchors_all, positives_all):
    p = pos_lists[anchor_idx[anchor]]
    if corpus_idx[positive] not in p:
      p.append(corpus_idx[positive])
  n_pairs = sum(len(p) for p in pos_lists)
  # sentence-transformers sizes the candidate list by an anchor's rows, repeated pairs included.
  rows_per_anchor = collections.Counter(anchors_all)

  corpus_emb = _embed(encode_fn, texts, 'corpus texts')
  query_emb = _embed(encode_query_fn or encode_fn, anchors, 'anchors')
  negatives = mine_hard_negatives(
      query_emb, corpus_emb, pos_lists, num_negatives=num_negatives, range_min=range_min,
      range_max=range_max, max_score=max_score, min_score=min_score,
      absolute_margin=absolute_margin, relative_margin=relative_margin, similarity=similarity,
      batch_size=batch_size, max_positives=max(rows_per_anchor.values()),
      self_index=[corpus_idx.get(a, -1) for a in anchors])

  lines = []
  for q, p in enumerate(pos_lists):
    if (negatives[q] < 0).any():
      continue
    negs = [texts[i] for i in negatives[q]]
    lines.extend(json.dumps({'anchor': anchors[q], 'positive': texts[i], 'negatives': negs},
                            ensure_ascii=False) + '\n' for i in p)
  out_path = Path(out_path)
  result = MinedFile(out_path, len(lines), n_pairs - len(lines), len(anchors_all) - n_pairs,
                     len(anchors), len(texts))
  print(f'mined {out_path}: {result.rows} rows with {num_negatives} negatives each from '
        f'{len(anchors_all)} pairs ({result.anchors} distinct anchors, corpus of {result.corpus}); '
        f'dropped {result.dropped} pairs with fewer than {num_negatives} negatives; merged '
        f'{result.repeated} repeated pairs', flush=True)
  if not lines:
    raise ValueError(f'no pair has {num_negatives} negatives that pass the filters; nothing '
                     f'written to {out_path} (widen range_max, or loosen the margins and score '
                     'bounds)')
  atomic_write_text(out_path, ''.join(lines))
  return result
