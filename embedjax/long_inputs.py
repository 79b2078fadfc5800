"""Texts longer than a model's ``max_seq_length``: the chunk-and-pool baseline (LongEmbed).

Each text is tokenized up to ``max_tokens`` tokens, its content tokens (between the tokenizer's
leading and trailing special tokens) are cut into consecutive windows of ``max_seq_length - 2``
tokens, each window is wrapped in the same special tokens and embedded, and the text's embedding
is the mean of its windows' embeddings, L2-normalised again when the model normalises. A text
that fits one window gets exactly its ordinary embedding. The other long-input method of the BERT
family, a stretched position table, is :func:`embedjax.models.positions.extend_positions`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from embedjax.encoding import encode_ids


def windows(ids: Sequence[int], max_seq_length: int) -> list[list[int]]:
  """One tokenized text (its first and last token special) -> windows of at most
  ``max_seq_length`` tokens, each with the same first and last token."""
  head, content, tail = ids[0], list(ids[1:-1]), ids[-1]
  width = max_seq_length - 2
  chunks = [content[i:i + width] for i in range(0, len(content), width)] or [[]]
  return [[head, *c, tail] for c in chunks]


def chunk_and_pool(model, texts: Sequence[str], *, max_tokens: int = 8192) -> np.ndarray:
  """(N, D) float32 embeddings of possibly long texts by chunk-and-pool (module docstring)."""
  tok = model.tokenizer.with_max_length(max_tokens)
  spec = model.spec
  per_text = [windows(ids, spec.max_seq_length) for ids in tok.encode(list(texts))]
  flat = [w for ws in per_text for w in ws]
  emb = encode_ids(model, flat)
  out = np.empty((len(per_text), emb.shape[1]), np.float32)
  start = 0
  for i, ws in enumerate(per_text):
    mean = emb[start:start + len(ws)].astype(np.float64).mean(0)
    start += len(ws)
    if spec.normalize:
      mean = mean / max(np.linalg.norm(mean), 1e-12)
    out[i] = mean
  return out
