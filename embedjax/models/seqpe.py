"""SeqPE: a learned position encoder that reads a position as a sequence of digits.

SeqPE (Li et al., 2025, "SeqPE: Transformer with Sequential Position Encoding") replaces a table
of learned absolute positions, which has no row beyond the trained length, with a small
transformer over the position's decimal digits: position 123 with 5 digits is the sequence
``0 0 1 2 3`` (left padding, the pad digits masked), each digit embedded (10 digit embeddings plus
one embedding per digit slot), a [CLS] vector appended last, ``layers`` pre-LayerNorm GPT-2
blocks with causal attention (the reference's default), and the [CLS] output projected to the
model width and divided by a temperature. Any position with at most ``max_digits`` digits gets a
vector, so the encoder extrapolates by construction; two regularisers shape how:

- ``contrastive_loss``: for a pivot position and candidate positions, the candidate nearest the
  pivot must score highest under the dot product of their encodings (cross-entropy), so that the
  geometry of the encodings follows the distance between positions;
- ``transfer_loss``: the softmax of the dot products among positions in the trained range and the
  same among positions moved beyond it are made to agree (a symmetric KL, the in-range side held
  fixed), so that positions past the trained length behave like the ones the model has seen.

Pure functions over a params pytree; shapes in the docstrings. Tests: tests/models/test_seqpe.py
(the encoder against a float64 torch transcription of the reference's forward, the digits and both
losses against hand computations and numpy).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np


def position_digits(positions, max_digits: int) -> tuple[np.ndarray, np.ndarray]:
  """(N,) non-negative ints -> ((N, max_digits) int32 digits, left-padded with 0; (N, max_digits)
  bool mask, False on the padding). A position with more digits than ``max_digits`` is an error."""
  positions = np.asarray(positions, np.int64)
  if positions.ndim != 1 or (positions < 0).any():
    raise ValueError('positions must be a 1-d array of non-negative integers')
  if positions.size and positions.max() >= 10 ** max_digits:
    raise ValueError(f'position {int(positions.max())} has more than max_digits={max_digits} '
                     'digits')
  powers = 10 ** np.arange(max_digits - 1, -1, -1, dtype=np.int64)
  digits = (positions[:, None] // powers[None, :]) % 10
  length = np.maximum(np.floor(np.log10(np.maximum(positions, 1))).astype(np.int64) + 1, 1)
  mask = np.arange(max_digits)[None, :] >= (max_digits - length)[:, None]
  return digits.astype(np.int32), mask


def traced_digits(positions: jax.Array, max_digits: int) -> tuple[jax.Array, jax.Array]:
  """:func:`position_digits` inside a traced computation: (N,) int positions -> ((N, max_digits)
  int32 digits, (N, max_digits) bool mask). No check of the digit count: a caller bounds its
  positions (the decoder's ``max_positions`` is ``10 ** max_digits``)."""
  flat = positions.astype(jnp.int32)
  powers = 10 ** jnp.arange(max_digits - 1, -1, -1, dtype=jnp.int32)
  digits = (flat[:, None] // powers[None, :]) % 10
  length = jnp.maximum(jnp.sum(flat[:, None] >= powers[None, :], axis=1), 1)
  return digits, jnp.arange(max_digits)[None, :] >= (max_digits - length)[:, None]


def init_seqpe(key: jax.Array, *, width: int, heads: int, layers: int, max_digits: int,
               out_dim: int, std: float = 0.02) -> dict:
  """The encoder's parameters (GPT-2's init: N(0, std) matrices and embeddings, zero biases,
  unit LayerNorm)."""
  if width % heads:
    raise ValueError(f'width {width} must be divisible by heads {heads}')
  keys = iter(jax.random.split(key, 4 + 4 * layers))
  normal = lambda shape: std * jax.random.normal(next(keys), shape, jnp.float32)
  ln = lambda: {'scale': jnp.ones((width,), jnp.float32), 'bias': jnp.zeros((width,), jnp.float32)}
  dense = lambda i, o: {'kernel': normal((i, o)), 'bias': jnp.zeros((o,), jnp.float32)}
  return {'digit_embed': normal((10, width)), 'slot_embed': normal((max_digits, width)),
          'cls': normal((width,)),
          'blocks': [{'ln_1': ln(), 'qkv': dense(width, 3 * width), 'attn_out': dense(width, width),
                      'ln_2': ln(), 'mlp_in': dense(width, 4 * width),
                      'mlp_out': dense(4 * width, width)} for _ in range(layers)],
          'out': dense(width, out_dim)}


def _layer_norm(x, p, eps=1e-5):
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * p['scale'] + p['bias']


def _gelu_new(x):  # GPT-2's tanh approximation
  return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def encode_positions(params: dict, digits: jax.Array, mask: jax.Array, *, heads: int,
                     temperature: float = 1.0) -> jax.Array:
  """(N, max_digits) digits and mask -> (N, out_dim) position vectors.

  Causal attention over ``digits + [CLS]`` with padded digits masked as keys; the [CLS] output
  (last) through LayerNorm-free ``out`` divided by ``temperature``.
  """
  chex.assert_rank([digits, mask], 2)
  n, k = digits.shape
  x = params['digit_embed'][digits] + params['slot_embed'][None, :k]
  x = jnp.concatenate([x, jnp.broadcast_to(params['cls'], (n, 1, x.shape[-1]))], axis=1)
  keys_ok = jnp.concatenate([mask.astype(bool), jnp.ones((n, 1), bool)], axis=1)  # (N, k + 1)
  allowed = jnp.tril(jnp.ones((k + 1, k + 1), bool))[None] & keys_ok[:, None, :]
  width = x.shape[-1]
  head = width // heads
  for b in params['blocks']:
    h = _layer_norm(x, b['ln_1'])
    q, kk, v = jnp.split(h @ b['qkv']['kernel'] + b['qkv']['bias'], 3, axis=-1)
    split = lambda t: t.reshape(n, k + 1, heads, head).transpose(0, 2, 1, 3)
    scores = split(q) @ split(kk).transpose(0, 1, 3, 2) / math.sqrt(head)
    # the reference adds finfo.min to masked scores: a row whose keys are all masked (a leading
    # pad slot under causal attention) then averages every key uniformly, as here
    scores = jnp.where(allowed[:, None], scores, scores + jnp.finfo(scores.dtype).min)
    attn = jax.nn.softmax(scores, axis=-1) @ split(v)
    x = x + attn.transpose(0, 2, 1, 3).reshape(n, k + 1, width) @ b['attn_out']['kernel'] \
        + b['attn_out']['bias']
    h = _layer_norm(x, b['ln_2'])
    x = x + _gelu_new(h @ b['mlp_in']['kernel'] + b['mlp_in']['bias']) @ b['mlp_out']['kernel'] \
        + b['mlp_out']['bias']
  return (x[:, -1] @ params['out']['kernel'] + params['out']['bias']) / temperature


def contrastive_loss(pivot: jax.Array, candidates: jax.Array, labels: jax.Array,
                     logit_scale: float = 1.0) -> jax.Array:
  """Cross-entropy of each pivot's nearest candidate among its candidates.

  Args:
    pivot: (B, D) encodings of pivot positions.
    candidates: (B, N, D) encodings of each pivot's candidate positions.
    labels: (B,) index of the candidate nearest the pivot (by |position difference|).
  """
  logits = jnp.einsum('bd,bnd->bn', pivot, candidates) * logit_scale
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], 1))


def transfer_loss(in_range: jax.Array, moved: jax.Array, logit_scale: float = 1.0) -> jax.Array:
  """Symmetric KL between the similarity distributions of positions in the trained range and of
  the same positions moved beyond it; the in-range side is a fixed target (no gradient).

  Args:
    in_range: (B, T, D) encodings of T positions in the trained range per group.
    moved: (B, T, D) encodings of the same T positions shifted past the trained length.
  Returns:
    ``mean(KL(p_in || p_moved)) + mean(KL(p_moved || p_in))`` over the (B, T, T) entries, as
    torch's ``kl_div`` with its default 'mean' reduction (which averages elementwise).
  """
  log_in = jax.lax.stop_gradient(
      jax.nn.log_softmax(in_range @ in_range.transpose(0, 2, 1) * logit_scale, -1))
  log_moved = jax.nn.log_softmax(moved @ moved.transpose(0, 2, 1) * logit_scale, -1)
  kl = lambda log_target, log_input: jnp.mean(jnp.exp(log_target) * (log_target - log_input))
  return kl(log_in, log_moved) + kl(log_moved, log_in)


def nearest_labels(pivots, candidates) -> np.ndarray:
  """(B,) index of the candidate nearest each pivot (ties: the lower index): ``pivots`` (B,),
  ``candidates`` (B, N) positions."""
  return np.argmin(np.abs(np.asarray(candidates) - np.asarray(pivots)[:, None]), axis=1)
