"""AutoDim (Zhao et al., WWW 2021): per-field embedding widths searched by architecture weights.

1. **Search** (:func:`supernet`): every field f has one table per candidate width d_k
   (``choices``) and a (d_k, D) projection (none at d_k = D); its vector is
   ``sum_k w_fk * table_fk[id] @ proj_fk`` with ``w_f = softmax(alpha_f)`` -- Gumbel-softmax
   (temperature ``tau``) while training, plain softmax otherwise. The paper updates alpha on
   validation batches and the tables on training batches (bi-level); here both are trained
   jointly on the training batches (first-order, one level), a common simplification.
2. **Choose** (:func:`choose_dims`): each field takes its candidate of largest alpha; over a byte
   budget, the field whose step down to its next smaller candidate gives up the least alpha is
   stepped down until the widths fit, then any field that can move to a candidate of larger alpha
   within the budget does (the paper has no budget; the benchmark needs one).
3. **Retrain**: a fresh ``mixed_dim`` table with the chosen widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from embedjax.tables import base, mixed_dim


def default_choices(dim: int) -> tuple[int, ...]:
  """Powers of two up to D, and D: e.g. 16 -> (1, 2, 4, 8, 16) (width 1 lets small budgets fit)."""
  return tuple(sorted({2 ** i for i in range(int(np.log2(dim)) + 1)} | {dim}))


def supernet(vocab_sizes: Sequence[int], dim: int, *, choices: Sequence[int] | None = None,
             tau: float = 1.0, init_std: float = 0.01) -> base.Table:
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  choices = tuple(int(c) for c in (choices or default_choices(dim)))
  if min(choices) < 1 or max(choices) > dim:
    raise ValueError(f'choices {choices} must be in [1, {dim}]')
  nf, nk = len(vocab_sizes), len(choices)

  def init(key):
    keys = jax.random.split(key, 2 * nf * nk)
    params = {'alpha': jnp.zeros((nf, nk), jnp.float32)}
    for f, n in enumerate(vocab_sizes):
      for k, d in enumerate(choices):
        i = 2 * (f * nk + k)
        params[f'table{f}_{k}'] = base.normal_init(keys[i], (n, d), init_std)
        if d < dim:
          params[f'proj{f}_{k}'] = base.normal_init(keys[i + 1], (d, dim), 1.0 / np.sqrt(d))
    return params

  def weights(alpha, key):
    if key is None:
      return jax.nn.softmax(alpha, axis=-1)
    gumbel = jax.random.gumbel(key, alpha.shape)
    return jax.nn.softmax((alpha + gumbel) / tau, axis=-1)

  def lookup(params, ids, key=None):
    base.check_ids(ids, vocab_sizes)
    w = weights(params['alpha'], key)  # (F, K)
    cols = []
    for f in range(nf):
      out = 0.0
      for k, d in enumerate(choices):
        e = jnp.take(params[f'table{f}_{k}'], ids[:, f], axis=0)
        out = out + w[f, k] * (e @ params[f'proj{f}_{k}'] if d < dim else e)
      cols.append(out)
    return jnp.stack(cols, axis=1)

  return base.Table('autodim', vocab_sizes, dim, init, lookup,
                    config={'choices': list(choices), 'tau': tau, 'init_std': init_std})


def choose_dims(alpha: np.ndarray, choices: Sequence[int], vocab_sizes: Sequence[int], dim: int,
                budget_bytes: int) -> list[int] | None:
  """Per-field widths: argmax alpha, stepped down by least alpha given up until the
  ``mixed_dim`` table fits ``budget_bytes``; None when the smallest widths do not fit."""
  alpha = np.asarray(alpha, np.float64)
  order = np.argsort(choices)
  choices = np.asarray(choices)[order]
  alpha = alpha[:, order]
  pick = np.argmax(alpha, axis=1)
  size = lambda p: mixed_dim.mixed_dim_bytes(vocab_sizes, dim, [int(choices[k]) for k in p])
  while size(pick) > budget_bytes:
    lower = [(alpha[f, pick[f]] - alpha[f, :pick[f]].max(), f) for f in range(len(pick)) if pick[f] > 0]
    if not lower:
      return None
    _, f = min(lower)  # the smallest loss of alpha; ties to the lower field
    pick[f] = int(np.argmax(alpha[f, :pick[f]]))  # the best of the smaller widths
  # Stepping down may have freed room: move any field to a candidate of larger alpha that fits,
  # so that no single field can still gain alpha within the budget.
  changed = True
  while changed:
    changed = False
    for f in range(len(pick)):
      for k in np.argsort(-alpha[f], kind='stable'):
        if alpha[f, k] <= alpha[f, pick[f]]:
          break
        trial = pick.copy()
        trial[f] = k
        if size(trial) <= budget_bytes:
          pick, changed = trial, True
          break
  return [int(choices[k]) for k in pick]


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, **kw) -> base.Table:
  """Stage 1 (the supernet); the budget is met when the widths are chosen."""
  table = supernet(vocab_sizes, dim, **kw)
  smallest = [min(table.config['choices'])] * len(table.vocab_sizes)
  if mixed_dim.mixed_dim_bytes(vocab_sizes, dim, smallest) > budget_bytes:
    raise base.Infeasible(f'width {smallest[0]} for every field exceeds {budget_bytes} bytes')
  return base.Table(table.name, table.vocab_sizes, table.dim, table.init, table.lookup,
                    config={**table.config, 'budget_bytes': int(budget_bytes)})
