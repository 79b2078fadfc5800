"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") as pure functions
over params pytrees, for any Flax linen model whose targets are 2-D Dense kernels.

The adapter is its own pytree that mirrors the base params for the targeted kernels only: a kernel
at ``layer_0/attention/self/query/kernel`` of shape (in, out) gets ``lora_a`` (in, r) and
``lora_b`` (r, out) at ``layer_0/attention/self/query/{lora_a,lora_b}``. Targets are chosen by a
regex over the '/'-joined path of the kernel's module (``re.fullmatch``, as peft matches a string
``target_modules`` against module names). Nothing in the model code changes; two equivalent ways
run a model with an adapter:

  merged (``apply_lora``)     params with W' = W + s A B, s = alpha / r, passed to ``model.apply``.
                              Works for any module that reads a 2-D kernel; cannot express dropout.
  activations (``lora_scope``)  a context manager that intercepts ``nn.Dense.__call__`` of the
                              adapted modules and adds s * drop(x) A B to their output, which is
                              peft's ``y = x W + b + s * B(A(dropout(x)))`` including dropout.

They agree to float32 rounding without dropout (tested against each other and against peft).
Cost: the merged path materialises W' (in x out) per target, and its backward forms the full
dL/dW' = x^T g (tokens x in x out multiply-adds, as much as the layer's forward) before reducing it
to A and B; the activation path adds only tokens x r x (in + out) per pass and never forms dL/dW.
For large models and batches the activation path is the cheaper one; it is also the only one with
dropout. The merged path works for any module that reads the kernel, not only ``nn.Dense``.

Freezing is by construction: the trainable pytree *is* the adapter, and ``lora_loss`` closes a
loss over the (stop-gradient) base params, so ``jax.grad`` never builds base gradients. An adapter
is saved and loaded like any pytree (its leaves are plain float32 arrays); ``merge_lora`` gives
base-dtype params for export through the ordinary exporters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from typing import Any, Callable, Iterator

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.core import FrozenDict, unfreeze

LORA_LEAVES = ('lora_a', 'lora_b')


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """LoRA hyperparameters (names follow peft's ``LoraConfig``: r, lora_alpha, lora_dropout).

  Attributes:
    rank: r, the inner dimension of A (in, r) and B (r, out).
    alpha: scaling numerator: the update is (alpha / r) A B (alpha / sqrt(r) with use_rslora).
    dropout: rate of the dropout applied to each adapted layer's *input* on the LoRA branch only
      (peft's ``lora_dropout``); only the activation path (``lora_scope``) can apply it.
    target: regex, fully matched against the '/'-joined module path of each kernel, e.g.
      ``r'.*/(query|value)'``. ``LoraConfig.for_modules(('query', 'value'))`` builds the peft
      list semantics (module name equal to, or ending in, one of the names).
    use_rslora: rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023), as peft's flag.
  """
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  target: str = r'.*/(query|value)'
  use_rslora: bool = False

  def __post_init__(self):
    if not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f'LoRA rank must be a positive int, got {self.rank!r}')
    if not self.alpha > 0:
      raise ValueError(f'LoRA alpha must be > 0, got {self.alpha!r}')
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'LoRA dropout must be in [0, 1), got {self.dropout!r}')
    try:
      re.compile(self.target)
    except re.error as e:
      raise ValueError(f'LoRA target {self.target!r} is not a valid regex: {e}') from e

  @classmethod
  def for_modules(cls, names: tuple[str, ...] | list[str], **kwargs) -> LoraConfig:
    """A config targeting modules named exactly ``names`` at any depth (peft's list form)."""
    if not names:
      raise ValueError('for_modules needs at least one module name')
    alternatives = '|'.join(re.escape(n) for n in names)
    return cls(target=f'(?:.*/)?(?:{alternatives})', **kwargs)

  @property
  def scale(self) -> float:
    """s in W + s A B."""
    return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

  def matches(self, module_path: str) -> bool:
    return re.fullmatch(self.target, module_path) is not None


def _flat(tree) -> dict[tuple[str, ...], Any]:
  return traverse_util.flatten_dict(unfreeze(tree) if isinstance(tree, FrozenDict) else tree)


def _lora_modules(lora_params) -> dict[tuple[str, ...], tuple[jax.Array, jax.Array]]:
  """{module path: (A (..., in, r), B (..., r, out))} of an adapter pytree."""
  flat = _flat(lora_params)
  modules: dict[tuple[str, ...], dict[str, Any]] = {}
  for path, leaf in flat.items():
    if path[-1] not in LORA_LEAVES:
      raise ValueError(f'adapter leaf {"/".join(path)} is not one of {LORA_LEAVES}')
    modules.setdefault(path[:-1], {})[path[-1]] = leaf
  out = {}
  for path, leaves in modules.items():
    if set(leaves) != set(LORA_LEAVES):
      raise ValueError(f'adapter module {"/".join(path)} has {sorted(leaves)}, needs {LORA_LEAVES}')
    a, b = leaves['lora_a'], leaves['lora_b']
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
      raise ValueError(f'adapter module {"/".join(path)}: lora_a {a.shape} and lora_b {b.shape} '
                       'are not (in, r) and (r, out)')
    out[path] = (a, b)
  return out


def lora_targets(base_params, config: LoraConfig) -> list[tuple[str, ...]]:
  """Module paths (tuples) whose 'kernel' the config adapts, in sorted order."""
  targets = []
  for path, leaf in _flat(base_params).items():
    if path[-1] != 'kernel' or not config.matches('/'.join(path[:-1])):
      continue
    if jnp.ndim(leaf) != 2:
      # A DenseGeneral (in, heads, dim) or an nn.scan-stacked (layers, in, out) kernel has no single
      # (in, out) reading; refusing beats adapting the wrong axes.
      raise ValueError(f'LoRA target {"/".join(path)} has shape {jnp.shape(leaf)}; only 2-D '
                       '(in, out) Dense kernels can be adapted')
    targets.append(path[:-1])
  return sorted(targets)


def init_lora(key: jax.Array, base_params, config: LoraConfig) -> dict:
  """A fresh adapter: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0, float32.

  The bound is peft's default (``init_lora_weights=True``): torch's ``kaiming_uniform_(a=sqrt(5))``
  on lora_A.weight (r, in), whose fan-in is ``in``. With B = 0 the adapted model equals the base.

  Args:
    key: PRNG key; target i (in sorted path order) uses ``fold_in(key, i)``.
    base_params: the model's params pytree (without the ``{'params': ...}`` wrapper).
    config: which kernels to adapt, and the rank.
  Returns:
    Nested dict mirroring base_params: {module path...: {'lora_a': (in, r), 'lora_b': (r, out)}}.
  """
  targets = lora_targets(base_params, config)
  if not targets:
    raise ValueError(f'LoRA target {config.target!r} matches no 2-D kernel; module paths look '
                     f'like {_example_paths(base_params)}')
  flat = _flat(base_params)
  adapter = {}
  for i, path in enumerate(targets):
    d_in, d_out = flat[path + ('kernel',)].shape
    bound = 1.0 / math.sqrt(d_in)
    adapter[path + ('lora_a',)] = jax.random.uniform(
        jax.random.fold_in(key, i), (d_in, config.rank), jnp.float32, -bound, bound)
    adapter[path + ('lora_b',)] = jnp.zeros((config.rank, d_out), jnp.float32)
  return traverse_util.unflatten_dict(adapter)


def _example_paths(base_params, n: int = 3) -> list[str]:
  return ['/'.join(p[:-1]) for p in _flat(base_params) if p[-1] == 'kernel'][:n]


def _delta(a: jax.Array, b: jax.Array, config: LoraConfig) -> jax.Array:
  """s A B: (in, out) in the adapter's dtype (float32), at full matmul precision."""
  return config.scale * jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _merged(base_params, lora_params, config: LoraConfig, cast_to_base: bool):
  flat = _flat(base_params)
  for path, (a, b) in _lora_modules(lora_params).items():
    key = path + ('kernel',)
    if key not in flat:
      raise KeyError(f'adapter module {"/".join(path)} has no kernel in the base params; module '
                     f'paths look like {_example_paths(base_params)}')
    w = flat[key]
    chex.assert_shape([a, b], [(w.shape[0], None), (None, w.shape[1])])
    if cast_to_base:
      # Sum in float32 (a bf16 W would swallow a small update), then round once to W's dtype.
      flat[key] = (jnp.asarray(w, jnp.float32) + _delta(a, b, config)).astype(w.dtype)
    else:
      flat[key] = w + _delta(a, b, config).astype(jnp.result_type(w, a))
  merged = traverse_util.unflatten_dict(flat)
  return FrozenDict(merged) if isinstance(base_params, FrozenDict) else merged


def apply_lora(base_params, lora_params, config: LoraConfig):
  """Base params with each adapted kernel replaced by W + s A B (the dropout-free forward).

  Differentiable with respect to lora_params (and base_params, which ``lora_loss`` stops). Each
  merged kernel has dtype result_type(W, A): a bf16 base with a float32 adapter trains through
  float32 kernels, so the update is not rounded away before it reaches the matmul. Returns the
  same container type as base_params; leaves that are not adapted are passed through untouched.
  """
  return _merged(base_params, lora_params, config, cast_to_base=False)


def merge_lora(base_params, lora_params, config: LoraConfig):
  """Params for export: W + s A B computed in float32 and stored in each W's own dtype."""
  return _merged(base_params, lora_params, config, cast_to_base=True)


def _dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
  # Inverted dropout, as torch.nn.Dropout and flax's nn.Dropout: keep with 1 - rate, scale up.
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


@contextlib.contextmanager
def lora_scope(lora_params, config: LoraConfig, *, deterministic: bool = True,
               rng_collection: str = 'dropout', strict: bool = True) -> Iterator[None]:
  """Runs models with the adapter added at activation level (the unmerged, dropout-capable path).

  Inside the ``with`` block, every ``nn.Dense`` whose module path (``'/'.join(module.path)``) has
  an adapter entry returns ``y + s * (drop(x) @ A) @ B`` (peft's order: A first, then B, then s;
  computed in the adapter's dtype and cast to y's), via ``flax.linen.intercept_methods``. Use it
  around ``model.apply`` (or ``embed``), inside any ``jit``::

    with lora_scope(lora, cfg, deterministic=False):
      h = model.apply({'params': base}, ids, mask, deterministic=False, rngs={'dropout': key})

  Args:
    lora_params: adapter pytree from ``init_lora`` (paths relative to the applied root module).
    config: scale and dropout rate.
    deterministic: True disables LoRA dropout (evaluation). When False and config.dropout > 0, each
      adapted Dense draws its mask from ``module.make_rng(rng_collection)``, so the apply call must
      get ``rngs={rng_collection: key}``; the model's own dropout masks are unchanged (flax counts
      RNG draws per module, and Dense modules draw none of their own).
    strict: on leaving the block, raise if some adapter entry was never applied (a path prefix
      mismatch, a target that is not an ``nn.Dense``, or a jitted function traced outside the
      block and replayed inside it) rather than silently running the base model.
  """
  modules = {'/'.join(path): ab for path, ab in _lora_modules(lora_params).items()}
  used: set[str] = set()
  use_dropout = not deterministic and config.dropout > 0

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or not isinstance(module, nn.Dense):
      return next_fun(*args, **kwargs)
    path = '/'.join(module.path)
    if path not in modules:
      return next_fun(*args, **kwargs)
    y = next_fun(*args, **kwargs)
    x = args[0] if args else kwargs['inputs']
    a, b = modules[path]
    chex.assert_shape([a, b], [(x.shape[-1], None), (None, y.shape[-1])])
    x = x.astype(a.dtype)
    if use_dropout:
      if not module.has_rng(rng_collection):
        raise ValueError(f'LoRA dropout {config.dropout} at {path} needs an {rng_collection!r} '
                         f'PRNG key: pass rngs={{{rng_collection!r}: key}} to apply, or use '
                         'lora_scope(..., deterministic=True)')
      x = _dropout(x, config.dropout, module.make_rng(rng_collection))
    used.add(path)
    return y + (config.scale * ((x @ a) @ b)).astype(y.dtype)

  with nn.intercept_methods(interceptor):
    yield
  if strict and set(modules) - used:
    missing = sorted(set(modules) - used)
    raise RuntimeError(f'lora_scope: {len(missing)} adapter module(s) were never called as '
                       f'nn.Dense (e.g. {missing[:3]}); check that the adapter paths are relative '
                       'to the applied module, or use apply_lora (merged weights)')


def lora_loss(loss_fn: Callable[..., Any], config: LoraConfig, *, deterministic: bool = True,
              path: str = 'auto') -> Callable[..., Any]:
  """Turns ``loss_fn(params, *args, **kw)`` into ``f(lora_params, base_params, *args, **kw)``.

  Differentiate f with respect to its first argument only (``jax.value_and_grad(f)``): the base
  is wrapped in ``stop_gradient`` so that it is frozen whatever the caller's argnums.

  Args:
    loss_fn: a loss over the model's full params (it calls ``model.apply`` / ``embed`` itself; in
      training it passes its own dropout key and ``deterministic=False`` to the model).
    config: the adapter's config.
    deterministic: False turns on LoRA dropout (needs the activation path).
    path: 'merged' (``apply_lora``), 'activations' (``lora_scope``), or 'auto': merged when no
      LoRA dropout is active, else activations.
  """
  if path not in ('auto', 'merged', 'activations'):
    raise ValueError(f"path must be 'auto', 'merged' or 'activations', got {path!r}")
  dropout_on = not deterministic and config.dropout > 0
  if path == 'merged' and dropout_on:
    raise ValueError(f'LoRA dropout {config.dropout} acts on layer inputs, which merged weights '
                     "cannot express: use path='activations' (or 'auto'), or dropout 0")
  merged = path == 'merged' or (path == 'auto' and not dropout_on)

  def f(lora_params, base_params, *args, **kwargs):
    base_params = jax.lax.stop_gradient(base_params)
    if merged:
      return loss_fn(apply_lora(base_params, lora_params, config), *args, **kwargs)
    with lora_scope(lora_params, config, deterministic=deterministic):
      return loss_fn(base_params, *args, **kwargs)
  return f


def lora_labels(tree) -> Any:
  """Labels 'lora' (adapter leaves ``lora_a`` / ``lora_b``) or 'frozen' (everything else) of a
  joint tree such as ``{'base': base, 'lora': lora}``, for ``optax.multi_transform({'lora': tx,
  'frozen': optax.set_to_zero()}, lora_labels(tree))``. (``optax.masked`` would pass the frozen
  leaves' raw gradients through as updates, not zeros.)"""
  flat = _flat(tree)
  return traverse_util.unflatten_dict(
      {p: 'lora' if p[-1] in LORA_LEAVES else 'frozen' for p in flat})


def lora_param_count(lora_params) -> int:
  """Number of trainable adapter scalars: sum over targets of r (in + out)."""
  return int(sum(math.prod(jnp.shape(x)) for x in jax.tree_util.tree_leaves(lora_params)))
