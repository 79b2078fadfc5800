"""SeqPE (embedjax.models.seqpe): digits by hand; the encoder against a float64 torch transcription
of the reference implementation's forward (GPT-2 blocks, causal attention with padded digits
masked, [CLS] last); the contrastive and transfer losses against float64 numpy; positions past the
trained range get vectors (the point of the method)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.models import seqpe

K, WIDTH, HEADS, LAYERS, OUT = 4, 16, 2, 2, 8


def test_digits_by_hand():
  digits, mask = seqpe.position_digits([0, 7, 123, 9999], K)
  assert digits.tolist() == [[0, 0, 0, 0], [0, 0, 0, 7], [0, 1, 2, 3], [9, 9, 9, 9]]
  assert mask.tolist() == [[False, False, False, True], [False, False, False, True],
                           [False, True, True, True], [True, True, True, True]]
  with pytest.raises(ValueError, match='max_digits'):
    seqpe.position_digits([10000], K)
  with pytest.raises(ValueError, match='non-negative'):
    seqpe.position_digits([-1], K)


def test_traced_digits_equal_the_numpy_ones():
  positions = np.array([0, 1, 7, 9, 10, 99, 100, 123, 1000, 9999])
  want = seqpe.position_digits(positions, K)
  got = jax.jit(seqpe.traced_digits, static_argnums=1)(jnp.asarray(positions), K)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(np.asarray(a), b)


@pytest.fixture(scope='module')
def params():
  p = seqpe.init_seqpe(jax.random.key(0), width=WIDTH, heads=HEADS, layers=LAYERS, max_digits=K,
                       out_dim=OUT, std=0.3)  # larger than GPT-2's 0.02 so the blocks matter
  leaves, tree = jax.tree_util.tree_flatten(p)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  # biases and LayerNorms away from their trivial init, so that every parameter is checked
  leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(tree, leaves)


def _torch_reference(p, digits, mask, temperature):
  """The reference's SequentialPE.forward (causal, mask_padding, use_cls_token, no last
  LayerNorm, dropout off) in float64 torch."""
  torch = pytest.importorskip('torch')
  t = lambda a: torch.from_numpy(np.asarray(a, np.float64))
  digits, mask = torch.from_numpy(digits).long(), torch.from_numpy(mask.astype(np.float64))
  n = digits.shape[0]
  x = t(p['digit_embed'])[digits] + t(p['slot_embed'])[torch.arange(K)][None]
  x = torch.cat([x, t(p['cls']).expand(n, 1, WIDTH)], dim=1)
  attn_mask = torch.tril(torch.ones(K + 1, K + 1, dtype=torch.float64))[None]
  attn_mask = attn_mask * torch.cat([mask, torch.ones(n, 1, dtype=torch.float64)], -1)[:, None]
  ln = lambda h, q: torch.nn.functional.layer_norm(h, (WIDTH,), t(q['scale']), t(q['bias']), 1e-5)
  for b in p['blocks']:
    h = ln(x, b['ln_1'])
    q, k, v = (h @ t(b['qkv']['kernel']) + t(b['qkv']['bias'])).split(WIDTH, dim=2)
    heads = lambda z: z.view(n, K + 1, HEADS, WIDTH // HEADS).permute(0, 2, 1, 3)
    w = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(WIDTH // HEADS)
    w = w + torch.finfo(w.dtype).min * (1 - attn_mask.unsqueeze(1))
    a = (torch.softmax(w, -1) @ heads(v)).permute(0, 2, 1, 3).reshape(n, K + 1, WIDTH)
    x = x + a @ t(b['attn_out']['kernel']) + t(b['attn_out']['bias'])
    h = ln(x, b['ln_2'])
    g = h @ t(b['mlp_in']['kernel']) + t(b['mlp_in']['bias'])
    g = 0.5 * g * (1 + torch.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3)))
    x = x + g @ t(b['mlp_out']['kernel']) + t(b['mlp_out']['bias'])
  return ((x[:, -1] @ t(p['out']['kernel']) + t(p['out']['bias'])) / temperature).numpy()


def test_encoder_equals_the_reference_forward(params):
  # 3000 and 12345 lie past a 2,048-token training range: they get vectors all the same
  positions = [0, 5, 42, 511, 2047, 3000, 9876]
  digits, mask = seqpe.position_digits(positions, K)
  got = jax.jit(lambda p, d, m: seqpe.encode_positions(p, d, m, heads=HEADS, temperature=0.5))(
      params, jnp.asarray(digits), jnp.asarray(mask))
  want = _torch_reference(params, digits, mask, 0.5)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
  assert np.abs(want[0] - want[1]).max() > 1e-3  # different positions, different vectors


def test_contrastive_loss_equals_numpy():
  rng = np.random.default_rng(0)
  pivot, cands = rng.normal(size=(3, OUT)), rng.normal(size=(3, 5, OUT))
  labels = seqpe.nearest_labels([10, 200, 7], [[0, 9, 30, 12, 50], [100, 300, 198, 202, 0],
                                               [7, 7, 1, 2, 3]])
  assert labels.tolist() == [1, 2, 0]  # |10-9| = 1; |200-198| = |200-202|: the lower index
  logits = np.einsum('bd,bnd->bn', pivot, cands) * 2.0
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  want = -logp[np.arange(3), labels].mean()
  got = seqpe.contrastive_loss(jnp.asarray(pivot, jnp.float32), jnp.asarray(cands, jnp.float32),
                               jnp.asarray(labels), logit_scale=2.0)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_transfer_loss_equals_numpy_and_holds_the_in_range_side_fixed():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(2, 4, OUT)), rng.normal(size=(2, 4, OUT))

  def logsm(x):
    s = x @ x.transpose(0, 2, 1)
    return s - np.log(np.exp(s).sum(-1, keepdims=True))
  la, lb = logsm(a), logsm(b)
  want = np.mean(np.exp(la) * (la - lb)) + np.mean(np.exp(lb) * (lb - la))
  got = seqpe.transfer_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  ga = jax.grad(lambda x: seqpe.transfer_loss(x, jnp.asarray(b, jnp.float32)))(
      jnp.asarray(a, jnp.float32))
  assert float(jnp.abs(ga).max()) == 0.0  # the in-range distribution is a fixed target
  assert float(seqpe.transfer_loss(jnp.asarray(a), jnp.asarray(a))) == pytest.approx(0, abs=1e-6)
