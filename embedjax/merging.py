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
