"""Linear-probe classification on frozen embeddings: L2-regularised logistic regression in JAX.

Objective (the one sklearn's ``LogisticRegression(C=1 / (l2 * n))`` with lbfgs minimises, scaled by
1/n):

  mean_i CE(softmax(x_i W + b), y_i) + l2 / 2 * |W|_F^2,   bias not penalised.

With more than two classes W is (D, C) (multinomial, one column per class); with two classes it is
(D, 1) and the logits are (0, x w + b), i.e. plain binary logistic regression, as sklearn does (a
two-column softmax would have a different penalty and so a different optimum).

Solved full-batch with ``optax.lbfgs`` (zoom line search) inside one ``lax.while_loop`` until the
gradient norm is below ``tol`` or ``max_iter`` steps. Features are centred internally with the
train mean: this only moves the unpenalised bias, so the optimum is the same, but the problem is
much better conditioned for float32. Optional standardisation (``standardize=True``) does change
the problem: the model is then fitted to (x - mean) / std.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class LogisticParams:
  """A fitted probe; logits = ((x - mean) / scale) @ weights + bias (binary: (0, that)).

  Attributes:
    weights: (D, C) float32, or (D, 1) for two classes.
    bias: (C,) or (1,) float32.
    mean: (D,) feature offset applied before the weights (zeros unless standardising).
    scale: (D,) feature scale (ones unless standardising).
    classes: (C,) the original labels, in the order of the probability columns.
    num_iter: L-BFGS steps taken.
    grad_norm: gradient norm at the returned point.
  """
  weights: jax.Array
  bias: jax.Array
  mean: jax.Array
  scale: jax.Array
  classes: np.ndarray
  num_iter: int
  grad_norm: float


def _full_logits(x: jax.Array, weights: jax.Array, bias: jax.Array) -> jax.Array:
  """(N, C) logits; the binary model's single column becomes (0, z)."""
  z = jnp.dot(x, weights, precision=jax.lax.Precision.HIGHEST) + bias
  if weights.shape[1] == 1:
    z = jnp.concatenate([jnp.zeros_like(z), z], axis=1)
  return z


@functools.partial(jax.jit, static_argnames=('num_outputs', 'max_iter'))
def _fit(x: jax.Array, y: jax.Array, l2: jax.Array, tol: jax.Array, num_outputs: int,
         max_iter: int):
  """L-BFGS on the mean cross-entropy + l2/2 |W|^2; x (N, D) centred, y (N,) int32 class indices."""
  d = x.shape[1]

  def objective(params):
    logits = _full_logits(x, params['w'], params['b'])
    nll = jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(nll) + 0.5 * l2 * jnp.sum(params['w'] ** 2)

  params = {'w': jnp.zeros((d, num_outputs), x.dtype), 'b': jnp.zeros((num_outputs,), x.dtype)}
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                   value_fn=objective)
    return optax.apply_updates(params, updates), state

  def keep_going(carry):
    _, state = carry
    count = optax.tree_utils.tree_get(state, 'count')
    grad = optax.tree_utils.tree_get(state, 'grad')
    return (count == 0) | ((count < max_iter) & (optax.tree_utils.tree_norm(grad) >= tol))

  params, state = jax.lax.while_loop(keep_going, step, (params, solver.init(params)))
  grad_norm = optax.tree_utils.tree_norm(jax.grad(objective)(params))
  return params, optax.tree_utils.tree_get(state, 'count'), grad_norm


def fit_logistic(x, y, *, l2: float | None = None, max_iter: int = 1000, tol: float = 1e-6,
                 standardize: bool = False) -> LogisticParams:
  """Fits the probe.

  Args:
    x: (N, D) train features (numpy or jax).
    y: (N,) train labels (any sortable values; at least two distinct).
    l2: penalty on the weights; None gives 1 / N, i.e. sklearn's default C = 1 (what MTEB uses).
    max_iter: L-BFGS step limit.
    tol: stop when the gradient norm of the objective falls below this.
    standardize: fit on (x - mean) / std of the train features (zero std -> 1).

  Returns:
    LogisticParams.
  """
  x = jnp.asarray(x, jnp.float32)
  chex.assert_rank(x, 2)
  y = np.asarray(y)
  chex.assert_rank(y, 1)
  if y.shape[0] != x.shape[0]:
    raise ValueError(f'{y.shape[0]} labels for {x.shape[0]} rows')
  classes, y_idx = np.unique(y, return_inverse=True)
  if len(classes) < 2:
    raise ValueError('need at least two classes')
  n = x.shape[0]
  l2 = 1.0 / n if l2 is None else float(l2)
  mean = jnp.mean(x, axis=0)
  if standardize:
    std = jnp.std(x, axis=0)
    scale = jnp.where(std > 0, std, 1.0)
  else:
    scale = jnp.ones_like(mean)
  centred = (x - mean) / scale
  num_outputs = 1 if len(classes) == 2 else len(classes)
  params, count, grad_norm = _fit(centred, jnp.asarray(y_idx, jnp.int32), jnp.float32(l2),
                                  jnp.float32(tol), num_outputs=num_outputs, max_iter=max_iter)
  if standardize:
    # Keep the standardised form: weights act on (x - mean) / scale.
    weights, bias = params['w'], params['b']
  else:
    # Fold the centring into the bias, so the weights act on raw x (mean 0, scale 1).
    weights = params['w']
    bias = params['b'] - jnp.dot(mean, weights, precision=jax.lax.Precision.HIGHEST)
    mean = jnp.zeros_like(mean)
  return LogisticParams(weights=weights, bias=bias, mean=mean, scale=scale, classes=classes,
                        num_iter=int(count), grad_norm=float(grad_norm))


def predict_proba(params: LogisticParams, x) -> jax.Array:
  """(N, C) class probabilities, columns in ``params.classes`` order."""
  x = jnp.asarray(x, jnp.float32)
  chex.assert_rank(x, 2)
  return jax.nn.softmax(_full_logits((x - params.mean) / params.scale, params.weights,
                                     params.bias), axis=1)


def predict(params: LogisticParams, x) -> np.ndarray:
  """(N,) predicted labels (values from ``params.classes``)."""
  return params.classes[np.asarray(jnp.argmax(predict_proba(params, x), axis=1))]


def f1_macro(y_true, y_pred) -> float:
  """Unweighted mean of per-label F1 over labels in either vector (sklearn ``average='macro'``)."""
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  labels, idx = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
  t, p = idx[:len(y_true)], idx[len(y_true):]
  c = len(labels)
  tp = np.bincount(t[t == p], minlength=c).astype(np.float64)
  # F1 = 2tp / (2tp + fp + fn) = 2tp / (#true + #predicted); every label here occurs somewhere.
  support = np.bincount(t, minlength=c) + np.bincount(p, minlength=c)
  return float(np.mean(2 * tp / support))


def logistic_probe(train_x, train_y, test_x, test_y, *, l2: float | None = None,
                   max_iter: int = 1000, tol: float = 1e-6, standardize: bool = False
                   ) -> tuple[dict[str, float], LogisticParams]:
  """Fits on train, scores on test.

  Args:
    train_x: (N, D), train_y: (N,), test_x: (M, D), test_y: (M,); labels of any sortable type.
    l2, max_iter, tol, standardize: see ``fit_logistic``.

  Returns:
    ({'accuracy', 'f1_macro'}, fitted LogisticParams).
  """
  params = fit_logistic(train_x, train_y, l2=l2, max_iter=max_iter, tol=tol,
                        standardize=standardize)
  test_y = np.asarray(test_y)
  pred = predict(params, test_x)
  return {'accuracy': float(np.mean(pred == test_y)), 'f1_macro': f1_macro(test_y, pred)}, params
