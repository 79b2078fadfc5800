"""Model-parallel sharding by logical axis names: data parallelism, FSDP and tensor parallelism.

The MaxText convention (see DESIGN.md, "Sharding beyond data parallelism"): every parameter
dimension carries a *logical* axis name, and a rules table maps logical names to the axes of a
('data', 'fsdp', 'tensor') mesh. The same train step (``embedjax.train.step.make_train_step``, not
modified) then runs data-parallel, FSDP or tensor-parallel by changing the mesh shape or the rules;
XLA's sharding propagation (GSPMD, under *Auto* mesh axes) inserts the all-gathers and
reduce-scatters.

Logical names used for params (activations: 'batch', 'length'):

  embed     the model width H (hidden_size)                  -> 'fsdp' (params split, gathered per use)
  vocab     token-embedding rows                             -> 'tensor'
  heads     the query / attention-output width, heads x head_dim, flattened as the kernels store it
  kv        the key / value projection width, kv_heads x head_dim (GQA: fewer than 'heads'). MaxText
            names the per-head width 'kv'; here the kernels are flat, so 'kv' is the whole k/v width
  mlp       the feed-forward inner width                     -> 'tensor'
  norm      normalisation scales / biases and per-head q/k norms -> replicated (tiny)
  batch     rows of a batch                                   -> ('data', 'fsdp')
  length    sequence positions                                -> replicated

Params get their logical axes from ``PARAM_AXES``: (regex on the '/'-joined path, axes per dim)
rows, first match wins, searched with ``re.search`` so that optimizer-state leaves whose paths end
with a param path (optax's ``.../mu/encoder/layer_0/...``) get the same axes as the param. A LoRA
adapter (``.../<module>/lora_a`` (in, r), ``lora_b`` (r, out)) takes the in / out axis of its
module's kernel and leaves the rank replicated. Leaves no row matches are replicated
(``unmatched`` lists them, so a test can assert that nothing big is).

Rules (``DEFAULT_RULES``) are (logical name, mesh axis | tuple of mesh axes | None) pairs in order
of precedence, with Flax's ``logical_to_mesh_axes`` semantics (a name may appear more than once: a
later rule is a fallback when an earlier one's mesh axes are taken), plus a divisibility fallback:
a rule whose device count does not divide the dimension is skipped, so an odd-sized dimension is
replicated instead of failing (see :func:`logical_to_spec`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from embedjax.config import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor')
# The row axes of a batch: every device of the data and fsdp axes gets its own rows.
BATCH_AXES = ('data', 'fsdp')

# (logical name, mesh axes) pairs; see the module docstring. One table serves every mesh shape:
# a mesh axis of size 1 shards nothing, so fsdp=8 is FSDP, data=4 x tensor=2 is DP + TP.
DEFAULT_RULES = (
    ('batch', ('data', 'fsdp')),
    ('length', None),
    ('embed', 'fsdp'),
    ('vocab', 'tensor'),
    ('heads', 'tensor'),
    ('kv', 'tensor'),
    ('mlp', 'tensor'),
    ('norm', None),
)

# (regex on the '/'-joined path, logical axes of each dim). First match with the leaf's rank wins:
# more specific rows (BERT's attention/output_dense) come before the general ones.
PARAM_AXES = (
    # Decoder (Llama / Mistral / Qwen2 / Qwen3, embedjax.models.decoder).
    (r'(^|/)embed_tokens$', ('vocab', 'embed')),
    (r'self_attn/q_proj/kernel$', ('embed', 'heads')),
    (r'self_attn/q_proj/bias$', ('heads',)),
    (r'self_attn/[kv]_proj/kernel$', ('embed', 'kv')),
    (r'self_attn/[kv]_proj/bias$', ('kv',)),
    (r'self_attn/o_proj/kernel$', ('heads', 'embed')),
    (r'self_attn/o_proj/bias$', ('embed',)),
    (r'self_attn/[qk]_norm/weight$', ('norm',)),
    (r'mlp/(gate|up)_proj/kernel$', ('embed', 'mlp')),
    (r'mlp/(gate|up)_proj/bias$', ('mlp',)),
    (r'mlp/down_proj/kernel$', ('mlp', 'embed')),
    (r'mlp/down_proj/bias$', ('embed',)),
    (r'(^|/)(norm|input_layernorm|post_attention_layernorm)/weight$', ('norm',)),
    # BERT family (embedjax.models.bert).
    (r'(^|/)word_embeddings/embedding$', ('vocab', 'embed')),
    (r'(^|/)(position|token_type)_embeddings/embedding$', (None, 'embed')),
    (r'(^|/)embeddings_project/kernel$', (None, 'embed')),
    (r'(^|/)embeddings_project/bias$', ('embed',)),
    (r'attention/self/(query|key|value)/kernel$', ('embed', 'heads')),
    (r'attention/self/(query|key|value)/bias$', ('heads',)),
    (r'attention/output_dense/kernel$', ('heads', 'embed')),
    (r'attention/output_dense/bias$', ('embed',)),
    (r'(^|/)intermediate_dense/kernel$', ('embed', 'mlp')),
    (r'(^|/)intermediate_dense/bias$', ('mlp',)),
    (r'(^|/)output_dense/kernel$', ('mlp', 'embed')),
    (r'(^|/)output_dense/bias$', ('embed',)),
    (r'LayerNorm/(scale|bias)$', ('norm',)),
    # NV-Embed latent-attention pooling (embedjax.models.latent_attention); before the generic
    # Dense rows because its feed-forward kernels are named net_0 / net_2.
    (r'latent_attention/latents$', (None, 'embed')),
    (r'latent_attention/.*norm(_context)?/(scale|bias)$', ('norm',)),
    (r'latent_attention/cross_attn/to_(q|kv)/kernel$', ('embed', 'heads')),
    (r'latent_attention/cross_attn/to_out/kernel$', ('heads', 'embed')),
    (r'latent_attention/feed_forward/net_0/kernel$', ('embed', 'mlp')),
    (r'latent_attention/feed_forward/net_0/bias$', ('mlp',)),
    (r'latent_attention/feed_forward/net_2/kernel$', ('mlp', 'embed')),
    (r'latent_attention/feed_forward/net_2/bias$', ('embed',)),
    # Dense heads after pooling (embedjax.models.embedder): small, split over their input width.
    (r'(^|/)dense_\d+/kernel$', ('embed', None)),
    (r'(^|/)dense_\d+/bias$', (None,)),
    # The multi-vector projection (H, token_dim) and the SPLADE MLM head (embedjax.train
    # .representation): split over the hidden width; the vocabulary bias over 'vocab'.
    (r'(^|/)head/kernel$', ('embed', None)),
    (r'(^|/)head/dense/kernel$', ('embed', None)),
    (r'(^|/)head/dense/bias$', (None,)),
    (r'(^|/)head/bias$', ('vocab',)),
    # The learned temperature: a scalar, replicated.
    (r'(^|/)logit_scale$', ()),
)

_LORA_LEAF = re.compile(r'^(.*)/lora_([ab])$')

Rules = tuple  # tuple[tuple[str, str | tuple[str, ...] | None], ...]


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axis types over ``devices`` (default: all).

  One size may be -1: the devices left over by the others. The device order is jax's (processes
  in order, then their local devices), reshaped row-major, so 'tensor' varies fastest: with
  several processes, 'data' and 'fsdp' span processes and 'tensor' stays inside one when it
  divides the local device count. Auto axes (not jax's default Explicit ones): explicit axes reject
  ``q @ d.T`` with both operands sharded on the batch axes, which a global-batch loss needs.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(data), int(fsdp), int(tensor)]
  if sizes.count(-1) > 1:
    raise ValueError(f'at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh sizes must be positive (or -1), got data={data} fsdp={fsdp} '
                     f'tensor={tensor}')
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if len(devices) % known:
      raise ValueError(f'{len(devices)} devices do not split into data={data} fsdp={fsdp} '
                       f'tensor={tensor}: {len(devices)} is not a multiple of {known}')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f'mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = '
                     f'{math.prod(sizes)} devices, but there are {len(devices)}')
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def path_str(path) -> str:
  """'/'-joined key path of a pytree leaf (dict keys, attribute names, sequence indices)."""
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def _compiled(table):
  return tuple((re.compile(pattern), tuple(axes)) for pattern, axes in table)


def _lookup(path: str, ndim: int, table) -> tuple | None:
  for pattern, axes in table:
    if len(axes) == ndim and pattern.search(path):
      return axes
  return None


def logical_axes_of(path: str, ndim: int, table=PARAM_AXES) -> tuple | None:
  """Logical axes of the leaf at ``path`` with ``ndim`` dims, or None when no row matches.

  A LoRA leaf ``<module>/lora_a`` (in, r) takes (in axis of ``<module>/kernel``, None),
  ``lora_b`` (r, out) takes (None, out axis).
  """
  table = _compiled(table)
  m = _LORA_LEAF.match(path)
  if m and ndim == 2:
    kernel = _lookup(m.group(1) + '/kernel', 2, table)
    if kernel is None:
      return None
    return (kernel[0], None) if m.group(2) == 'a' else (None, kernel[1])
  return _lookup(path, ndim, table)


def logical_axes(tree, table=PARAM_AXES):
  """A pytree like ``tree`` of ``PartitionSpec``s of logical names (None where unmatched)."""
  def f(path, x):
    axes = logical_axes_of(path_str(path), np.ndim(x), table)
    return None if axes is None else P(*axes)
  return jax.tree_util.tree_map_with_path(f, tree)


def unmatched(tree, table=PARAM_AXES, *, min_size: int = 2) -> list[tuple[str, tuple]]:
  """(path, shape) of leaves with at least ``min_size`` elements that no row of ``table``
  matches (they would be replicated); scalars such as Adam's step count are not listed."""
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shape = tuple(np.shape(x))
    if math.prod(shape) >= min_size and logical_axes_of(path_str(path), len(shape), table) is None:
      out.append((path_str(path), shape))
  return out


def _check_rules(rules) -> Rules:
  out = []
  for i, pair in enumerate(rules):
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], str):
      raise ConfigError(f'sharding rule {i}: expected (logical name, mesh axes), got {pair!r}')
    name, target = pair
    if target is None or target == ():
      target = None
    elif isinstance(target, str):
      pass
    elif isinstance(target, (tuple, list)) and all(isinstance(a, str) for a in target):
      target = tuple(target)
    else:
      raise ConfigError(f'sharding rule {name!r}: mesh axes must be a name, a tuple of names or '
                        f'None, got {target!r}')
    axes = (target,) if isinstance(target, str) else target or ()
    bad = [a for a in axes if a not in MESH_AXES]
    if bad:
      raise ConfigError(f'sharding rule {name!r}: unknown mesh axis {bad[0]!r} (mesh axes: '
                        f'{", ".join(MESH_AXES)})')
    out.append((name, target))
  return tuple(out)


def rules_from_config(c) -> Rules:
  """Rules from a config value: a sequence of (name, axes) pairs (a name may repeat: fallbacks
  in order), or a mapping name -> axes (a ``ConfigDict`` or dict; one target per name). Axes are
  a mesh axis name, a sequence of them, or None; lists (from JSON) become tuples."""
  if hasattr(c, 'to_dict'):
    c = c.to_dict()
  if isinstance(c, Mapping):
    c = list(c.items())
  return _check_rules(c)


def rules_to_config(rules: Rules) -> dict:
  """The mapping form of ``rules`` (for a ``ConfigDict``); fails when a name repeats, which only
  the pair form can express."""
  rules = _check_rules(rules)
  names = [n for n, _ in rules]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ConfigError(f'sharding rules for {dup} repeat (fallbacks): keep them as a tuple of pairs')
  return dict(rules)


def logical_to_spec(axes: Sequence[str | None], rules: Rules, mesh: Mesh,
                    shape: Sequence[int] | None = None) -> P:
  """PartitionSpec of an array whose dims have logical names ``axes`` (None: unnamed).

  Flax's ``logical_to_mesh_axes`` semantics: rules are taken in order of precedence, each
  assigning its mesh axes to the dim of its name if that dim is still unassigned and none of the
  mesh axes is used by another dim (so a mesh axis appears at most once in a spec); a rule with
  None fixes its dim as replicated. Besides Flax (as MaxText needs): a rule whose device count
  does not divide the dim (when ``shape`` is given) is skipped, so the dim falls through to the
  next rule of its name or is replicated instead of failing. Unassigned dims are replicated.
  """
  rules = _check_rules(rules)
  axes = tuple(axes)
  if shape is not None and len(shape) != len(axes):
    raise ValueError(f'{len(axes)} logical axes {axes} for a rank-{len(shape)} shape '
                     f'{tuple(shape)}')
  named = [a for a in axes if a is not None]
  if len(set(named)) != len(named):
    raise ValueError(f'logical axes {axes} name a dim more than once')
  missing = [a for _, t in rules for a in ((t,) if isinstance(t, str) else t or ())
             if a not in mesh.shape]
  if missing:
    raise ValueError(f'sharding rules name mesh axis {missing[0]!r}, which the mesh '
                     f'{dict(mesh.shape)} lacks')
  unassigned = object()
  result: list = [unassigned if a is not None else None for a in axes]
  used: set[str] = set()
  for name, target in rules:
    if name not in named:
      continue
    pos = axes.index(name)
    if result[pos] is not unassigned:
      continue
    if target is None:
      result[pos] = None
      continue
    mesh_axes = (target,) if isinstance(target, str) else target
    if used.intersection(mesh_axes):
      continue
    if shape is not None and shape[pos] % math.prod(mesh.shape[a] for a in mesh_axes):
      continue
    result[pos] = target
    used.update(mesh_axes)
  return P(*(None if r is unassigned else r for r in result))


def param_shardings(tree, mesh: Mesh, rules: Rules = DEFAULT_RULES, table=PARAM_AXES):
  """A pytree like ``tree`` (arrays or ShapeDtypeStructs) of NamedShardings: matched leaves by
  their logical axes and ``rules``, everything else (scalars, unmatched leaves) replicated."""
  rules = _check_rules(rules)

  def f(path, x):
    shape = tuple(np.shape(x))
    axes = logical_axes_of(path_str(path), len(shape), table)
    if axes is None:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, shape))

  return jax.tree_util.tree_map_with_path(f, tree)


def state_shardings(state, mesh: Mesh, rules: Rules = DEFAULT_RULES, table=PARAM_AXES):
  """NamedShardings for a TrainState (or its ``jax.eval_shape``): the step and optimizer scalars
  (Adam's count) replicated, params and their optimizer moments (mu / nu, matched by their path
  suffix) by ``rules``."""
  return param_shardings(state, mesh, rules, table)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows of every batch array (leading dim) over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_state(state, shardings):
  """A copy of ``state`` placed on ``shardings`` (a matching pytree of NamedShardings).

  Always a copy (``may_alias=False``): an array already placed as asked would otherwise come back
  as itself, and :func:`sharded_train_step` donates its state, deleting the caller's original.
  With several processes each must pass the same values (e.g. initialised from the same key);
  :func:`init_sharded` avoids materialising the whole state anywhere.
  """
  return jax.device_put(state, shardings, may_alias=False)


def init_sharded(init_fn: Callable[[], Any], shardings):
  """Runs ``init_fn() -> state`` under jit with ``out_shardings``: every device computes only its
  shards, so a model that does not fit one device is never whole in one place."""
  return jax.jit(init_fn, out_shardings=shardings)()


def sharded_train_step(cfg, tx: optax.GradientTransformation, state_sh, mesh: Mesh) -> Callable:
  """The jitted ``train_step(state, batch, rng) -> (state, metrics)`` of
  ``embedjax.train.step.make_train_step`` on ``mesh``: state on ``state_sh`` (donated), batch rows
  split over ('data', 'fsdp'), the key and the metrics replicated."""
  from embedjax.train.step import (
    make_train_step,  # the step imports models; keep this light
  )
  repl = replicated(mesh)
  return jax.jit(make_train_step(cfg, tx), in_shardings=(state_sh, batch_sharding(mesh), repl),
                 out_shardings=(state_sh, repl), donate_argnums=0)


def global_batch(mesh: Mesh, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  """Each process's rows (global batch / process count, in process order) as global arrays with
  rows over ('data', 'fsdp')."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def bytes_per_device(tree) -> dict[Any, int]:
  """Bytes each addressable device holds of the arrays in ``tree`` (from their shardings: the
  sum of ``addressable_shards`` sizes per device; a replicated array counts on every device)."""
  out: dict[Any, int] = {}
  for x in jax.tree_util.tree_leaves(tree):
    for shard in x.addressable_shards:
      out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
  return out


def abstract_state(state, shardings):
  """ShapeDtypeStructs of ``state`` carrying ``shardings``: an Orbax restore target."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x), sharding=s),
      state, shardings)
