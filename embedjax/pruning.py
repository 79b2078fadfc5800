"""Pruning over params pytrees: unstructured (magnitude, GAPrune) and structured (heads, FFN
neurons, whole layers) with real shape reduction.

Unstructured pruning zeroes the lowest-scoring weights of the transformer layers' matrices; the
word, position and type embeddings, norms and biases are never pruned (``prunable``), so a
"50 % sparsity" is 50 % of the layers' matrix weights, not of the whole model.

  unstructured_masks(params, scores, sparsity, scope)  keep-masks from any per-weight score
  magnitude_prune(params, sparsity, scope)             scores = |w| (global, per layer or tensor)
  gradient_statistics(loss_fn, params, batches)        mean gradient and empirical Fisher diagonal
  gaprune_scores(params, domain, general, ...)         GAPrune's Domain Alignment Importance
  unit_scores(params, cfg, scores)                     per head / neuron / layer sums of scores
  prune_structure(params, cfg, keep_heads, ...)        slices the kept units out: smaller shapes
  structured_prune(params, cfg, ratios, scores)        picks the kept units by score, then slices

Structured pruning keeps the same number of heads and neurons in every layer (the configs have
one ``num_attention_heads`` and one ``intermediate_size``), each layer choosing its own best
units. A BERT-family model keeps its head width in ``attention_head_size``; a decoder prunes whole
key/value groups (a KV head with the query heads that read it) and keeps ``head_dim``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from embedjax.models.bert import BertConfig
from embedjax.models.spec import is_decoder_config

_LAYER_KEY = re.compile(r'^layers?_(\d+)$')  # 'layer_3' (BERT family), 'layers_3' (decoders)


def _key_name(k) -> str:
  return str(getattr(k, 'key', getattr(k, 'name', k)))


def layer_index(path) -> int | None:
  """The transformer layer a leaf belongs to: its first key ``layer_i`` / ``layers_i`` (at the top
  of a model's params, or under ``encoder`` in a training state)."""
  for k in path:
    m = _LAYER_KEY.match(_key_name(k))
    if m:
      return int(m.group(1))
  return None


def prunable(path, leaf) -> bool:
  """A weight matrix inside a transformer layer (embeddings, norms, biases and heads excluded)."""
  return layer_index(path) is not None and _key_name(path[-1]) == 'kernel' and np.ndim(leaf) == 2


def _check_sparsity(sparsity: float) -> None:
  if not 0.0 <= float(sparsity) < 1.0:
    raise ValueError(f'pruning ratio {sparsity} is outside [0, 1)')


def unstructured_masks(params, scores, sparsity: float, scope: str = 'global',
                       is_prunable: Callable = prunable):
  """Keep-masks (bool, same tree as params) removing the ``sparsity`` fraction of lowest scores.

  scope: 'global' (one ranking over every prunable weight), 'layer' (each transformer layer loses
  the same fraction) or 'tensor' (each matrix does). Exactly ``floor(sparsity * n)`` weights of each
  group are removed; equal scores are removed in flat order. Leaves that are not prunable get an
  all-True mask.
  """
  _check_sparsity(sparsity)
  if scope not in ('global', 'layer', 'tensor'):
    raise ValueError(f"scope must be 'global', 'layer' or 'tensor', got {scope!r}")
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  score_leaves = jax.tree_util.tree_leaves(scores)
  if len(score_leaves) != len(flat):
    raise ValueError('scores must have the same tree structure as params')
  groups: dict = {}
  for i, ((path, leaf), score) in enumerate(zip(flat, score_leaves)):
    if np.shape(score) != np.shape(leaf):
      raise ValueError(f'score {jax.tree_util.keystr(path)} has shape {np.shape(score)}, '
                       f'the weight {np.shape(leaf)}')
    if is_prunable(path, leaf):
      group = {'global': 0, 'layer': layer_index(path), 'tensor': i}[scope]
      groups.setdefault(group, []).append(i)
  masks = [np.ones(np.shape(leaf), bool) for _, leaf in flat]
  for members in groups.values():
    values = np.concatenate([np.asarray(score_leaves[i], np.float64).ravel() for i in members])
    drop = np.argsort(values, kind='stable')[:int(np.floor(sparsity * values.size))]
    keep = np.ones(values.size, bool)
    keep[drop] = False
    start = 0
    for i in members:
      n = masks[i].size
      masks[i] = keep[start:start + n].reshape(masks[i].shape)
      start += n
  return jax.tree_util.tree_unflatten(treedef, masks)


def apply_masks(params, masks):
  """params with the weights whose mask is False set to zero."""
  return jax.tree_util.tree_map(lambda w, m: jnp.where(m, w, jnp.zeros_like(w)), params, masks)


def magnitude_prune(params, sparsity: float, scope: str = 'global'):
  """Unstructured magnitude pruning. Returns (pruned params, keep-masks)."""
  masks = unstructured_masks(params, jax.tree_util.tree_map(jnp.abs, params), sparsity, scope)
  return apply_masks(params, masks), masks


def sparsity_of(params, is_prunable: Callable = prunable) -> float:
  """The fraction of prunable weights that are exactly zero."""
  zeros = total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if is_prunable(path, leaf):
      zeros += int(np.sum(np.asarray(leaf) == 0))
      total += int(np.size(leaf))
  return zeros / max(total, 1)


def gradient_statistics(loss_fn: Callable, params, batches: Iterable):
  """(mean gradient, empirical Fisher diagonal) of ``loss_fn(params, batch) -> scalar`` over batches.

  The Fisher diagonal is the mean over batches of the squared gradient of each batch's loss (per
  sample when every batch holds one example, per micro-batch otherwise, as GAPrune's estimator).
  """
  grad_fn = jax.jit(jax.grad(loss_fn))
  total = fisher = None
  n = 0
  for batch in batches:
    g = grad_fn(params, batch)
    sq = jax.tree_util.tree_map(jnp.square, g)
    total = g if total is None else jax.tree_util.tree_map(jnp.add, total, g)
    fisher = sq if fisher is None else jax.tree_util.tree_map(jnp.add, fisher, sq)
    n += 1
  if not n:
    raise ValueError('gradient_statistics needs at least one batch')
  return (jax.tree_util.tree_map(lambda x: x / n, total),
          jax.tree_util.tree_map(lambda x: x / n, fisher))


def gaprune_scores(params, domain_fisher, general_fisher, domain_grad, general_grad, *,
                   beta: float = 1.0, compression_weight: float = 0.5,
                   alignment_weight: float = 0.2, postprocess: str = 'zscore_sigmoid'):
  """GAPrune's Domain Alignment Importance of every weight (Tang & Yang 2025).

  Per tensor, with w the weights, F_d / F_g the domain / general Fisher diagonals and ``a`` the
  cosine between the tensor's mean domain and general gradients (0 when either is ~0)::

    dai = softplus(((F_d - beta F_g) |w|) * clip(1 + alignment_weight a, 0.8, 1.2)
                   + compression_weight sqrt(|w| + 1e-8))

  then, with ``postprocess='zscore_sigmoid'``, ``sigmoid((dai - mean) / std)`` within the tensor
  (unbiased std), which puts tensors of different scales on one ranking for global pruning. These
  are the defaults of the reference implementation (github.com/yixuantt/GAPrune,
  ``compute_dai_importance``); ``postprocess=None`` returns the raw DAI.
  """
  if postprocess not in ('zscore_sigmoid', None):
    raise ValueError(f"postprocess must be 'zscore_sigmoid' or None, got {postprocess!r}")

  def one(w, fd, fg, gd, gg):
    gd, gg = gd.ravel(), gg.ravel()
    nd, ng = jnp.linalg.norm(gd), jnp.linalg.norm(gg)
    ok = (nd > 1e-8) & (ng > 1e-8)
    cos = jnp.where(ok, jnp.dot(gd / (nd + 1e-8), gg / (ng + 1e-8)), 0.0)
    mag = jnp.abs(w)
    raw = ((fd - beta * fg) * mag * jnp.clip(1.0 + alignment_weight * cos, 0.8, 1.2)
           + compression_weight * jnp.sqrt(mag + 1e-8))
    dai = jax.nn.softplus(raw)
    if postprocess is None or dai.size < 2:
      return dai
    z = (dai - dai.mean()) / (jnp.std(dai, ddof=1) + 1e-8)
    return jax.nn.sigmoid(z)

  return jax.tree_util.tree_map(one, params, domain_fisher, general_fisher, domain_grad,
                                general_grad)


# --- structured pruning -------------------------------------------------------------------------

def _layer_keys(cfg) -> list[str]:
  prefix = 'layers_' if is_decoder_config(cfg) else 'layer_'
  return [f'{prefix}{i}' for i in range(cfg.num_hidden_layers)]


def _check_cfg(cfg) -> None:
  if not (isinstance(cfg, BertConfig) or is_decoder_config(cfg)):
    raise ValueError(f'structured pruning needs a BertConfig or DecoderConfig, got {type(cfg).__name__}')


def _head_units(cfg) -> tuple[int, int]:
  """(number of prunable head units, query heads per unit): KV groups for decoders."""
  if is_decoder_config(cfg):
    return cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads
  return cfg.num_attention_heads, 1


def unit_scores(params, cfg, scores=None) -> dict[str, np.ndarray]:
  """Per-unit importance: the sum of the per-weight ``scores`` (default |w|) of each unit's weights.

  Returns {'heads': (layers, units), 'neurons': (layers, intermediate), 'layers': (layers,)}: a
  head unit is a BERT head (its q/k/v columns and output-projection rows) or a decoder KV group;
  a neuron is an FFN column of the input projections and its row of the output projection; a
  layer sums all its matrices.
  """
  _check_cfg(cfg)
  scores = jax.tree_util.tree_map(jnp.abs, params) if scores is None else scores
  units, group = _head_units(cfg)
  d = cfg.head_size
  heads, neurons, layers = [], [], []
  for key in _layer_keys(cfg):
    s = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), scores[key])
    if is_decoder_config(cfg):
      a, m = s['self_attn'], s['mlp']
      q = a['q_proj']['kernel'].reshape(-1, units, group * d).sum(axis=(0, 2))
      kv = sum(a[n]['kernel'].reshape(-1, units, d).sum(axis=(0, 2)) for n in ('k_proj', 'v_proj'))
      o = a['o_proj']['kernel'].reshape(units, group * d, -1).sum(axis=(1, 2))
      heads.append(q + kv + o)
      neurons.append(m['gate_proj']['kernel'].sum(0) + m['up_proj']['kernel'].sum(0)
                     + m['down_proj']['kernel'].sum(1))
    else:
      a = s['attention']
      qkv = sum(a['self'][n]['kernel'].reshape(-1, units, d).sum(axis=(0, 2))
                for n in ('query', 'key', 'value'))
      heads.append(qkv + a['output_dense']['kernel'].reshape(units, d, -1).sum(axis=(1, 2)))
      neurons.append(s['intermediate_dense']['kernel'].sum(0) + s['output_dense']['kernel'].sum(1))
    layers.append(sum(float(np.sum(x)) for path, x in jax.tree_util.tree_flatten_with_path(s)[0]
                      if _key_name(path[-1]) == 'kernel'))
  return {'heads': np.stack(heads), 'neurons': np.stack(neurons), 'layers': np.asarray(layers)}


def _take(leaf, idx, axis):
  return jnp.take(jnp.asarray(leaf), jnp.asarray(idx), axis=axis)


def _columns(units_idx, width: int) -> np.ndarray:
  """Column indices of the kept units, each ``width`` wide."""
  return (np.asarray(units_idx)[:, None] * width + np.arange(width)).ravel()


def _prune_attention(layer: dict, cfg, keep: np.ndarray) -> dict:
  units, group = _head_units(cfg)
  d = cfg.head_size
  layer = jax.tree_util.tree_map(lambda x: x, layer)  # a fresh copy of the dict levels
  if is_decoder_config(cfg):
    a = dict(layer['self_attn'])
    q_cols, kv_cols = _columns(keep, group * d), _columns(keep, d)
    for name, cols in (('q_proj', q_cols), ('k_proj', kv_cols), ('v_proj', kv_cols)):
      a[name] = {k: _take(v, cols, -1) for k, v in a[name].items()}
    a['o_proj'] = {**a['o_proj'], 'kernel': _take(a['o_proj']['kernel'], q_cols, 0)}
    layer['self_attn'] = a
  else:
    a = dict(layer['attention'])
    cols = _columns(keep, d)
    a['self'] = {n: {k: _take(v, cols, -1) for k, v in p.items()} for n, p in a['self'].items()}
    a['output_dense'] = {**a['output_dense'], 'kernel': _take(a['output_dense']['kernel'], cols, 0)}
    layer['attention'] = a
  return layer


def _prune_mlp(layer: dict, cfg, keep: np.ndarray) -> dict:
  layer = dict(layer)
  if is_decoder_config(cfg):
    m = dict(layer['mlp'])
    for name in ('gate_proj', 'up_proj'):
      m[name] = {k: _take(v, keep, -1) for k, v in m[name].items()}
    m['down_proj'] = {**m['down_proj'], 'kernel': _take(m['down_proj']['kernel'], keep, 0)}
    layer['mlp'] = m
  else:
    layer['intermediate_dense'] = {k: _take(v, keep, -1)
                                   for k, v in layer['intermediate_dense'].items()}
    layer['output_dense'] = {**layer['output_dense'],
                             'kernel': _take(layer['output_dense']['kernel'], keep, 0)}
  return layer


def _check_keep(name: str, keep, layers: int, total: int):
  keep = np.asarray(keep, np.int64)
  if keep.ndim != 2 or keep.shape[0] != layers or keep.shape[1] < 1:
    raise ValueError(f'{name} must be ({layers}, n >= 1) indices, one row per layer; got shape '
                     f'{keep.shape}')
  for i, row in enumerate(keep):
    if len(set(row.tolist())) != row.size or row.min() < 0 or row.max() >= total:
      raise ValueError(f'{name} row {i} must be distinct indices in [0, {total})')
  return np.sort(keep, axis=1)


def prune_structure(params, cfg, *, keep_heads=None, keep_neurons=None, keep_layers=None):
  """Slices the kept units out of a BERT-family or decoder model. Returns (params, cfg).

  keep_heads: (layers, n) head indices (KV-group indices for decoders) kept in each layer;
  keep_neurons: (layers, m) FFN neuron indices kept in each layer; keep_layers: the layer indices
  kept (in order; renumbered from 0). None keeps everything of that kind. The result is a smaller
  model of the same family: its params fit the returned config, and it exports like any other.
  """
  _check_cfg(cfg)
  layer_keys = _layer_keys(cfg)
  n_layers = len(layer_keys)
  params = dict(params)
  changes = {}
  if keep_heads is not None:
    units, group = _head_units(cfg)
    keep_heads = _check_keep('keep_heads', keep_heads, n_layers, units)
    for key, keep in zip(layer_keys, keep_heads):
      params[key] = _prune_attention(params[key], cfg, keep)
    kept = keep_heads.shape[1]
    if is_decoder_config(cfg):
      changes.update(num_key_value_heads=kept, num_attention_heads=kept * group,
                     head_dim=cfg.head_size)
    else:
      changes.update(num_attention_heads=kept, attention_head_size=cfg.head_size)
  if keep_neurons is not None:
    keep_neurons = _check_keep('keep_neurons', keep_neurons, n_layers, cfg.intermediate_size)
    for key, keep in zip(layer_keys, keep_neurons):
      params[key] = _prune_mlp(params[key], cfg, keep)
    changes['intermediate_size'] = keep_neurons.shape[1]
  if keep_layers is not None:
    keep_layers = [int(i) for i in keep_layers]
    if not keep_layers or len(set(keep_layers)) != len(keep_layers) or not all(
        0 <= i < n_layers for i in keep_layers):
      raise ValueError(f'keep_layers must be distinct layer indices in [0, {n_layers}), at least one')
    moved = {layer_keys[new]: params[layer_keys[old]] for new, old in enumerate(keep_layers)}
    for key in layer_keys:
      params.pop(key)
    params.update(moved)
    changes['num_hidden_layers'] = len(keep_layers)
  return params, dataclasses.replace(cfg, **changes)


def structured_prune(params, cfg, *, head_ratio: float = 0.0, neuron_ratio: float = 0.0,
                     layer_ratio: float = 0.0, scores=None):
  """Removes the given fraction of head units and neurons in every layer, and of whole layers,
  lowest ``unit_scores`` first (at least one of each kept). Returns (params, cfg)."""
  for r in (head_ratio, neuron_ratio, layer_ratio):
    _check_sparsity(r)
  units = unit_scores(params, cfg, scores)

  def keep_top(s, ratio):  # rows: per-layer scores; keeps the highest, ties by lower index
    n = max(1, s.shape[-1] - int(np.floor(ratio * s.shape[-1])))
    return np.sort(np.argsort(-s, axis=-1, kind='stable')[..., :n], axis=-1)

  keep_heads = keep_top(units['heads'], head_ratio) if head_ratio else None
  keep_neurons = keep_top(units['neurons'], neuron_ratio) if neuron_ratio else None
  keep_layers = keep_top(units['layers'], layer_ratio) if layer_ratio else None
  return prune_structure(params, cfg, keep_heads=keep_heads, keep_neurons=keep_neurons,
                         keep_layers=keep_layers)
