"""The pure train step, plain or gradient-cached, for contrastive embedding training.

Batch (all arrays have the global batch size B as leading dim):
  query_ids, query_mask: (B, Lq) int32    doc_ids, doc_mask: (B, Ld) int32
  neg_ids, neg_mask: (B, H, Ld) int32 (optional hard negatives)
  doc_key: (B,) int32 id of each positive document (duplicate positives are masked as negatives)
  score: (B,) float32 gold score of each (query, doc) pair (scored-pair data, for SCORED_LOSSES)

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
from embedjax.losses import LOSSES, matryoshka
from embedjax.losses.contrastive import DEFAULT_SCALE
from embedjax.models.embedder import embed
from embedjax.models.lora import LoraConfig, apply_lora
from embedjax.models.spec import EmbedderSpec
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


def build_loss(cfg: StepConfig) -> Callable:
  if cfg.loss not in LOSSES:
    raise ConfigError(f'unknown loss {cfg.loss!r}; choose from {sorted(LOSSES)}')
  fn = LOSSES[cfg.loss]
  if cfg.matryoshka_dims:
    fn = matryoshka(fn, cfg.matryoshka_dims, cfg.matryoshka_weights)
  return fn


def loss_arguments(name: str) -> frozenset[str]:
  """The batch-derived arguments loss ``name`` takes, among hard_negatives, scale, doc_ids and
  scores (the step passes only those: a CoSENT loss has no hard negatives, CoDiEmb's no scale)."""
  params = inspect.signature(LOSSES[name]).parameters
  return frozenset(a for a in ('hard_negatives', 'scale', 'doc_ids', 'scores') if a in params)


def _columns(batch) -> list[tuple[jax.Array, jax.Array]]:
  cols = [(batch['query_ids'], batch['query_mask']), (batch['doc_ids'], batch['doc_mask'])]
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
  """The part of the train params the embedder reads: {'encoder'} or {'encoder', 'lora'}."""
  return {k: params[k] for k in ('encoder', 'lora') if k in params}


def encoder_params(model, lora: LoraConfig | None):
  """The backbone params to embed with: the base with its adapter merged in (the base behind a
  stop_gradient, so no base gradient is ever formed), or the encoder itself."""
  if lora is None:
    return model['encoder']
  return apply_lora(jax.lax.stop_gradient(model['encoder']), model['lora'], lora)


def _embed_fn(cfg: StepConfig):
  def f(model, ids, mask, key):
    return embed(encoder_params(model, cfg.lora), cfg.spec, ids, mask,
                 deterministic=not cfg.dropout, dropout_key=key)
  return f


def _scale(cfg: StepConfig, params):
  if cfg.learnable_scale:
    return jnp.minimum(jnp.exp(params['logit_scale']), MAX_LOGIT_SCALE)
  return cfg.scale


def _loss_on_embeddings(cfg: StepConfig, loss_fn, embs, batch, scale):
  q, d = embs[0], embs[1]
  negs = None
  if len(embs) > 2:
    b, h = batch['neg_ids'].shape[:2]
    negs = embs[2].reshape(b, h, -1)
  available = {'hard_negatives': negs, 'scale': scale, 'doc_ids': batch.get('doc_key'),
               'scores': batch.get('score')}
  takes = loss_arguments(cfg.loss)
  if negs is not None and 'hard_negatives' not in takes:
    raise ConfigError(f'loss {cfg.loss!r} takes no hard negatives, but the batch has them')
  if 'scores' in takes and available['scores'] is None:
    raise ConfigError(f"loss {cfg.loss!r} trains on scored pairs: the batch has no 'score'")
  args = {k: v for k, v in available.items() if k in takes}
  return loss_fn(q, d, **args, **dict(cfg.loss_kwargs))


def _chunk_keys(rng, column: int, n_chunks: int):
  return jax.random.split(jax.random.fold_in(rng, column), n_chunks)


def loss_and_grads(cfg: StepConfig, params, batch, rng):
  """((loss, metrics), grads) for one batch; plain or gradient-cached per ``cfg.grad_cache``."""
  loss_fn = build_loss(cfg)
  f = _embed_fn(cfg)
  cols = _columns(batch)

  def chunk_of(n):
    return cfg.chunk_size or n

  if not cfg.grad_cache:
    def total_loss(p):
      embs = []
      for c, (ids, mask) in enumerate(cols):
        ch = chunk_of(ids.shape[0])
        keys = _chunk_keys(rng, c, ids.shape[0] // ch)
        out = jax.vmap(f, in_axes=(None, 0, 0, 0))(model_params(p), _chunked(ids, ch),
                                                  _chunked(mask, ch), keys)
        embs.append(out.reshape(ids.shape[0], -1))
      return _loss_on_embeddings(cfg, loss_fn, embs, batch, _scale(cfg, p))
    return jax.value_and_grad(total_loss, has_aux=True)(params)

  # 1. Embeddings of every chunk, no activations kept.
  enc = model_params(params)
  embs, chunk_inputs = [], []
  for c, (ids, mask) in enumerate(cols):
    ch = chunk_of(ids.shape[0])
    xs = (_chunked(ids, ch), _chunked(mask, ch), _chunk_keys(rng, c, ids.shape[0] // ch))
    out = jax.lax.map(lambda x: f(jax.lax.stop_gradient(enc), *x), xs)
    embs.append(out.reshape(ids.shape[0], -1))
    chunk_inputs.append(xs)

  # 2. Loss and its gradient with respect to the embeddings (and the temperature).
  def loss_of(embs, p):
    return _loss_on_embeddings(cfg, loss_fn, embs, batch, _scale(cfg, p))
  (loss, metrics), (emb_grads, p_grads) = jax.value_and_grad(
      loss_of, argnums=(0, 1), has_aux=True)(embs, params)

  # 3. Re-run each chunk under vjp with its slice of the embedding gradient; sum param grads.
  grads = jax.tree_util.tree_map(jnp.zeros_like, enc)
  for (ids_c, mask_c, keys), g in zip(chunk_inputs, emb_grads):
    cot = g.reshape(ids_c.shape[0], ids_c.shape[1], -1)

    def body(acc, x):
      ids, mask, key, ct = x
      _, vjp = jax.vjp(lambda p: f(p, ids, mask, key), enc)
      (g_p,) = vjp(ct.astype(jnp.float32))
      return jax.tree_util.tree_map(jnp.add, acc, g_p), None

    grads, _ = jax.lax.scan(body, grads, (ids_c, mask_c, keys, cot))
  all_grads = dict(p_grads)
  all_grads.update(grads)
  return (loss, metrics), all_grads


def make_train_step(cfg: StepConfig, tx: optax.GradientTransformation) -> Callable:
  """Returns ``train_step(state, batch, rng) -> (state, metrics)``; ``rng`` is the run's base
  key, folded with the step so a resumed run replays the same randomness."""

  def train_step(state: TrainState, batch, rng):
    step_rng = jax.random.fold_in(rng, state.step)
    (loss, metrics), grads = loss_and_grads(cfg, state.params, batch, step_rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics['grad_norm'] = optax.tree_utils.tree_norm(grads)
    if cfg.learnable_scale:
      metrics['scale'] = _scale(cfg, params)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step
