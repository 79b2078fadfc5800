"""The pure train step, plain or gradient-cached, for contrastive embedding training.

Batch (all arrays have the global batch size B as leading dim):
  query_ids, query_mask: (B, Lq) int32    doc_ids, doc_mask: (B, Ld) int32
  neg_ids, neg_mask: (B, H, Ld) int32 (optional hard negatives)
  doc_key: (B,) int32 id of each positive document (duplicate positives are masked as negatives)
  score: (B,) float32 gold score of each (query, doc) pair (scored-pair data, for SCORED_LOSSES)
  target: (B, D) float32 a teacher's embedding of each query (TARGET_LOSSES; such a batch has no
    doc_ids / doc_mask / doc_key)

A guide (``StepConfig.guide_spec``, for GUIDE_LOSSES) is a frozen model whose params come to the
step as an argument of their own, not in the train state: they get no gradient, no optimizer
state, and are not written into every checkpoint (the loop reloads them from ``train.guide``).
The guide embeds the same columns (same tokens: it must share the student's tokenizer) without
dropout and behind a stop_gradient.

Every column is embedded in chunks of ``chunk_size`` rows, each chunk with its own dropout key
(``fold_in(column_key, chunk)``). The plain step embeds all chunks at once (vmap) and
differentiates through them; the gradient-cached step (Gao et al. 2021, "Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup") embeds them one at a time without gradients,
takes the loss gradient with respect to the embeddings, then re-runs each chunk under ``jax.vjp``
with that cotangent and sums the parameter gradients in a ``lax.scan``. Because the dropout keys
per chunk are the same in both, the two give the same gradients; only peak memory differs
(activations of one chunk instead of the whole batch).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from embedjax.config import ConfigError
from embedjax.losses import GUIDE_LOSSES, LOSSES, MULTI_VECTOR_LOSSES, TARGET_LOSSES, matryoshka
from embedjax.losses.contrastive import DEFAULT_SCALE
from embedjax.models.embedder import auxiliary_loss, embed, embed_packed
from embedjax.models.layerwise import embed_layers
from embedjax.models.lora import LoraConfig, apply_lora
from embedjax.models.spec import EmbedderSpec
from embedjax.ops import l2_normalize
from embedjax.train.state import TrainState

MAX_LOGIT_SCALE = 100.0  # CLIP's cap on a learned inverse temperature


@dataclasses.dataclass(frozen=True)
class StepConfig:
  spec: EmbedderSpec
  loss: str = 'info_nce'
  loss_kwargs: tuple = ()                  # (name, value) pairs passed to the loss
  scale: float = DEFAULT_SCALE             # inverse temperature when not learned
  learnable_scale: bool = False            # learn log(scale) as params['logit_scale']
  matryoshka_dims: tuple = ()              # () = no Matryoshka
  matryoshka_weights: tuple | None = None
  chunk_size: int = 0                      # rows per embedding chunk (0 = whole batch)
  grad_cache: bool = False                 # gradient caching over chunks
  dropout: bool = True                     # train-mode dropout (sentence-transformers trains with it)
  lora: LoraConfig | None = None           # train only a LoRA adapter, params['lora']; the base
                                           # params['encoder'] get no gradient (merged path)
  guide_spec: EmbedderSpec | None = None   # the frozen guide of GUIDE_LOSSES (params passed to
                                           # the step apart from the train state)
  # Elastic depth and hard-negative mixing (see _elastic_loss, _mixing_loss below):
  layer_elastic: str = ''                  # '' | 'adaptive_layer' | 'matryoshka_2d' (every
                                           # layer's embedding trained; 2DMSE with the dims)
  layer_kwargs: tuple = ()                 # (name, value) options of that wrapper
  mix_negatives: int = 0                   # synthetic pair-mixed negatives per query (0 = off)
  mix_hardest: int = 8                     # ... mixed from this many hardest negatives
  mix_query: int = 0                       # synthetic query-mixed negatives per query (MoCHi h')
  # What a text becomes (see _embed_fn): 'single' (one vector), 'multi_vector' (ColBERT token
  # vectors through params['head'] = {'kernel'}; loss 'maxsim_info_nce') or 'sparse' (SPLADE
  # vocabulary weights through params['head'] = BERT's MLM head; any (q, d) loss, with FLOPS).
  representation: str = 'single'
  query_augment: int = 0                   # multi_vector: queries padded to this length with
  mask_token_id: int = 103                 #   [MASK] tokens that count (0 = no augmentation)
  skip_ids: tuple = ()                     # multi_vector: document tokens left out of MaxSim
  flops_weights: tuple = (0.0, 0.0)        # sparse: FLOPS regulariser weights (queries, documents)
  pack_segments: int = 0                   # > 0: packed batches (data.padding 'pack': texts
                                           # packed into rows, at most this many a row)


REPRESENTATIONS = ('single', 'multi_vector', 'sparse')


def _check_representation(cfg: StepConfig) -> None:
  if cfg.representation not in REPRESENTATIONS:
    raise ConfigError(f'representation {cfg.representation!r}: not one of {list(REPRESENTATIONS)}')
  if (cfg.representation == 'multi_vector') != (cfg.loss in MULTI_VECTOR_LOSSES):
    raise ConfigError(f'representation multi_vector trains with {sorted(MULTI_VECTOR_LOSSES)} '
                      f'and only it with them (got loss {cfg.loss!r}, representation '
                      f'{cfg.representation!r})')
  if cfg.representation != 'single' and (cfg.layer_elastic or cfg.matryoshka_dims or
                                         cfg.mix_negatives or cfg.mix_query or cfg.guide_spec):
    raise ConfigError(f'representation {cfg.representation!r} trains without Matryoshka, '
                      'layer-elastic, mixing or guide options')


def build_loss(cfg: StepConfig) -> Callable:
  _check_representation(cfg)
  if cfg.representation == 'multi_vector':
    return MULTI_VECTOR_LOSSES[cfg.loss]
  if cfg.loss not in LOSSES:
    raise ConfigError(f'unknown loss {cfg.loss!r}; choose from {sorted(LOSSES)}')
  fn = LOSSES[cfg.loss]
  if cfg.representation == 'sparse' and any(cfg.flops_weights):
    fn = _with_flops(fn, *cfg.flops_weights)
  if cfg.matryoshka_dims and cfg.loss in GUIDE_LOSSES | TARGET_LOSSES:
    # matryoshka() truncates (q, d, hard_negatives) only: guide and target arrays would not follow
    raise ConfigError(f'loss {cfg.loss!r} does not combine with loss.matryoshka_dims')
  if cfg.mix_negatives or cfg.mix_query:
    fn = _mixing_loss(cfg, fn)
  if cfg.layer_elastic:
    return _elastic_loss(cfg, fn)
  if cfg.matryoshka_dims:
    fn = matryoshka(fn, cfg.matryoshka_dims, cfg.matryoshka_weights)
  return fn


# --- Elastic depth (2DMSE) and online hard-negative mixing ----------------------------------------
# Both wrap the chosen loss. With layer_elastic the step embeds every hidden state through the
# model's head (layerwise.embed_layers): each column is (L, N, D) instead of (N, D). The losses
# that draw random numbers (layer / dim sampling, mixing) get ``loss_key(step_rng)``.

LAYER_ELASTIC = ('adaptive_layer', 'matryoshka_2d')
# The options of those wrappers a config sets (loss.<name>; losses.elastic has their meaning).
ELASTIC_OPTIONS = ('n_layers_per_step', 'n_dims_per_step', 'last_layer_weight',
                   'prior_layers_weight', 'kl_div_weight', 'kl_temperature', 'layer_weighting')
LOSS_KEY_FOLD = 0x6C6F7373  # folded into the step key for the loss's own draws (not a column no.)
AUX_KEY_FOLD = 0x61757820  # ... and for the backbone regulariser's ('aux ')


def loss_key(rng: jax.Array) -> jax.Array:
  """The PRNG key the loss draws from at the step whose key is ``rng`` (deterministic, so a
  resumed run draws the same layers, dims and mixtures)."""
  return jax.random.fold_in(rng, LOSS_KEY_FOLD)


def _loss_takes_key(cfg: StepConfig) -> bool:
  return bool(cfg.layer_elastic or cfg.mix_negatives or cfg.mix_query)


def _mixing_loss(cfg: StepConfig, fn: Callable) -> Callable:
  from embedjax.losses.mixing import mix_hard_negatives
  if 'hard_negatives' not in loss_arguments(cfg.loss):
    raise ConfigError(f'loss.mix_negatives: loss {cfg.loss!r} takes no hard negatives to add '
                      'synthetic ones to')
  return mix_hard_negatives(fn, n_synthetic=cfg.mix_negatives, n_hardest=cfg.mix_hardest,
                            n_query_mixed=cfg.mix_query)


def _elastic_loss(cfg: StepConfig, fn: Callable) -> Callable:
  """``fn`` over per-layer embeddings: adaptive_layer (over matryoshka() when dims are set) or
  matryoshka_2d; takes (q_layers, d_layers, *, hard_negatives=(L, B, H, D) or None, key, ...)."""
  from embedjax.losses.elastic import adaptive_layer, matryoshka_2d
  if cfg.layer_elastic not in LAYER_ELASTIC:
    raise ConfigError(f'loss.layer_elastic {cfg.layer_elastic!r}: not one of {["", *LAYER_ELASTIC]}')
  if cfg.loss in GUIDE_LOSSES | TARGET_LOSSES:
    raise ConfigError(f'loss {cfg.loss!r} does not combine with loss.layer_elastic')
  keyed = bool(cfg.mix_negatives or cfg.mix_query)
  kwargs = dict(cfg.layer_kwargs)
  if cfg.layer_elastic == 'matryoshka_2d':
    if not cfg.matryoshka_dims:
      raise ConfigError("loss.layer_elastic 'matryoshka_2d' needs loss.matryoshka_dims")
    wrapped = matryoshka_2d(fn, cfg.matryoshka_dims, weights=cfg.matryoshka_weights,
                            keyed_loss=keyed, **kwargs)
  else:
    kwargs.pop('n_dims_per_step', None)  # a matryoshka_2d option
    inner = matryoshka(fn, cfg.matryoshka_dims, cfg.matryoshka_weights) if cfg.matryoshka_dims else fn
    wrapped = adaptive_layer(inner, keyed_loss=keyed, **kwargs)

  def loss(q_layers, d_layers, *, hard_negatives=None, **kw):
    return wrapped(q_layers, d_layers, hard_negatives_layers=hard_negatives, **kw)
  return loss


def _with_flops(fn: Callable, query_weight: float, doc_weight: float) -> Callable:
  """``fn`` plus SPLADE's FLOPS regularisers of the query and document (positives and negatives)
  weights; the terms are reported as metrics."""
  from embedjax.models.splade import flops

  def loss(q, d, *, hard_negatives=None, **kw):
    value, metrics = (fn(q, d, hard_negatives=hard_negatives, **kw) if hard_negatives is not None
                      else fn(q, d, **kw))
    docs = d if hard_negatives is None else jnp.concatenate(
        [d, hard_negatives.reshape(-1, d.shape[-1])], axis=0)
    fq, fd = flops(q), flops(docs)
    total = value + query_weight * fq + doc_weight * fd
    return total, {**metrics, 'loss': total, 'flops_query': fq, 'flops_doc': fd}
  loss.__signature__ = inspect.signature(fn)  # the step passes what fn takes
  return loss


def _unchunk(out: jax.Array, n: int, tokens: bool = False) -> jax.Array:
  """Chunked embeddings to rows: (chunks, ch, D) -> (n, D); per layer (chunks, L, ch, D) ->
  (L, n, D); token vectors (``tokens``) (chunks, ch, T, D) -> (n, T, D)."""
  if tokens:
    return out.reshape((n,) + out.shape[2:])
  if out.ndim == 4:
    return jnp.swapaxes(out, 0, 1).reshape(out.shape[1], n, -1)
  return out.reshape(n, -1)


def _rechunk(g: jax.Array, chunks: int, ch: int, tokens: bool = False) -> jax.Array:
  """The inverse of :func:`_unchunk` (an embedding gradient back to per-chunk cotangents)."""
  if tokens:
    return g.reshape((chunks, ch) + g.shape[1:])
  if g.ndim == 3:
    return jnp.swapaxes(g.reshape(g.shape[0], chunks, ch, -1), 0, 1)
  return g.reshape(chunks, ch, -1)


# What the step can give a loss besides (q, d): batch-derived arrays, and for GUIDE_LOSSES the
# guide's embeddings and scores (margin_mse / distill_kl_div name their negatives neg / negs).
STEP_ARGUMENTS = ('hard_negatives', 'scale', 'doc_ids', 'scores', 'target', 'neg', 'negs',
                  'guide_q', 'guide_d', 'guide_hard_negatives', 'teacher_margin',
                  'teacher_scores')


def loss_arguments(name: str) -> frozenset[str]:
  """The batch-derived arguments loss ``name`` takes, among STEP_ARGUMENTS (the step passes only
  those: a CoSENT loss has no hard negatives, CoDiEmb's no scale)."""
  params = inspect.signature(LOSSES[name]).parameters
  return frozenset(a for a in STEP_ARGUMENTS if a in params)


def _columns(batch, cfg: StepConfig | None = None) -> list[tuple[jax.Array, jax.Array]]:
  query = (batch['query_ids'], batch['query_mask'])
  if cfg is not None and cfg.representation == 'multi_vector' and cfg.query_augment:
    from embedjax.models.late_interaction import augment_queries
    query = augment_queries(*query, cfg.query_augment, cfg.mask_token_id)
  cols = [query]
  if 'doc_ids' in batch:  # a batch of distillation targets has queries only
    cols.append((batch['doc_ids'], batch['doc_mask']))
  if 'neg_ids' in batch:
    b, h, l = batch['neg_ids'].shape
    # Negative j of every row is a column block, the layout the loss expects after reshaping.
    cols.append((batch['neg_ids'].reshape(b * h, l), batch['neg_mask'].reshape(b * h, l)))
  return cols


def _chunked(x: jax.Array, chunk: int) -> jax.Array:
  n = x.shape[0]
  if n % chunk:
    raise ValueError(f'{n} rows do not split into chunks of {chunk}')
  return x.reshape((n // chunk, chunk) + x.shape[1:])


def model_params(params):
  """The part of the train params the embedder reads: {'encoder'}, with 'lora' and 'head' (the
  multi-vector projection or the SPLADE MLM head) where present."""
  return {k: params[k] for k in ('encoder', 'lora', 'head') if k in params}


def encoder_params(model, lora: LoraConfig | None):
  """The backbone params to embed with: the base with its adapter merged in (the base behind a
  stop_gradient, so no base gradient is ever formed), or the encoder itself."""
  if lora is None:
    return model['encoder']
  return apply_lora(jax.lax.stop_gradient(model['encoder']), model['lora'], lora)


def _embed_fn(cfg: StepConfig):
  def f(model, ids, mask, key):
    if cfg.representation == 'multi_vector':  # (rows, T, dim) unit token vectors
      from embedjax.models.late_interaction import token_embeddings
      return token_embeddings(encoder_params(model, cfg.lora), model['head'], cfg.spec, ids, mask,
                              deterministic=not cfg.dropout, dropout_key=key)
    if cfg.representation == 'sparse':  # (rows, V) SPLADE weights
      from embedjax.models.splade import splade_weights
      return splade_weights(encoder_params(model, cfg.lora), model['head'], cfg.spec, ids, mask,
                            deterministic=not cfg.dropout, dropout_key=key)
    if cfg.layer_elastic:  # every hidden state through the head: (L, rows, D)
      return embed_layers(encoder_params(model, cfg.lora), cfg.spec, ids, mask,
                          deterministic=not cfg.dropout, dropout_key=key)
    return embed(encoder_params(model, cfg.lora), cfg.spec, ids, mask,
                 deterministic=not cfg.dropout, dropout_key=key)
  return f


def _scale(cfg: StepConfig, params):
  if cfg.learnable_scale:
    return jnp.minimum(jnp.exp(params['logit_scale']), MAX_LOGIT_SCALE)
  return cfg.scale


def _split_columns(embs, batch, tokens: bool = False):
  """(q, d or None, negatives (B, H, D) or None) from the column embeddings of ``_columns``
  (``tokens``: token vectors, negatives (B, H, T, D))."""
  q, rest = embs[0], list(embs[1:])
  d = rest.pop(0) if 'doc_ids' in batch else None
  negs = None
  if rest:
    b, h = (batch['neg_index'] if 'neg_index' in batch else batch['neg_ids']).shape[:2]
    if tokens:
      negs = rest[0].reshape((b, h) + rest[0].shape[1:])
    else:  # (L, B, H, D) when every layer is embedded (layer_elastic)
      negs = rest[0].reshape(rest[0].shape[:-2] + (b, h, -1))
  return q, d, negs


def _token_masks(cfg: StepConfig, batch) -> dict:
  """The masks MaxSim reads: the (augmented) query mask, and document / negative masks without
  ``skip_ids`` tokens (they are encoded, as context, but never matched)."""
  from embedjax.models.late_interaction import drop_tokens
  cols = _columns(batch, cfg)
  prune = (lambda ids, m: drop_tokens(ids, m, cfg.skip_ids)) if cfg.skip_ids else (
      lambda ids, m: m)
  out = {'q_mask': cols[0][1], 'd_mask': prune(batch['doc_ids'], batch['doc_mask'])}
  if 'neg_ids' in batch:
    out['hard_negatives_mask'] = prune(batch['neg_ids'], batch['neg_mask'])
  return out


def _guide_arguments(guide_embs, batch) -> dict:
  """The guide's embeddings, and its scores of [positive, negatives...] per query (B, 1 + H)
  as MarginMSE's / DistillKLDiv's teacher labels (dot products: cosines for a normalising guide)."""
  gq, gd, gn = _split_columns(guide_embs, batch)
  out = {'guide_q': gq, 'guide_d': gd, 'guide_hard_negatives': gn}
  if gn is not None:
    scores = jnp.concatenate([jnp.sum(gq * gd, -1)[:, None], jnp.einsum('bd,bhd->bh', gq, gn)], 1)
    out.update(teacher_margin=scores, teacher_scores=scores)
  return out


def _loss_on_embeddings(cfg: StepConfig, loss_fn, embs, batch, scale, guide_embs=None, key=None):
  if cfg.representation == 'multi_vector':
    q, d, negs = _split_columns(embs, batch, tokens=True)
    masks = _token_masks(cfg, batch)
    return loss_fn(q, masks['q_mask'], d, masks['d_mask'], hard_negatives=negs,
                   hard_negatives_mask=masks.get('hard_negatives_mask'), scale=scale,
                   **dict(cfg.loss_kwargs))
  q, d, negs = _split_columns(embs, batch)
  available = {'hard_negatives': negs, 'scale': scale, 'doc_ids': batch.get('doc_key'),
               'scores': batch.get('score'), 'target': batch.get('target'), 'neg': negs,
               'negs': negs}
  if guide_embs is not None:
    available.update(_guide_arguments(guide_embs, batch))
  takes = loss_arguments(cfg.loss)
  if negs is not None and not {'hard_negatives', 'neg', 'negs'} & takes:
    raise ConfigError(f'loss {cfg.loss!r} takes no hard negatives, but the batch has them')
  if 'scores' in takes and available['scores'] is None:
    raise ConfigError(f"loss {cfg.loss!r} trains on scored pairs: the batch has no 'score'")
  if 'target' in takes and available['target'] is None:
    raise ConfigError(f"loss {cfg.loss!r} trains on teacher embeddings: the batch has no 'target' "
                      "(data.train='distill:...')")
  if {'neg', 'negs'} & takes and negs is None:
    raise ConfigError(f'loss {cfg.loss!r} scores hard negatives: the batch has none (a source '
                      'with negatives, e.g. sick)')
  args = {k: v for k, v in available.items() if k in takes}
  if _loss_takes_key(cfg):  # layer / dim sampling, hard-negative mixing
    args['key'] = key
  if d is None:
    return loss_fn(q, **args, **dict(cfg.loss_kwargs))
  return loss_fn(q, d, **args, **dict(cfg.loss_kwargs))


def guide_embeddings(cfg: StepConfig, guide, batch) -> list[jax.Array]:
  """The guide's embeddings of every column of ``batch`` (no dropout, no gradient), chunked like
  the student's so that its peak memory is one chunk's."""
  guide = jax.lax.stop_gradient(guide)
  if 'query_index' in batch:  # packed: the student's rows, the guide's weights, no dropout
    spec = dataclasses.replace(cfg.guide_spec, normalize=False)
    slots = []
    for rows in _packed_row_sets(batch):
      n = rows[0].shape[0]
      out = jax.lax.map(lambda x: embed_packed(guide, spec, *x, cfg.pack_segments),
                        tuple(_chunked(r, cfg.chunk_size or n) for r in rows))
      slots.append(out.reshape((n,) + out.shape[2:]))
    return [jax.lax.stop_gradient(e) for e in _gather_packed(cfg.guide_spec, slots, batch)]
  out = []
  for ids, mask in _columns(batch):
    ch = cfg.chunk_size or ids.shape[0]
    emb = jax.lax.map(lambda x: embed(guide, cfg.guide_spec, x[0], x[1], deterministic=True),
                      (_chunked(ids, ch), _chunked(mask, ch)))
    out.append(jax.lax.stop_gradient(emb.reshape(ids.shape[0], -1)))
  return out


def _chunk_keys(rng, column: int, n_chunks: int):
  return jax.random.split(jax.random.fold_in(rng, column), n_chunks)


def _check_packing(cfg: StepConfig, batch) -> None:
  packed = 'query_index' in batch
  if packed != (cfg.pack_segments > 0):
    raise ConfigError('the batch is ' + ('packed' if packed else 'padded') + ' but the step '
                      'expects ' + ('packed' if cfg.pack_segments else 'padded') + ' batches '
                      "(data.padding 'pack' sets both)")
  if packed and (cfg.layer_elastic or cfg.representation != 'single'):
    raise ConfigError("data.padding 'pack' trains single vectors without layer_elastic so far "
                      "(use 'bucket')")


# A packed batch has two row sets: the queries' rows, and the rows that documents and hard
# negatives share. Each row set is embedded as (rows, S, D) slots, chunked over rows like padded
# rows (a chunk of ``chunk_size`` rows costs what a chunk of that many padded rows costs), and
# every text's vector is then gathered from its (row, slot).
def _packed_row_sets(batch) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
  return [(batch[f'{name}_ids'], batch[f'{name}_segments'], batch[f'{name}_positions'])
          for name in ('query', 'doc') if f'{name}_ids' in batch]


def _packed_embed_fn(spec: EmbedderSpec, segments: int, lora: LoraConfig | None, dropout: bool):
  """``f(model, ids, segments, positions, key) -> (rows, S, D)`` unnormalised slot vectors."""
  unnormalised = dataclasses.replace(spec, normalize=False)

  def f(model, ids, seg, pos, key):
    return embed_packed(encoder_params(model, lora), unnormalised, ids, seg, pos, segments,
                        deterministic=not dropout, dropout_key=key)
  return f


def _gather_packed(spec: EmbedderSpec, slots: list[jax.Array], batch) -> list[jax.Array]:
  """Row sets' slot vectors (R, S, D) -> what the padded path's columns give: queries (B, D),
  documents (B, D), hard negatives (B * H, D), row b's H negatives together.

  Normalised after the gather: an empty slot's vector is zero, and the gradient of a norm at
  zero is NaN (times a zero cotangent, still NaN), so only real texts reach the division."""
  finish = l2_normalize if spec.normalize else (lambda v: v)
  flat = [x.reshape(-1, x.shape[-1]) for x in slots]  # (R * S, D): the places' grid
  out = [finish(flat[0][batch['query_index']])]
  if len(flat) > 1:
    out.append(finish(flat[1][batch['doc_index']]))
    if 'neg_index' in batch:
      out.append(finish(flat[1][batch['neg_index'].reshape(-1)]))
  return out


def loss_and_grads(cfg: StepConfig, params, batch, rng, guide=None):
  """((loss, metrics), grads) for one batch; plain or gradient-cached per ``cfg.grad_cache``.
  ``guide``: the frozen guide's params (GUIDE_LOSSES), a constant of the step."""
  loss_fn = build_loss(cfg)
  _check_packing(cfg, batch)
  if cfg.pack_segments:  # row sets of packed texts: (rows, S, D) slots, gathered for the loss
    cols = _packed_row_sets(batch)
    f = _packed_embed_fn(cfg.spec, cfg.pack_segments, cfg.lora, cfg.dropout)
    tokens = True  # a row's output has more than one axis, as token vectors do

    def for_loss(outs):
      return _gather_packed(cfg.spec, outs, batch)
  else:
    cols, f = _columns(batch, cfg), _embed_fn(cfg)
    tokens = cfg.representation == 'multi_vector'

    def for_loss(outs):
      return outs

  if (cfg.loss in GUIDE_LOSSES) != (guide is not None and cfg.guide_spec is not None):
    raise ConfigError(f'loss {cfg.loss!r}: a guide (train.guide) is needed by exactly '
                      f'{sorted(GUIDE_LOSSES)}')
  guide_embs = guide_embeddings(cfg, guide, batch) if guide is not None else None

  def chunk_of(n):
    return cfg.chunk_size or n

  if not cfg.grad_cache:
    def total_loss(p):
      embs = []
      for c, col in enumerate(cols):
        n = col[0].shape[0]
        ch = chunk_of(n)
        keys = _chunk_keys(rng, c, n // ch)
        out = jax.vmap(f, in_axes=(None, *[0] * len(col), 0))(
            model_params(p), *[_chunked(x, ch) for x in col], keys)
        embs.append(_unchunk(out, n, tokens))
      loss, metrics = _loss_on_embeddings(cfg, loss_fn, for_loss(embs), batch, _scale(cfg, p),
                                          guide_embs, loss_key(rng))
      aux = auxiliary_loss(encoder_params(model_params(p), cfg.lora), cfg.spec, _aux_key(rng))
      if aux is None:
        return loss, metrics
      return loss + aux, {**metrics, 'auxiliary_loss': aux}
    return jax.value_and_grad(total_loss, has_aux=True)(params)

  # 1. Embeddings of every chunk, no activations kept.
  enc = model_params(params)
  embs, chunk_inputs = [], []
  for c, col in enumerate(cols):
    n = col[0].shape[0]
    ch = chunk_of(n)
    xs = (*[_chunked(x, ch) for x in col], _chunk_keys(rng, c, n // ch))
    out = jax.lax.map(lambda x: f(jax.lax.stop_gradient(enc), *x), xs)
    embs.append(_unchunk(out, n, tokens))
    chunk_inputs.append(xs)

  # 2. Loss and its gradient with respect to the embeddings (and the temperature).
  def loss_of(embs, p):
    return _loss_on_embeddings(cfg, loss_fn, for_loss(embs), batch, _scale(cfg, p), guide_embs,
                               loss_key(rng))
  (loss, metrics), (emb_grads, p_grads) = jax.value_and_grad(
      loss_of, argnums=(0, 1), has_aux=True)(embs, params)

  # 3. Re-run each chunk under vjp with its slice of the embedding gradient; sum param grads.
  grads = jax.tree_util.tree_map(jnp.zeros_like, enc)
  for xs, g in zip(chunk_inputs, emb_grads):
    cot = _rechunk(g, xs[0].shape[0], xs[0].shape[1], tokens)

    def body(acc, x):
      *arrays, key, ct = x
      _, vjp = jax.vjp(lambda p: f(p, *arrays, key), enc)
      (g_p,) = vjp(ct.astype(jnp.float32))
      return jax.tree_util.tree_map(jnp.add, acc, g_p), None

    grads, _ = jax.lax.scan(body, grads, (*xs, cot))
  # 4. The backbone's own regulariser (if it has one: decided while tracing) on the encoder.
  def aux_of(e):
    return auxiliary_loss(encoder_params(e, cfg.lora), cfg.spec, _aux_key(rng))
  if jax.eval_shape(aux_of, enc) is not None:
    aux, aux_grads = jax.value_and_grad(aux_of)(enc)
    grads = jax.tree_util.tree_map(jnp.add, grads, aux_grads)
    loss, metrics = loss + aux, {**metrics, 'auxiliary_loss': aux}
  all_grads = dict(p_grads)
  all_grads.update(grads)
  return (loss, metrics), all_grads


def _aux_key(rng: jax.Array) -> jax.Array:
  """The key of the backbone's regulariser at the step whose key is ``rng``."""
  return jax.random.fold_in(rng, AUX_KEY_FOLD)


def make_train_step(cfg: StepConfig, tx: optax.GradientTransformation) -> Callable:
  """Returns ``train_step(state, batch, rng, guide=None) -> (state, metrics)``; ``rng`` is the
  run's base key, folded with the step so a resumed run replays the same randomness; ``guide``
  the frozen guide's params for GUIDE_LOSSES (read, never updated)."""

  def train_step(state: TrainState, batch, rng, guide=None):
    step_rng = jax.random.fold_in(rng, state.step)
    (loss, metrics), grads = loss_and_grads(cfg, state.params, batch, step_rng, guide)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics['grad_norm'] = optax.tree_utils.tree_norm(grads)
    if cfg.learnable_scale:
      metrics['scale'] = _scale(cfg, params)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step
