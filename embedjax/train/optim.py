"""Optimizer from a config block: AdamW, warmup + decay, gradient clipping, regex freezing.

Config fields (``cfg``, the ``optim`` block of ``embedjax.train.base_config``, where each has its
default and meaning): lr, warmup_steps, decay ('cosine' | 'linear' | 'constant'), end_lr_ratio,
weight_decay, b1, b2, eps, clip_norm (0 = off), freeze (regex over '/'-joined param paths;
matching params get no update, and so no optimizer state is spent on them), keep_zeros (the
transformer layers' matrix weights that are exactly zero when training starts never change: the
recovery fine-tuning of a pruned model keeps its sparsity).
Weight decay skips biases, LayerNorm parameters and the temperature, as the Hugging Face trainer
(and so sentence-transformers) does.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from embedjax.config import ConfigError


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  warmup = int(cfg.warmup_steps)
  decay_steps = max(total_steps - warmup, 1)
  end = cfg.lr * float(cfg.end_lr_ratio)
  kind = cfg.decay
  if kind == 'cosine':
    after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=end / cfg.lr if cfg.lr else 0.0)
  elif kind == 'linear':
    after = optax.linear_schedule(cfg.lr, end, decay_steps)
  elif kind == 'constant':
    after = optax.constant_schedule(cfg.lr)
  else:
    raise ConfigError(f"optim.decay must be 'cosine', 'linear' or 'constant', got {kind!r}")
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def param_paths(params) -> Any:
  """A pytree like ``params`` whose leaves are the '/'-joined key paths."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path), params)


def _decay_mask(params):
  return jax.tree_util.tree_map(
      lambda p: not (p.endswith('/bias') or 'LayerNorm' in p or p == 'logit_scale'),
      param_paths(params))


class KeepZerosState(NamedTuple):
  keep: Any  # bool pytree like the params: False where a layer matrix weight was zero at init


def keep_zeros() -> optax.GradientTransformation:
  """Zeroes the updates of the transformer layers' matrix weights that are exactly zero at
  ``init`` (``embedjax.pruning.prunable`` leaves): chained last, after weight decay, it keeps a
  pruned model's zeros exactly zero. The keep-mask is optimizer state, so it is checkpointed and
  sharded like the params it mirrors."""
  from embedjax.pruning import prunable

  def init(params):
    return KeepZerosState(jax.tree_util.tree_map_with_path(
        lambda path, p: p != 0 if prunable(path, p) else jnp.ones((), bool), params))

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(lambda u, k: jnp.where(k, u, jnp.zeros_like(u)), updates,
                                  state.keep), state

  return optax.GradientTransformation(init, update)


def make_optimizer(cfg, params, total_steps: int) -> optax.GradientTransformation:
  """The full update rule for ``params`` (a pytree used only for its structure and names)."""
  schedule = make_schedule(cfg, total_steps)
  parts = []
  if float(cfg.clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(cfg.clip_norm)))
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=_decay_mask))
  if cfg.keep_zeros:
    parts.append(keep_zeros())
  tx = optax.chain(*parts)
  pattern = cfg.freeze
  if not pattern:
    return tx
  regex = re.compile(pattern)
  labels = jax.tree_util.tree_map(lambda p: 'frozen' if regex.search(p) else 'train',
                                  param_paths(params))
  if 'train' not in jax.tree_util.tree_leaves(labels):
    raise ConfigError(f'optim.freeze={pattern!r} freezes every parameter')
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
