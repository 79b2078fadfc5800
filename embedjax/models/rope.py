"""Rotary positions and their scaling methods for longer inputs, as transformers' ``rope_scaling``.

``rope_type`` (the HF field, read from and written to config.json):
  default   inv_freq_i = theta^(-2i/d)
  linear    position interpolation (Chen et al. 2023): every frequency divided by ``factor``
  dynamic   dynamic NTK: when the input is longer than ``max_position_embeddings`` (L), theta
            becomes theta * (factor * n / L - (factor - 1))^(d / (d - 2)) for an input of n tokens;
            at n <= L nothing changes (transformers' _compute_dynamic_ntk_parameters)
  yarn      YaRN (Peng et al. 2023): frequencies interpolated by ``factor`` below a wavelength band,
            kept above it, a linear ramp in between (beta_fast / beta_slow rotations over
            ``original_max_position_embeddings``), and cos / sin scaled by the attention factor
            0.1 ln(factor) + 1 (or ``attention_factor``; DeepSeek's mscale pair)
  llama3    Llama 3.1: low frequencies divided by ``factor``, high ones kept, a smooth ramp between
            the two wavelength bounds
Static NTK-aware scaling (bloc97) needs no type of its own: it is the default rotary table with
theta * factor^(d / (d - 2)) (:func:`ntk_aware_theta`), which every reader of HF configs accepts.

The n of dynamic NTK is the longest text of the batch (its largest position + 1); transformers
takes the padded length of its batch, which is the same when the longest row has no padding.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ('default', 'linear', 'dynamic', 'yarn', 'llama3')


def ntk_aware_theta(theta: float, factor: float, head_dim: int) -> float:
  """Static NTK-aware scaling: the rotary base that stretches the context by ``factor``."""
  return float(theta) * float(factor) ** (head_dim / (head_dim - 2))


def _default(theta: float, d: int) -> np.ndarray:
  return 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)


def _yarn(theta: float, d: int, rope: dict, max_positions: int) -> tuple[np.ndarray, float]:
  factor = rope.get('factor')
  original = float(rope['original_max_position_embeddings'])
  if factor is None:
    factor = max_positions / original
  factor = float(factor)

  def mscale(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

  attention = rope.get('attention_factor')
  if attention is None:
    m, m_all = rope.get('mscale'), rope.get('mscale_all_dim')
    attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
  beta_fast, beta_slow = rope.get('beta_fast') or 32, rope.get('beta_slow') or 1

  def correction_dim(rotations):  # the dimension whose wavelength fits ``rotations`` times
    return d * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

  low, high = correction_dim(beta_fast), correction_dim(beta_slow)
  if rope.get('truncate', True):
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, d - 1)
  if low == high:
    high += 0.001
  ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0, 1)
  extrapolate = 1 - ramp  # 1: keep the frequency, 0: interpolate it
  inv = _default(theta, d)
  return inv / factor * (1 - extrapolate) + inv * extrapolate, float(attention)


def _llama3(inv: np.ndarray, rope: dict) -> np.ndarray:
  factor, low, high = float(rope['factor']), float(rope['low_freq_factor']), float(
      rope['high_freq_factor'])
  old = float(rope['original_max_position_embeddings'])
  wavelen = 2 * math.pi / inv
  smooth = (old / wavelen - low) / (high - low)
  scaled = np.where(wavelen > old / low, inv / factor, inv)
  medium = (wavelen <= old / low) & (wavelen >= old / high)
  return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def rope_frequencies(theta: float, head_dim: int, rope_scaling: tuple | dict = (),
                     max_positions: int = 0) -> tuple[np.ndarray, float]:
  """(inverse frequencies (head_dim / 2,) float64, cos / sin scaling) of a static rotary table.

  For 'dynamic' this is the table of inputs up to ``max_positions`` (the default one);
  :func:`dynamic_frequencies` gives it for longer inputs.
  """
  rope = dict(rope_scaling)
  kind = rope.get('rope_type', 'default')
  if kind not in ROPE_TYPES:
    raise ValueError(f'rope_scaling type {kind!r} is not supported (supported: '
                     f'{", ".join(ROPE_TYPES)})')
  inv = _default(theta, head_dim)
  if kind == 'linear':
    return inv / float(rope['factor']), 1.0
  if kind == 'llama3':
    return _llama3(inv, rope), 1.0
  if kind == 'yarn':
    return _yarn(theta, head_dim, rope, max_positions)
  return inv, 1.0


def dynamic_frequencies(theta: float, head_dim: int, factor: float, max_positions: int,
                        length: jax.Array) -> jax.Array:
  """Dynamic NTK's inverse frequencies (head_dim / 2,) float32 for an input of ``length`` tokens
  (a traced scalar): the default table up to ``max_positions``, a larger base beyond."""
  n = jnp.maximum(length.astype(jnp.float32), float(max_positions))
  base = theta * (factor * n / max_positions - (factor - 1)) ** (head_dim / (head_dim - 2))
  return 1.0 / base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq, scaling: float = 1.0) -> jax.Array:
  """Rotates (B, L, heads, D) by (B, L) positions, transformers' rotate_half convention.

  cos / sin are computed in float32, multiplied by ``scaling`` (YaRN's attention factor) and cast
  to x's dtype, as transformers does.
  """
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]   # (B, L, 1, D)
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  if scaling != 1.0:
    cos, sin = cos * scaling, sin * scaling
  cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin
