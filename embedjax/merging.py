"""Model merging over params pytrees: soups, task arithmetic, TIES, DARE and SLERP.

Every function takes params pytrees of one architecture (the BERT family and the decoder family
alike: only the leaves matter) and returns a new pytree; nothing is modified in place. A *task
vector* is ``finetuned - base`` leaf by leaf (Ilharco et al. 2023).

  uniform_soup(models, weights=None)              weighted mean of the models (Wortsman et al. 2022)
  greedy_soup(models, score_fn)                   models added best-first while the soup's
                                                  validation score does not drop (same paper)
  task_arithmetic(base, models, weights, scaling) base + scaling * sum_i w_i (model_i - base)
  ties(base, models, weights, density, ...)       trim each task vector to its largest-magnitude
                                                  ``density`` fraction, elect a sign per entry,
                                                  disjoint mean (Yadav et al. 2023)
  dare(base, models, weights, density, key, ...)  drop each task-vector entry with probability
                                                  1 - density and rescale by 1 / density, then
                                                  merge linearly or by TIES (Yu et al. 2024)
  slerp(a, b, t)                                  spherical interpolation of two models, leaf by
                                                  leaf (as mergekit)
  self_positioning(base, models, probe_loss, ...) merge coefficients (per model, optionally per
                                                  layer) learned on a probe set (Li et al. 2024)
  merge_lora_adapters(adapters, configs, ...)     LoRA adapters combined into one: 'cat' (exact
                                                  sum of updates), 'svd' (its best rank-r
                                                  approximation) or peft's 'linear'

The tensor-level operations follow peft's ``merge_utils`` (task_arithmetic, magnitude pruning per
tensor, majority sign by 'total' or 'frequency', disjoint merge, DARE's Bernoulli drop), which the
tests use as the reference; ``scaling`` multiplies the merged task vector before it is added back
to the base.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Params = object


def _check_trees(trees: Sequence) -> None:
  if not trees:
    raise ValueError('no models to merge')
  first = jax.tree_util.tree_structure(trees[0])
  for i, t in enumerate(trees[1:], 1):
    if jax.tree_util.tree_structure(t) != first:
      raise ValueError(f'model {i} has a different params structure from model 0')
    for a, b in zip(jax.tree_util.tree_leaves(trees[0]), jax.tree_util.tree_leaves(t)):
      if a.shape != b.shape:
        raise ValueError(f'model {i} has a leaf of shape {b.shape} where model 0 has {a.shape}')


def _weights(weights, n: int) -> jax.Array:
  w = jnp.full((n,), 1.0 / n) if weights is None else jnp.asarray(weights, jnp.float32)
  if w.shape != (n,):
    raise ValueError(f'{w.shape[0] if w.ndim else "scalar"} weights for {n} models')
  return w


def task_vectors(base: Params, models: Sequence[Params]) -> list:
  """``model - base`` for every model."""
  _check_trees([base, *models])
  return [jax.tree_util.tree_map(lambda m, b: m - b, model, base) for model in models]


def uniform_soup(models: Sequence[Params], weights=None) -> Params:
  """The weighted mean of the models' params (weights None: equal, summing to 1)."""
  _check_trees(models)
  w = _weights(weights, len(models))
  return jax.tree_util.tree_map(lambda *leaves: sum(wi * x for wi, x in zip(w, leaves)), *models)


def greedy_soup(models: Sequence[Params], score_fn: Callable[[Params], float]
                ) -> tuple[Params, list[int]]:
  """Greedy soup: models sorted by their own validation score (higher = better), each added to the
  soup (a uniform mean) when the soup's score does not drop. Returns (soup, indices kept).

  ``score_fn(params) -> float`` evaluates a model on the held-out validation set.
  """
  _check_trees(models)
  scores = [float(score_fn(m)) for m in models]
  order = sorted(range(len(models)), key=lambda i: -scores[i])  # stable: ties keep input order
  kept = [order[0]]
  best = scores[order[0]]
  for i in order[1:]:
    candidate = uniform_soup([models[j] for j in kept + [i]])
    score = float(score_fn(candidate))
    if score >= best:
      kept.append(i)
      best = score
  return uniform_soup([models[j] for j in kept]), kept


def task_arithmetic(base: Params, models: Sequence[Params], weights=None,
                    scaling: float = 1.0) -> Params:
  """base + scaling * sum_i w_i (model_i - base); weights None: all 1."""
  taus = task_vectors(base, models)
  w = _weights(jnp.ones(len(models)) if weights is None else weights, len(models))
  merged = jax.tree_util.tree_map(lambda *t: sum(wi * x for wi, x in zip(w, t)), *taus)
  return jax.tree_util.tree_map(lambda b, m: b + scaling * m, base, merged)


def magnitude_prune(x: jax.Array, density: float) -> jax.Array:
  """Keeps the ``int(density * x.size)`` entries of largest magnitude of one tensor (peft's
  magnitude_based_pruning); density >= 1 keeps everything."""
  if density >= 1:
    return x
  if density < 0:
    raise ValueError(f'density must be >= 0, got {density}')
  k = int(density * x.size)
  flat = jnp.abs(x).reshape(-1)
  mask = jnp.zeros(flat.shape, x.dtype)
  if k:
    _, idx = jax.lax.top_k(flat, k)
    mask = mask.at[idx].set(1)
  return x * mask.reshape(x.shape)


def _elect_and_merge(stacked: jax.Array, w: jax.Array, majority: str) -> jax.Array:
  """TIES' sign election over the (unweighted) trimmed task tensors, then the disjoint mean of the
  weighted ones that agree with it."""
  sign = jnp.sign(stacked)
  if majority == 'total':
    magnitude = jnp.sum(stacked, axis=0)
  elif majority == 'frequency':
    magnitude = jnp.sum(sign, axis=0)
  else:
    raise ValueError(f"majority must be 'total' or 'frequency', got {majority!r}")
  agree = sign == jnp.where(magnitude >= 0, 1.0, -1.0)
  weighted = stacked * w.reshape((-1,) + (1,) * (stacked.ndim - 1))
  return jnp.sum(weighted * agree, axis=0) / jnp.maximum(jnp.sum(agree, axis=0), 1.0)


def ties(base: Params, models: Sequence[Params], weights=None, density: float = 0.2, *,
         majority: str = 'total', scaling: float = 1.0) -> Params:
  """TIES merging: trim every task vector (per tensor) to its ``density`` largest magnitudes,
  elect the sign of each entry ('total': of the summed trimmed values; 'frequency': of the sign
  counts), average the weighted entries that agree with it (disjoint mean)."""
  taus = task_vectors(base, models)
  w = _weights(jnp.ones(len(models)) if weights is None else weights, len(models))

  def merge(*leaves):
    stacked = jnp.stack([magnitude_prune(t, density) for t in leaves])
    return _elect_and_merge(stacked, w, majority)
  merged = jax.tree_util.tree_map(merge, *taus)
  return jax.tree_util.tree_map(lambda b, m: b + scaling * m, base, merged)


def dare_masks(key: jax.Array, base: Params, n_models: int, density: float) -> list:
  """DARE's keep masks: for each model a pytree of Bernoulli(density) 0/1 arrays."""
  leaves, treedef = jax.tree_util.tree_flatten(base)
  out = []
  for i in range(n_models):
    keys = jax.random.split(jax.random.fold_in(key, i), len(leaves))
    masks = [jax.random.bernoulli(k, density, x.shape).astype(x.dtype) for k, x in zip(keys, leaves)]
    out.append(jax.tree_util.tree_unflatten(treedef, masks))
  return out


def dare(base: Params, models: Sequence[Params], weights=None, density: float = 0.5, *,
         key: jax.Array | None = None, masks: Sequence[Params] | None = None,
         merge: str = 'linear', majority: str = 'total', scaling: float = 1.0) -> Params:
  """DARE: each task-vector entry kept with probability ``density`` (``masks``, or drawn from
  ``key``) and rescaled by 1 / density; then merged linearly (task arithmetic) or by TIES' sign
  election and disjoint mean (``merge='ties'``, as peft's dare_ties)."""
  if not 0 < density <= 1:
    raise ValueError(f'density must be in (0, 1], got {density}')
  taus = task_vectors(base, models)
  if masks is None:
    if key is None:
      raise ValueError('dare needs a PRNG key or explicit masks')
    masks = dare_masks(key, base, len(models), density)
  taus = [jax.tree_util.tree_map(lambda t, m: t * m / density, tau, mask)
          for tau, mask in zip(taus, masks)]
  w = _weights(jnp.ones(len(models)) if weights is None else weights, len(models))
  if merge == 'linear':
    merged = jax.tree_util.tree_map(lambda *t: sum(wi * x for wi, x in zip(w, t)), *taus)
  elif merge == 'ties':
    merged = jax.tree_util.tree_map(lambda *t: _elect_and_merge(jnp.stack(t), w, majority), *taus)
  else:
    raise ValueError(f"merge must be 'linear' or 'ties', got {merge!r}")
  return jax.tree_util.tree_map(lambda b, m: b + scaling * m, base, merged)


SLERP_DOT_THRESHOLD = 0.9995  # nearly colinear tensors are interpolated linearly (mergekit's)


def _slerp_leaf(a: jax.Array, b: jax.Array, t: float) -> jax.Array:
  a64, b64 = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
  na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
  if na == 0 or nb == 0:
    out = (1 - t) * a64 + t * b64
  else:
    dot = float(np.dot(a64 / na, b64 / nb))
    if abs(dot) > SLERP_DOT_THRESHOLD:
      out = (1 - t) * a64 + t * b64
    else:
      theta = np.arccos(np.clip(dot, -1.0, 1.0))
      s0 = np.sin((1 - t) * theta) / np.sin(theta)
      s1 = np.sin(t * theta) / np.sin(theta)
      out = s0 * a64 + s1 * b64
  return jnp.asarray(out.reshape(np.shape(a)), jnp.asarray(a).dtype)


def slerp(a: Params, b: Params, t: float) -> Params:
  """Spherical interpolation of two models, each tensor flattened: the angle between the two
  tensors' directions is interpolated at ``t`` (0 -> a, 1 -> b) and the sine weights applied to
  the tensors themselves; nearly colinear (|cos| > 0.9995) or zero tensors are interpolated
  linearly (mergekit's rule). Computed in float64 on the host, cast back."""
  if not 0 <= t <= 1:
    raise ValueError(f't must be in [0, 1], got {t}')
  _check_trees([a, b])
  return jax.tree_util.tree_map(lambda x, y: _slerp_leaf(x, y, t), a, b)


def _coefficient_groups(base: Params) -> tuple[list[int], int]:
  """Per leaf, its coefficient row for per-layer Self Positioning: transformer layer i -> i, every
  other leaf (embeddings, final norm, heads) -> one extra row after the layers."""
  from embedjax.pruning import layer_index  # the layer_i / layers_i naming lives there
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(base)[0]]
  layers = [layer_index(p) for p in paths]
  n_layers = max([i for i in layers if i is not None], default=-1) + 1
  return [n_layers if i is None else i for i in layers], n_layers + 1


def positioned(base: Params, taus: Sequence[Params], coefficients: jax.Array,
               groups: Sequence[int] | None = None) -> Params:
  """base + sum_i c_i tau_i, with c (n,) for every leaf, or (groups, n) and one row per leaf."""
  leaves, treedef = jax.tree_util.tree_flatten(base)
  tau_leaves = [jax.tree_util.tree_leaves(t) for t in taus]
  out = []
  for j, b in enumerate(leaves):
    c = coefficients if groups is None else coefficients[groups[j]]
    out.append(b + sum(c[i] * t[j] for i, t in enumerate(tau_leaves)))
  return jax.tree_util.tree_unflatten(treedef, out)


def self_positioning(base: Params, models: Sequence[Params], probe_loss: Callable,
                     probe_batches: Sequence, *, per_layer: bool = False, steps: int = 100,
                     learning_rate: float = 0.05, init: float | None = None,
                     ) -> tuple[Params, np.ndarray, list[float]]:
  """Self Positioning (Li et al. 2024, "Improving General Text Embedding Model: Tackling Task
  Conflict and Data Imbalance through Model Merging"): merge coefficients learned by gradient
  descent on a probe set. The merged model is ``base + sum_i c_i tau_i`` (one c per model, or one
  per model and transformer layer with ``per_layer``); only c is trained (Adam), the models stay
  frozen.

  Args:
    base, models: the common start and the fine-tuned models.
    probe_loss: ``probe_loss(params, batch) -> scalar``, differentiable in params.
    probe_batches: batches cycled over ``steps`` steps (a small probe set carved from train data;
      never the test split).
    init: starting coefficient for every model (default 1 / n, the uniform soup).
  Returns:
    (merged params, coefficients (n,) or (layers + 1, n) with the last row for non-layer leaves,
    probe loss per step).
  """
  import optax
  if not probe_batches:
    raise ValueError('self_positioning needs at least one probe batch')
  taus = task_vectors(base, models)
  n = len(models)
  groups, n_groups = _coefficient_groups(base) if per_layer else (None, 0)
  shape = (n_groups, n) if per_layer else (n,)
  coefficients = jnp.full(shape, 1.0 / n if init is None else float(init), jnp.float32)
  opt = optax.adam(learning_rate)

  # base and taus are arguments, not closure constants baked into the compiled program.
  @jax.jit
  def step(c, state, batch, base, taus):
    loss, g = jax.value_and_grad(lambda c: probe_loss(positioned(base, taus, c, groups), batch))(c)
    updates, state = opt.update(g, state, c)
    return optax.apply_updates(c, updates), state, loss

  state = opt.init(coefficients)
  history = []
  for s in range(steps):
    coefficients, state, loss = step(coefficients, state, probe_batches[s % len(probe_batches)],
                                     base, taus)
    history.append(float(loss))
  return (positioned(base, taus, coefficients, groups), np.asarray(coefficients), history)


def merge_lora_adapters(adapters: Sequence, configs: Sequence, weights=None, *,
                        method: str = 'cat', rank: int | None = None):
  """Combines LoRA adapters of one base model into one adapter. Returns (adapter, LoraConfig).

  The result has alpha = rank, so its scale is 1 and ``s A B`` is the stored product. With
  ``delta_i = s_i A_i B_i`` (embedjax.models.lora's layout: A (in, r), B (r, out)):

    'cat'     A = [w_1 s_1 A_1, ...], B = [B_1; ...] (ranks add up): exactly sum_i w_i delta_i
    'svd'     the best rank-``rank`` approximation of sum_i w_i delta_i (truncated SVD, float64),
              A = U S, B = V^T (rank defaults to the largest adapter rank)
    'linear'  with v_i = w_i s_i: A = sum_i sign(v_i) sqrt|v_i| A_i, B = sum_i sqrt|v_i| B_i
              (equal ranks): peft's 'linear' ``add_weighted_adapter``, which mixes cross terms
              A_i B_j; use 'cat' for the sum

  Every adapter must adapt the same modules; weights default to 1 each.
  """
  from flax import traverse_util

  from embedjax.models.lora import LoraConfig, _lora_modules
  if not adapters or len(adapters) != len(configs):
    raise ValueError(f'{len(adapters)} adapters and {len(configs)} configs: give one config each')
  modules = [_lora_modules(a) for a in adapters]
  for i, m in enumerate(modules[1:], 1):
    if set(m) != set(modules[0]):
      raise ValueError(f'adapter {i} adapts other modules than adapter 0')
    for path, (a, b) in m.items():
      if a.shape[0] != modules[0][path][0].shape[0] or b.shape[1] != modules[0][path][1].shape[1]:
        raise ValueError(f'adapter {i} module {"/".join(path)} has another (in, out) shape')
  w = np.ones(len(adapters)) if weights is None else np.asarray(weights, np.float64)
  if w.shape != (len(adapters),):
    raise ValueError(f'{w.size} weights for {len(adapters)} adapters')
  ranks = [c.rank for c in configs]
  if method == 'cat':
    new_rank = sum(ranks)
  elif method == 'linear':
    if len(set(ranks)) != 1:
      raise ValueError(f"method 'linear' needs equal ranks, got {ranks} (use 'cat' or 'svd')")
    new_rank = ranks[0]
  elif method == 'svd':
    new_rank = max(ranks) if rank is None else int(rank)
  else:
    raise ValueError(f"method must be 'cat', 'svd' or 'linear', got {method!r}")
  out = {}
  for path in sorted(modules[0]):
    parts = [(np.asarray(m[path][0], np.float64), np.asarray(m[path][1], np.float64), c.scale, wi)
             for m, c, wi in zip(modules, configs, w)]
    if method == 'cat':
      a = np.concatenate([wi * s * a for a, _, s, wi in parts], axis=1)
      b = np.concatenate([b for _, b, _, _ in parts], axis=0)
    elif method == 'linear':
      a = sum(np.sign(wi * s) * np.sqrt(abs(wi * s)) * a for a, _, s, wi in parts)
      b = sum(np.sqrt(abs(wi * s)) * b for _, b, s, wi in parts)
    else:
      delta = sum(wi * s * a @ b for a, b, s, wi in parts)
      if not 1 <= new_rank <= min(delta.shape):
        raise ValueError(f'svd rank {new_rank} is outside [1, {min(delta.shape)}] for module '
                         f'{"/".join(path)}')
      u, sv, vt = np.linalg.svd(delta, full_matrices=False)
      a, b = u[:, :new_rank] * sv[:new_rank], vt[:new_rank]
    out[path + ('lora_a',)] = jnp.asarray(a, jnp.float32)
    out[path + ('lora_b',)] = jnp.asarray(b, jnp.float32)
  config = LoraConfig(rank=new_rank, alpha=float(new_rank), target=configs[0].target)
  return traverse_util.unflatten_dict(out), config
