"""Per-layer rematerialisation (``jax.checkpoint``) for the transformer backbones.

A policy names what a layer keeps for the backward pass; everything else is recomputed:

  'none'            keep everything (no remat): fastest, the most activation memory
  'full'            keep nothing but each layer's input (``nothing_saveable``): about one extra
                    forward per step, activation memory of one layer plus the layer inputs
  'dots'            keep every matmul result (``dots_saveable``): recompute only elementwise work
  'dots_no_batch'   keep matmul results without batch dimensions (weights-only products;
                    ``dots_with_no_batch_dims_saveable``), MaxText's 'minimal' policy

Selected per model config (``remat`` field of BertConfig / DecoderConfig, ``model.remat`` in a
training config); the parameters and results are the same under every policy.

Why a scan: with the layers unrolled in one program, XLA's CPU scheduler hoists the recomputation
next to the forward pass and keeps its results alive, so per-layer ``jax.checkpoint`` saved no
memory there (measured: equal or larger temporaries). Under ``lax.scan`` each iteration's residuals
are what the loop stores, and remat then works on every backend. So with a policy other than
'none', :func:`apply_layers` stacks the per-layer params (one copy of the layer weights, made per
forward), scans one checkpointed layer over them, and the params pytree keeps its per-layer
(Hugging Face-like) names. Dropout inside the scan draws each layer's key from one split of the
module's 'dropout' stream, so with dropout on the random masks differ from the unrolled run (the
distribution is the same); without dropout the results are equal up to float reordering.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_saveable,
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_policy(name: str) -> None:
  if name not in REMAT_POLICIES:
    raise ValueError(f'remat {name!r} is not one of {tuple(REMAT_POLICIES)}')


def apply_layers(parent: nn.Module, make_layer: Callable[..., nn.Module], count: int,
                 name: Callable[[int], str], x: jax.Array, args: tuple, *, policy: str,
                 dropout: bool = False, keep_states: bool = False):
  """Runs ``count`` layers ``make_layer(name=name(i))(x, *args)`` on ``x`` inside ``parent``.

  'none' (and initialisation) runs them unrolled as ordinary submodules. Any other policy scans one
  checkpointed layer over the stacked per-layer params (module docstring). ``args`` are the layers'
  other inputs (arrays and static Python values alike, closed over); ``dropout``: draw a per-layer
  key from the parent's 'dropout' stream. Returns the output, and with ``keep_states`` the tuple of
  every layer's output too.
  """
  check_policy(policy)
  if policy == 'none' or parent.is_initializing():
    states = []
    for i in range(count):
      x = make_layer(name=name(i))(x, *args)
      states.append(x)
    return (x, tuple(states)) if keep_states else x
  params = parent.variables['params']
  stacked = jax.tree_util.tree_map(lambda *ps: jnp.stack(ps), *[params[name(i)]
                                                               for i in range(count)])
  keys = jax.random.split(parent.make_rng('dropout'), count) if dropout else None

  def body(h, slice_):
    layer_params, key = slice_
    rngs = {'dropout': key} if key is not None else None
    out = make_layer(parent=None).apply({'params': layer_params}, h, *args, rngs=rngs)
    return out, out if keep_states else None

  # prevent_cse=False: inside a scan the loop already keeps XLA from merging the recomputation.
  body = jax.checkpoint(body, policy=REMAT_POLICIES[policy], prevent_cse=False)
  x, ys = jax.lax.scan(body, x, (stacked, keys))
  if keep_states:
    return x, tuple(ys[i] for i in range(count))
  return x
