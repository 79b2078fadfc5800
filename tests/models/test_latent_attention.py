"""NV-Embed latent-attention pooling vs a float64 numpy reference (and torch, by NV-Embed names)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.models.latent_attention import (
  init_latent_attention,
  latent_attention_pool,
  latent_attention_pool_segments,
  params_from_nvembed,
  params_to_nvembed,
)
from embedjax.models.prompts import (
  instruction_pool_mask,
  instruction_pool_mask_segments,
)

# H != d != h * dh, so a swapped dimension or norm cannot go unnoticed.
H, D_LATENT, R, HEADS, HEAD_DIM, MULT = 16, 12, 6, 4, 5, 2

# Compiled once per input shape (eager op-by-op dispatch is what makes small JAX tests slow).
_pool = jax.jit(latent_attention_pool, static_argnames=('num_heads', 'compute_dtype', 'normalize'))
_pool_segments = jax.jit(latent_attention_pool_segments,
                         static_argnames=('num_segments', 'num_heads', 'compute_dtype'))


@pytest.fixture(scope='module')
def params():
  init = functools.partial(init_latent_attention, hidden_size=H, num_latents=R, num_heads=HEADS,
                           head_dim=HEAD_DIM, mlp_ratio=MULT, latent_dim=D_LATENT)
  base = jax.jit(init)(jax.random.key(0))
  # Perturb every leaf (LayerNorm scales / biases start at 1 / 0) so each one matters.
  rng = np.random.default_rng(1)
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(np.asarray(x) + 0.3 * rng.normal(size=x.shape), jnp.float32), base)


def _inputs(seed=0, b=4, l=9):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(b, l, H)).astype(np.float32) * 2.0
  mask = np.ones((b, l), np.int32)
  mask[1, 6:] = 0          # right padding
  mask[2, :4] = 0          # left padding
  mask[3, :2] = 0          # an instruction left out of pooling, and right padding
  mask[3, 7:] = 0
  return hidden, mask


# ---------------------------------------------------------------- float64 numpy reference

def _np_layer_norm(x, scale, bias, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


_erf = np.vectorize(math.erf)


def _np_gelu(x):
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _reference(p, hidden, mask, num_heads):
  """NV-Embed's LatentAttentionModel forward, float64, one token and one head at a time."""
  p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), p)
  a, f = p['cross_attn'], p['feed_forward']
  hidden = hidden.astype(np.float64)
  b, l, _ = hidden.shape
  wq, wkv, wo = a['to_q']['kernel'], a['to_kv']['kernel'], a['to_out']['kernel']
  inner = wq.shape[1]
  dh = inner // num_heads
  ctx = _np_layer_norm(p['latents'], a['norm_context']['scale'], a['norm_context']['bias'])
  keys, values = ctx @ wkv[:, :inner], ctx @ wkv[:, inner:]
  out = np.zeros((b, l, hidden.shape[-1]))
  for i in range(b):
    for t in range(l):
      x = hidden[i, t]
      q = _np_layer_norm(x, a['norm']['scale'], a['norm']['bias']) @ wq
      heads = []
      for j in range(num_heads):
        sl = slice(j * dh, (j + 1) * dh)
        s = keys[:, sl] @ q[sl] / math.sqrt(dh)
        w = np.exp(s - s.max())
        heads.append((w / w.sum()) @ values[:, sl])
      y = np.concatenate(heads) @ wo + x
      z = _np_layer_norm(y, f['norm']['scale'], f['norm']['bias']) @ f['net_0']['kernel']
      z = z + f['net_0']['bias']
      half = z.shape[0] // 2
      z = (z[:half] * _np_gelu(z[half:])) @ f['net_2']['kernel'] + f['net_2']['bias']
      out[i, t] = z + y
  m = mask.astype(np.float64)[..., None]
  return (out * m).sum(1) / m.sum(1)


def test_matches_float64_numpy_reference(params):
  hidden, mask = _inputs()
  ours = _pool(params, hidden, mask, num_heads=HEADS)
  assert ours.dtype == jnp.float32 and ours.shape == (4, H)
  ref = _reference(params, hidden, mask, HEADS)
  assert np.abs(np.asarray(ours, np.float64) - ref).max() <= 1e-5
  # Normalised output is the reference's output_normalize.
  normed = _pool(params, hidden, mask, num_heads=HEADS, normalize=True)
  np.testing.assert_allclose(normed, ref / np.linalg.norm(ref, axis=-1, keepdims=True), atol=1e-6)


def test_default_shapes():
  # The defaults: dh = H / h, d = H, m = 4 (shapes only: no compilation needed).
  p = jax.eval_shape(lambda k: init_latent_attention(k, 8, num_latents=5, num_heads=2),
                     jax.random.key(3))
  shapes = jax.tree_util.tree_map(lambda x: x.shape, p)
  assert shapes['latents'] == (5, 8)
  assert shapes['cross_attn']['to_q']['kernel'] == (8, 8)
  assert shapes['cross_attn']['to_kv']['kernel'] == (8, 16)
  assert shapes['feed_forward']['net_0']['kernel'] == (8, 64)
  assert shapes['feed_forward']['net_2']['kernel'] == (32, 8)
  with pytest.raises(ValueError, match='head_dim'):
    init_latent_attention(jax.random.key(3), 10, num_heads=4)


def test_masked_tokens_do_not_matter(params):
  hidden, mask = _inputs(seed=1)
  before = _pool(params, hidden, mask, num_heads=HEADS)
  changed = hidden.copy()
  changed[mask == 0] = np.random.default_rng(7).normal(size=(int((mask == 0).sum()), H)) * 50
  after = _pool(params, changed, mask, num_heads=HEADS)
  np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
  # ...while an unmasked token does matter (the check above could not pass vacuously).
  changed[0, 0] += 1.0
  moved = _pool(params, changed, mask, num_heads=HEADS)
  assert np.abs(np.asarray(moved[0]) - np.asarray(before[0])).max() > 1e-3


def test_packed_equals_padded(params):
  rng = np.random.default_rng(2)
  lengths = [3, 4, 2]
  texts = [rng.normal(size=(n, H)).astype(np.float32) for n in lengths]
  instr = np.array([1, 0, 2])
  # Padded: one text per row, right-padded to 5.
  padded = np.zeros((3, 5, H), np.float32)
  mask = np.zeros((3, 5), np.int32)
  for i, t in enumerate(texts):
    padded[i, :len(t)] = t
    mask[i, :len(t)] = 1
  # Packed: all three in one row of 10 (last slot padding), plus an empty 4th segment slot.
  packed = np.zeros((1, 10, H), np.float32)
  packed[0, :9] = np.concatenate(texts)
  seg = np.array([[1, 1, 1, 2, 2, 2, 2, 3, 3, 0]], np.int32)
  pool_fn = functools.partial(_pool, params, num_heads=HEADS)
  seg_fn = functools.partial(_pool_segments, params, num_heads=HEADS)

  out = seg_fn(packed, seg, num_segments=4)
  assert out.shape == (1, 4, H)
  np.testing.assert_allclose(out[0, :3], pool_fn(padded, mask), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out[0, 3]), 0.0)
  # With instructions left out of pooling, per text.
  seg_pool = instruction_pool_mask_segments(seg, np.array([[1, 0, 2, 0]]))
  out = seg_fn(packed, seg, pool_mask=seg_pool, num_segments=4)
  np.testing.assert_allclose(out[0, :3], pool_fn(padded, instruction_pool_mask(mask, instr)),
                             atol=1e-5)


def test_jit_equals_eager(params):
  hidden, mask = _inputs(seed=4)
  eager = latent_attention_pool(params, hidden, mask, num_heads=HEADS)
  jitted = jax.jit(functools.partial(latent_attention_pool, num_heads=HEADS))(params, hidden, mask)
  np.testing.assert_allclose(jitted, eager, atol=1e-6)


def test_gradients_finite_and_nonzero(params):
  hidden, mask = _inputs(seed=5)
  target = jax.random.normal(jax.random.key(9), (4, H))

  def loss(p):
    return jnp.sum((latent_attention_pool(p, hidden, mask, num_heads=HEADS) - target) ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
    assert np.abs(g).max() > 0, path
  assert np.abs(grads['latents']).max() > 1e-6


def test_bfloat16_input(params):
  hidden, mask = _inputs(seed=6)
  bf16 = jnp.asarray(hidden, jnp.bfloat16)
  out = _pool(params, bf16, mask, num_heads=HEADS)
  assert out.dtype == jnp.float32
  # Default compute is float32: a bfloat16 input is the float32 computation of its values.
  np.testing.assert_allclose(
      out, _pool(params, bf16.astype(jnp.float32), mask, num_heads=HEADS),
      atol=1e-6)
  # bfloat16 compute (and bfloat16 params) stays close to float32.
  p16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  low = _pool(p16, bf16, mask, num_heads=HEADS, compute_dtype=jnp.bfloat16)
  assert low.dtype == jnp.float32 and np.all(np.isfinite(low))
  ref = _reference(p16, np.asarray(bf16.astype(jnp.float32)), mask, HEADS)
  assert np.abs(np.asarray(low, np.float64) - ref).max() <= 0.05 * np.abs(ref).max()


def test_nvembed_names_round_trip_and_match_torch(params):
  state = params_to_nvembed(params)
  assert state['latent_attention_model.cross_attend_blocks.0.fn.to_kv.weight'].shape == (
      2 * HEADS * HEAD_DIM, D_LATENT)
  back = params_from_nvembed(state)
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.tree_util.tree_map(np.asarray, params),
                         back)
  with pytest.raises(KeyError, match='latents'):
    params_from_nvembed({k: v for k, v in state.items() if not k.endswith('latents')})

  torch = pytest.importorskip('torch')
  nn = torch.nn

  class Block(nn.Module):
    def __init__(self, norm, fn, norm_context=None):
      super().__init__()
      self.norm, self.fn = norm, fn
      if norm_context is not None:
        self.norm_context = norm_context

  class Net(nn.Module):
    def __init__(self, **layers):
      super().__init__()
      for name, layer in layers.items():
        setattr(self, name, layer)

  # The NV-Embed module tree by name (state-dict keys as the published checkpoint's).
  inner = HEADS * HEAD_DIM
  model = nn.Module()
  model.latents = nn.Parameter(torch.zeros(R, D_LATENT))
  model.cross_attend_blocks = nn.ModuleList([
      Block(nn.LayerNorm(H), Net(to_q=nn.Linear(H, inner, bias=False),
                                 to_kv=nn.Linear(D_LATENT, 2 * inner, bias=False),
                                 to_out=nn.Linear(inner, H, bias=False)), nn.LayerNorm(D_LATENT)),
      Block(nn.LayerNorm(H), Net(net=nn.Sequential(nn.Linear(H, 2 * MULT * H), nn.Identity(),
                                                   nn.Linear(MULT * H, H)))),
  ])
  model = model.double()
  prefix = 'latent_attention_model.'
  model.load_state_dict({k[len(prefix):]: torch.from_numpy(np.asarray(v, np.float64))
                         for k, v in state.items()}, strict=True)

  hidden, mask = _inputs(seed=8)
  with torch.no_grad():
    x = torch.from_numpy(hidden.astype(np.float64))
    attn, ff = model.cross_attend_blocks
    q = attn.fn.to_q(attn.norm(x))
    k, v = attn.fn.to_kv(attn.norm_context(model.latents)).chunk(2, dim=-1)
    split = lambda t: t.reshape(*t.shape[:-1], HEADS, HEAD_DIM).transpose(-2, -3)
    o = torch.nn.functional.scaled_dot_product_attention(split(q), split(k)[None],
                                                         split(v)[None])
    x = attn.fn.to_out(o.transpose(1, 2).reshape(*x.shape[:2], inner)) + x
    y, gates = ff.fn.net[0](ff.norm(x)).chunk(2, dim=-1)
    x = ff.fn.net[2](y * torch.nn.functional.gelu(gates)) + x
    m = torch.from_numpy(mask.astype(np.float64))[..., None]
    ref = ((x * m).sum(1) / m.sum(1)).numpy()
  ours = _pool(back, hidden, mask, num_heads=HEADS)
  assert np.abs(np.asarray(ours, np.float64) - ref).max() <= 1e-5
