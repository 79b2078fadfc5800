"""Retrieval evaluation of multi-vector (ColBERT) and sparse (SPLADE) models, beside quality the
storage they need.

  model = TokenModel.load(folder)          # an export of a 'multi_vector' / 'sparse' run
  result = evaluate_retrieval(model, 'scifact', data_dir, search='exact' | 'plaid')

A multi-vector model's texts become token vectors: queries cut to the trained query length and,
with query augmentation, padded with [MASK] tokens that count; documents keep every token for the
encoder and leave the skip-list tokens (punctuation) out of MaxSim. A sparse model's texts become
SPLADE vocabulary weights. Texts are tokenized as the model's tokenizer does (cut at its maximum
length); the result counts the texts that reached that length (``at_length_limit``), which may
have been cut, so nothing is dropped silently.

Search: multi-vector 'exact' (``search.multivector.topk_maxsim`` over float32 token vectors) or
'plaid' (ColBERTv2 compression and PLAID-style search, ``search.plaid``); sparse through the
inverted index (``search.sparse``). ``bytes_per_doc``: float32 token vectors (4 x dim per counted
token), the PLAID index's codes, or the postings (4-byte id + 4-byte weight per nonzero).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from embedjax.evals import metrics
from embedjax.evals.tasks import RETRIEVAL_KS, TASKS
from embedjax.models.pretrained import Pretrained, load_pretrained

_BATCH = 32
_LENGTH_STEP = 32  # token lengths are rounded up to this (fewer compiled shapes)


@dataclasses.dataclass(frozen=True)
class TokenModel:
  """An exported multi-vector or sparse model: encoder, head and settings."""
  model: Pretrained
  info: dict
  head: dict

  @classmethod
  def load(cls, folder: str | Path) -> TokenModel:
    from embedjax.train.representation import load_head
    loaded = load_head(folder)
    if loaded is None:
      raise ValueError(f'{folder}: no representation.json (a single-vector model: evaluate it '
                       'with `embedjax eval`)')
    info, head = loaded
    return cls(model=load_pretrained(folder), info=info,
               head=jax.tree_util.tree_map(jnp.asarray, head))

  @property
  def kind(self) -> str:
    return self.info['representation']


def _batches(ids: list[list[int]], batch: int):
  """Index batches of texts sorted by length (less padding), each with its padded length."""
  order = np.argsort([len(x) for x in ids], kind='stable')
  for start in range(0, len(order), batch):
    rows = order[start:start + batch]
    longest = max(len(ids[i]) for i in rows)
    yield rows, -(-longest // _LENGTH_STEP) * _LENGTH_STEP


def _tokenize(model: TokenModel, texts: Sequence[str]) -> tuple[list[list[int]], int]:
  ids = model.model.tokenizer.encode(list(texts))
  limit = model.model.spec.max_seq_length
  return ids, sum(len(x) >= limit for x in ids)


def encode_token_vectors(model: TokenModel, texts: Sequence[str], *, queries: bool
                         ) -> tuple[np.ndarray, np.ndarray, dict]:
  """(N, T, dim) float32 token vectors, (N, T) int32 MaxSim masks, and counts."""
  from embedjax.models.late_interaction import drop_tokens, token_embeddings
  tok = model.model.tokenizer
  ids, at_limit = _tokenize(model, texts)
  counts = {'texts': len(ids), 'at_length_limit': int(at_limit)}
  qlen = int(model.info.get('query_length') or 0)
  if queries and qlen:
    counts['cut_to_query_length'] = sum(len(x) > qlen for x in ids)
    ids = [x[:qlen] for x in ids]
  # params are arguments, not constants baked into each compiled shape
  embed = jax.jit(lambda p, h, i, m: token_embeddings(p, h, model.model.spec, i, m))
  width = qlen if (queries and qlen) else -(-max(len(x) for x in ids) // _LENGTH_STEP) * _LENGTH_STEP
  vecs = np.zeros((len(ids), width, model.info['token_dim']), np.float32)
  masks = np.zeros((len(ids), width), np.int32)
  for rows, length in _batches(ids, _BATCH):
    length = width if (queries and qlen) else length
    batch = tok.pad([ids[i] for i in rows], length)
    i, m = jnp.asarray(batch['input_ids']), jnp.asarray(batch['attention_mask'])
    if queries and qlen:
      m = jnp.ones_like(m)
      i = jnp.where(jnp.asarray(batch['attention_mask']) != 0, i, model.info['mask_token_id'])
    out = np.asarray(embed(model.model.params, model.head, i, m))
    score_mask = m if queries else drop_tokens(i, m, tuple(model.info.get('skip_ids', ())))
    vecs[rows, :length] = out
    masks[rows, :length] = np.asarray(score_mask)
  counts['counted_tokens'] = int(masks.sum())
  return vecs, masks, counts


def encode_sparse(model: TokenModel, texts: Sequence[str]):
  """(N, V) scipy CSR SPLADE weights, and counts."""
  import scipy.sparse as sp
  from embedjax.models.splade import splade_weights
  ids, at_limit = _tokenize(model, texts)
  embed = jax.jit(lambda p, h, i, m: splade_weights(p, h, model.model.spec, i, m))
  rows_out = [None] * len(ids)
  for rows, length in _batches(ids, _BATCH):
    batch = model.model.tokenizer.pad([ids[i] for i in rows], length)
    w = sp.csr_matrix(np.asarray(embed(model.model.params, model.head,
                                       jnp.asarray(batch['input_ids']),
                                       jnp.asarray(batch['attention_mask']))))
    for j, r in enumerate(rows):
      rows_out[r] = w[j]
  return sp.vstack(rows_out).tocsr(), {'texts': len(ids), 'at_length_limit': int(at_limit)}


def evaluate_retrieval(model: TokenModel, task: str, data_dir: Path | None, *,
                       search: str = 'exact', plaid_centroids: int | None = None,
                       key: jax.Array | None = None) -> dict:
  """Retrieval metrics of ``task`` (a retrieval task of ``evals.tasks.TASKS``) with the model's
  own representation, plus 'bytes_per_doc', 'counts', 'search' and 'seconds'."""
  if task not in TASKS or TASKS[task].kind != 'retrieval':
    raise ValueError(f'{task!r} is not a retrieval task of embedjax.evals.tasks.TASKS')
  start = time.perf_counter()
  data = TASKS[task].load(data_dir)
  k = min(1000, len(data.corpus_ids))
  out: dict = {'search': search}
  if model.kind == 'multi_vector':
    q, qm, qc = encode_token_vectors(model, data.query_texts, queries=True)
    d, dm, dc = encode_token_vectors(model, data.corpus_texts, queries=False)
    out['counts'] = {'queries': qc, 'documents': dc}
    if search == 'exact':
      from embedjax.search.multivector import topk_maxsim
      _, idx = topk_maxsim(q, qm, d, dm, k)
      out['bytes_per_doc'] = float(dm.sum(axis=1).mean() * 4 * d.shape[2])
    elif search == 'plaid':
      from embedjax.search import plaid
      tokens = d[dm != 0]
      n_centroids = plaid_centroids or int(2 ** np.floor(np.log2(16 * np.sqrt(len(tokens)))))
      codec = plaid.fit_codec(jax.random.key(0) if key is None else key, tokens,
                              min(n_centroids, len(tokens)))
      index = plaid.build_index(codec, d, dm)
      _, idx = plaid.search(index, q, qm, k)
      out['bytes_per_doc'] = index.bytes_per_doc()
      out['plaid_centroids'] = int(codec.centroids.shape[0])
    else:
      raise ValueError(f"search must be 'exact' or 'plaid', got {search!r}")
  elif model.kind == 'sparse':
    from embedjax.search.sparse import SparseIndex, sparse_topk
    qw, qc = encode_sparse(model, data.query_texts)
    dw, dc = encode_sparse(model, data.corpus_texts)
    index = SparseIndex.build(dw)
    _, idx = sparse_topk(index, qw, k)
    out.update(search='inverted_index', bytes_per_doc=index.bytes_per_doc(),
               counts={'queries': qc, 'documents': dc},
               nonzeros_per_query=float(qw.nnz / max(qw.shape[0], 1)),
               nonzeros_per_doc=index.nonzeros_per_doc())
  else:
    raise ValueError(f'unknown representation {model.kind!r}')
  out.update(metrics.retrieval_metrics(np.asarray(idx), data.qrels, data.query_ids,
                                       data.corpus_ids,
                                       ks=[kk for kk in RETRIEVAL_KS if kk <= len(data.corpus_ids)]))
  out['main_metric'] = TASKS[task].main_metric
  out['seconds'] = round(time.perf_counter() - start, 2)
  return out
