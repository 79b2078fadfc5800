"""Elastic depth: train every layer of the backbone to embed, alone or with Matryoshka dimensions.

``adaptive_layer(loss_fn)`` is sentence-transformers' ``AdaptiveLayerLoss`` and
``matryoshka_2d(loss_fn, dims)`` its ``Matryoshka2dLoss`` (2DMSE: ``AdaptiveLayerLoss`` over a
``MatryoshkaLoss``), as pure functions of per-layer embeddings ``(L, B, D)`` such as
``embedjax.models.layerwise.embed_layers`` returns (L = num_hidden_layers + 1 hidden states: the
embedding output first, the last layer last). With P = L - 1 prior states and S the prior states
used in a step (all P, or a random sample of ``n_layers_per_step`` of them), the loss is

  last_layer_weight * loss(last)
  + sum_{i in S} loss(i) * w(i) / |S| * prior_layers_weight
  + sum_{i in S} KL(softmax(last / T) || softmax(e_i / T)) * T * kl_div_weight

where ``w`` is the layer weighting ('uniform' 1, 'log' 1 / (1 + ln(1 + i)), 'linear' 1 / (1 + i),
or a function of the state index i), the KL ("batchmean") is summed over the embedding dimensions
and averaged over every embedded row (queries, documents and hard negatives together), the
teacher ``softmax(last / T)`` is held constant (no gradient), and T = ``kl_temperature`` (0 turns
the KL term off). The KL is on the full embeddings even under Matryoshka truncation, as in
sentence-transformers. Layer (and dimension) sampling draws from an explicit PRNG key; the number
of sampled layers is static, so the wrapped loss jits once.

References: Li et al. 2024, "2D Matryoshka Sentence Embeddings" (arXiv 2402.14776); Kusupati et
al. 2022, "Matryoshka Representation Learning"; sentence-transformers' adaptive_layer.py and
matryoshka_2d.py (v6).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp

from embedjax.losses.matryoshka import matryoshka, truncate_and_renormalize

LAYER_WEIGHTINGS = ('uniform', 'log', 'linear')


def layer_weight(layer_weighting: str | Callable[[int], float], layer: int) -> float:
  """The weight of prior state ``layer`` (0 = embedding output) under a layer weighting.

  >>> [round(layer_weight(w, 2), 4) for w in ('uniform', 'log', 'linear')]
  [1.0, 0.4765, 0.3333]
  """
  if callable(layer_weighting):
    return float(layer_weighting(layer))
  if layer_weighting == 'log':
    return 1.0 / (1.0 + math.log(1 + layer))
  if layer_weighting == 'linear':
    return 1.0 / (1 + layer)
  if layer_weighting == 'uniform':
    return 1.0
  raise ValueError(f'layer_weighting must be one of {LAYER_WEIGHTINGS} or a callable, '
                   f'got {layer_weighting!r}')


def _rows(q: jax.Array, d: jax.Array, hard_negatives: jax.Array | None) -> jax.Array:
  """Every embedded row of a step: (B, D), (B, D), (B, H, D) -> (2B + BH, D)."""
  parts = [q, d]
  if hard_negatives is not None:
    parts.append(hard_negatives.reshape(-1, q.shape[-1]))
  return jnp.concatenate(parts, axis=0).astype(jnp.float32)


def _kl_batchmean(student: jax.Array, teacher_probs: jax.Array, temperature: float) -> jax.Array:
  """``torch.nn.functional.kl_div(log_softmax(student / T), teacher, reduction='batchmean')``.

  student: (N, D) embeddings; teacher_probs: (N, D) probabilities. Returns the scalar
  sum(teacher * (log teacher - log_softmax(student / T))) / N (0 log 0 = 0, as torch).
  """
  log_p = jax.nn.log_softmax(student / temperature, axis=-1)
  pointwise = jax.scipy.special.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_p
  return jnp.sum(pointwise) / student.shape[0]


def _check_options(n_layers_per_step: int, kl_temperature: float, layer_weighting) -> None:
  if not isinstance(n_layers_per_step, int):
    raise TypeError(f'n_layers_per_step must be an int, got {n_layers_per_step!r}')
  if kl_temperature < 0:
    raise ValueError(f'kl_temperature must be >= 0 (0 turns the KL term off), got {kl_temperature}')
  if not callable(layer_weighting) and layer_weighting not in LAYER_WEIGHTINGS:
    raise ValueError(f'layer_weighting must be one of {LAYER_WEIGHTINGS} or a callable, '
                     f'got {layer_weighting!r}')


def _adaptive(loss_fn: Callable, *, n_layers_per_step: int, last_layer_weight: float,
              prior_layers_weight: float, kl_div_weight: float, kl_temperature: float,
              layer_weighting, keyed: bool) -> Callable:
  """adaptive_layer; ``keyed``: loss_fn samples too and takes its own ``key=`` on every call."""
  _check_options(n_layers_per_step, kl_temperature, layer_weighting)

  def wrapped(q_layers, d_layers, *, key=None, hard_negatives_layers=None, **kwargs):
    chex.assert_rank([q_layers, d_layers], 3)
    chex.assert_equal_shape([q_layers, d_layers])
    n_states, b, dim = q_layers.shape
    negatives = hard_negatives_layers
    if negatives is not None:
      chex.assert_rank(negatives, 4)
      chex.assert_shape(negatives, (n_states, b, None, dim))
    n_prior = n_states - 1
    # As sentence-transformers: sample only for 0 < n < P; any other value uses every prior state.
    sample = 0 < n_layers_per_step < n_prior
    n_used = n_layers_per_step if sample else n_prior
    if (sample or keyed) and key is None:
      raise ValueError('this loss samples layers or dimensions: pass key=<a jax PRNG key> '
                       '(or n_layers_per_step=-1 / n_dims_per_step=-1 to use all of them)')
    weights = [layer_weight(layer_weighting, i) for i in range(n_prior)]
    if sample:
      layer_key, inner_key = jax.random.split(key)
      chosen = jax.random.choice(layer_key, n_prior, (n_used,), replace=False)
      # The used states, the last one last: (n_used + 1, B, D).
      states = jnp.concatenate([chosen, jnp.full((1,), n_prior, chosen.dtype)])
      q_layers, d_layers = q_layers[states], d_layers[states]
      negatives = None if negatives is None else negatives[states]
      used_weights = jnp.asarray(weights, jnp.float32)[chosen]
    else:
      inner_key = key
      used_weights = weights

    # One loss_fn program vmapped over the used states (their number is static): the compiled
    # loss does not grow with depth. A keyed loss_fn gets a fresh key per state, as
    # sentence-transformers re-samples the Matryoshka dims at every layer.
    def one_state(q, d, negatives, state_key):
      extra = {'key': state_key} if keyed else {}
      # Hard negatives only when there are some: losses on scored pairs (CoSENT) take none.
      if negatives is not None:
        extra['hard_negatives'] = negatives
      return loss_fn(q, d, **extra, **kwargs)

    state_keys = jax.random.split(inner_key, n_used + 1) if keyed else None
    losses, state_metrics = jax.vmap(one_state, in_axes=(0, 0, None if negatives is None else 0,
                                                         0 if keyed else None))(
        q_layers, d_layers, negatives, state_keys)
    metrics = dict(jax.tree_util.tree_map(lambda v: v[-1], state_metrics))   # the last layer's

    total = losses[-1] * last_layer_weight
    prior_total = jnp.zeros((), jnp.float32)
    kl_total = jnp.zeros((), jnp.float32)
    use_kl = kl_temperature > 0 and n_used > 0
    if use_kl:
      rows = jax.vmap(_rows, in_axes=(0, 0, None if negatives is None else 0))(
          q_layers, d_layers, negatives)                           # (n_used + 1, N, D)
      # The last layer is the self-distillation teacher: no gradient through it (ST #3757).
      teacher = jax.lax.stop_gradient(jax.nn.softmax(rows[-1] / kl_temperature, axis=-1))
      kls = jax.vmap(_kl_batchmean, in_axes=(0, None, None))(rows[:-1], teacher, kl_temperature)
    for slot in range(n_used):
      # Term by term in sentence-transformers' order (loss * w / n * prior, then the KL).
      term = losses[slot] * used_weights[slot] / n_used * prior_layers_weight
      total = total + term
      prior_total = prior_total + term
      if not sample:
        metrics[f'loss@layer{slot}'] = losses[slot]
      if use_kl:
        kl_term = kls[slot] * kl_temperature * kl_div_weight
        total = total + kl_term
        kl_total = kl_total + kl_term
    metrics.update(loss=total, last_layer_loss=losses[-1], prior_layers_loss=prior_total,
                   kl_div_loss=kl_total)
    return total, metrics

  return wrapped


def adaptive_layer(loss_fn: Callable, *, n_layers_per_step: int = 1, last_layer_weight: float = 1.0,
                   prior_layers_weight: float = 1.0, kl_div_weight: float = 1.0,
                   kl_temperature: float = 0.3,
                   layer_weighting: str | Callable[[int], float] = 'uniform',
                   keyed_loss: bool = False) -> Callable:
  """Wraps ``loss_fn(q, d, *, hard_negatives=None, **kw) -> (loss, metrics)`` over every layer.

  The wrapped loss is ``f(q_layers, d_layers, *, key=None, hard_negatives_layers=None, **kw)``
  with q_layers, d_layers (L, B, D) per-layer embeddings (the last layer last),
  hard_negatives_layers (L, B, H, D), ``key`` a PRNG key (needed when layers are sampled) and
  ``**kw`` passed to loss_fn. It returns (loss, metrics): loss_fn's metrics of the last layer,
  ``loss`` (the total, see the module docstring), ``last_layer_loss`` (unweighted),
  ``prior_layers_loss`` and ``kl_div_loss`` (their weighted parts of the total) and, when every
  layer is used, ``loss@layer{i}`` (unweighted) for each prior state i. loss_fn is traced once
  and vmapped over the used states (any JAX-traceable loss can be), so the compiled program does
  not grow with the depth of the model.

  Args:
    n_layers_per_step: prior states (all but the last) sampled per step, without replacement;
      -1 (any value <= 0, or >= L - 1) uses all of them, deterministically. The last layer is
      always used. The 2DMSE paper and sentence-transformers' default is 1.
    last_layer_weight, prior_layers_weight, kl_div_weight: weights of the three parts.
    kl_temperature: T of the distillation term (0: no KL term).
    layer_weighting: 'uniform' (default), 'log' (1 / (1 + ln(1 + i)), the ESE paper), 'linear'
      (1 / (1 + i), sentence-transformers' behaviour before it had this option), or a function
      of the state index i (0 = the embedding output), evaluated on Python ints at trace time.
    keyed_loss: loss_fn draws random numbers itself and takes ``key=`` (e.g. a
      ``losses.mixing.mix_hard_negatives`` loss): each used state gets its own key, split from
      ``key`` (which is then required).

  The KL term averages over every embedded row: per-query ``weights`` passed to loss_fn (padding
  rows) do not reach it.

  Example: three states where only the embedding output (state 0) mismatches two positives;
  with every state used, uniform weights and no KL, the loss is that state's InfoNCE loss
  (2/3 * 20, see ``info_nce``) over the two prior states.

  >>> from embedjax.losses.contrastive import info_nce
  >>> q = jnp.stack([jnp.eye(3)] * 3)
  >>> d = q.at[0].set(jnp.eye(3)[jnp.array([1, 0, 2])])
  >>> loss_fn = jax.jit(adaptive_layer(info_nce, n_layers_per_step=-1, kl_temperature=0.0))
  >>> loss, metrics = loss_fn(q, d)
  >>> round(float(loss), 2), round(float(metrics['loss@layer0']), 2)
  (6.67, 13.33)

  With one sampled prior state per step (a key is then required) the prior part is that
  state's loss: 13.33 when state 0 is drawn, ~0 when state 1 is.

  >>> sampled = jax.jit(adaptive_layer(info_nce, kl_temperature=0.0))
  >>> sorted({round(float(sampled(q, d, key=jax.random.key(s))[0]), 2) for s in range(8)})
  [0.0, 13.33]
  """
  return _adaptive(loss_fn, n_layers_per_step=n_layers_per_step,
                   last_layer_weight=last_layer_weight, prior_layers_weight=prior_layers_weight,
                   kl_div_weight=kl_div_weight, kl_temperature=kl_temperature,
                   layer_weighting=layer_weighting, keyed=keyed_loss)


def _sampled_matryoshka(loss_fn: Callable, dims: Sequence[int], weights: Sequence[float] | None,
                        n_dims_per_step: int, keyed_loss: bool = False) -> Callable:
  """matryoshka() over ``n_dims_per_step`` dims drawn per call from ``key`` (sentence-transformers'
  MatryoshkaLoss with 0 < n_dims_per_step < len(dims)).

  Every dim's loss is computed and the undrawn ones are multiplied by 0: adaptive_layer vmaps
  this over layers with a key each, where a data-dependent branch would run every branch anyway,
  and at Matryoshka widths the loss costs little next to the encoder.
  """
  weights = [1.0] * len(dims) if weights is None else list(weights)
  pairs = sorted(zip((int(x) for x in dims), weights), reverse=True)

  def wrapped(q, d, *, key, hard_negatives=None, **kwargs):
    if keyed_loss:
      # The dim draw keeps the whole key when loss_fn draws nothing (the earlier behaviour).
      key, loss_key = jax.random.split(key)
      kwargs = dict(kwargs, key=loss_key)
    # Sorted indices = the drawn dims largest first, sentence-transformers' order.
    chosen = jnp.sort(jax.random.choice(key, len(pairs), (n_dims_per_step,), replace=False))
    drawn = jnp.zeros((len(pairs),), jnp.float32).at[chosen].set(1.0)
    cut = lambda x, dim: None if x is None else truncate_and_renormalize(x, dim)
    total = 0.0
    all_metrics = []
    for k, (dim, weight) in enumerate(pairs):
      negatives = {} if hard_negatives is None else {'hard_negatives': cut(hard_negatives, dim)}
      loss, m = loss_fn(cut(q, dim), cut(d, dim), **negatives, **kwargs)
      total = total + drawn[k] * (weight * loss)
      all_metrics.append(m)
    # Plain metrics: the largest drawn dim's.
    metrics = jax.tree_util.tree_map(lambda *v: jnp.stack(v)[chosen[0]], *all_metrics)
    metrics['loss'] = total
    return total, metrics

  return wrapped


def matryoshka_2d(loss_fn: Callable, dims: Sequence[int], *, weights: Sequence[float] | None = None,
                  n_layers_per_step: int = 1, n_dims_per_step: int = 1,
                  last_layer_weight: float = 1.0, prior_layers_weight: float = 1.0,
                  kl_div_weight: float = 1.0, kl_temperature: float = 0.3,
                  layer_weighting: str | Callable[[int], float] = 'uniform',
                  keyed_loss: bool = False) -> Callable:
  """2D Matryoshka (2DMSE): ``adaptive_layer`` over ``matryoshka(loss_fn, dims, weights)``.

  sentence-transformers' ``Matryoshka2dLoss``, defaults included: one sampled prior layer and one
  sampled Matryoshka dim per loss call (a fresh draw for every layer), so a ``key`` is needed
  unless both ``n_layers_per_step`` and ``n_dims_per_step`` are -1 (all). The wrapped loss has
  ``adaptive_layer``'s signature; its plain metrics are the last layer's Matryoshka metrics (with
  every dim used: ``{name}@{dim}`` for each dim; with sampled dims: the largest drawn dim's).
  The KL term compares the full, untruncated embeddings.

  Args:
    dims, weights: the Matryoshka dimensions and their weights (default 1 each).
    n_dims_per_step: dims drawn per loss call, without replacement; -1 (any value <= 0, or
      >= len(dims)) uses every dim.
    keyed_loss: loss_fn takes its own ``key=`` (as ``adaptive_layer``); with every dim used, the
      dims of one state share that key.
    The rest: as ``adaptive_layer``.

  Example: three states of two 4-dim rows where state 0 swaps the positives. At each dim (4
  and 2) its InfoNCE loss is log(1 + exp(20)) ~ 20, so the Matryoshka loss of state 0 is 40,
  halved over the two prior states; the other states cost ~0.

  >>> from embedjax.losses.contrastive import info_nce
  >>> q = jnp.stack([jnp.eye(2, 4)] * 3)
  >>> d = q.at[0].set(jnp.eye(2, 4)[::-1])
  >>> loss_fn = jax.jit(matryoshka_2d(info_nce, (4, 2), n_layers_per_step=-1, n_dims_per_step=-1,
  ...                                 kl_temperature=0.0))
  >>> loss, metrics = loss_fn(q, d)
  >>> per_dim = [k for k in sorted(metrics) if k.startswith('loss@') and '@layer' not in k]
  >>> round(float(loss), 2), per_dim
  (20.0, ['loss@2', 'loss@4'])
  """
  if not dims or any(int(x) <= 0 for x in dims):
    raise ValueError(f'matryoshka dims must be positive, got {dims}')
  if weights is not None and len(weights) != len(dims):
    raise ValueError(f'{len(weights)} weights for {len(dims)} matryoshka dims')
  if not isinstance(n_dims_per_step, int):
    raise TypeError(f'n_dims_per_step must be an int, got {n_dims_per_step!r}')
  sample_dims = 0 < n_dims_per_step < len(dims)
  if sample_dims:
    inner = _sampled_matryoshka(loss_fn, dims, weights, n_dims_per_step, keyed_loss)
  else:
    inner = matryoshka(loss_fn, dims, weights)
  return _adaptive(inner, n_layers_per_step=n_layers_per_step,
                   last_layer_weight=last_layer_weight, prior_layers_weight=prior_layers_weight,
                   kl_div_weight=kl_div_weight, kl_temperature=kl_temperature,
                   layer_weighting=layer_weighting, keyed=sample_dims or keyed_loss)
