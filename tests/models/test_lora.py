"""LoRA over params pytrees: identity at B = 0, frozen base, merged == activation path, dropout on
the LoRA branch's input, and parity with peft (forward, gradients and merge) on a tiny BertModel."""

from __future__ import annotations

import copy
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from embedjax.models.bert import BertConfig, BertEncoder
from embedjax.models.lora import (LoraConfig, apply_lora, init_lora, lora_labels, lora_loss,
                                  lora_param_count, lora_scope, lora_targets, merge_lora)
from embedjax.models.pretrained import init_params, load_pretrained, params_to_hf
from tiny_models import save_bert_with_tokenizer

SMALL = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                   intermediate_size=64, max_position_embeddings=40)
QV = LoraConfig(rank=4, alpha=8.0, target=r'.*/(query|value)')


def _batch(rng, b=3, l=9, vocab=97):
  ids = rng.integers(1, vocab, size=(b, l)).astype(np.int32)
  mask = np.ones((b, l), np.int32)
  mask[1, 6:] = 0
  mask[2, 2:] = 0
  ids[mask == 0] = 0
  return ids, mask


def _perturb_b(lora, key, std=0.1):
  """Nonzero B everywhere (a fresh adapter has B = 0, which would hide most mistakes)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(lora)
  keys = jax.random.split(key, len(leaves))
  out = [v + std * jax.random.normal(k, v.shape) if jax.tree_util.keystr(p).endswith("'lora_b']")
         else v for (p, v), k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, out)


@pytest.fixture(scope='module')
def small():
  params = jax.jit(init_params, static_argnums=0)(SMALL, jax.random.key(0))
  lora = _perturb_b(init_lora(jax.random.key(1), params, QV), jax.random.key(2))
  ids, mask = _batch(np.random.default_rng(0))
  return params, lora, ids, mask


def _encode(params, ids, mask, key=None, *, deterministic=True):
  """SMALL's hidden states; ``key`` feeds the 'dropout' stream (model and/or LoRA dropout)."""
  rngs = None if key is None else {'dropout': key}
  return BertEncoder(SMALL).apply({'params': params}, ids, mask, deterministic=deterministic,
                                  rngs=rngs)


@functools.partial(jax.jit, static_argnames=('cfg', 'lora_deterministic', 'deterministic'))
def _encode_lora(params, lora, ids, mask, key=None, *, cfg, lora_deterministic=True,
                 deterministic=True):
  """_encode under lora_scope, jitted (the scope is opened inside the traced function)."""
  with lora_scope(lora, cfg, deterministic=lora_deterministic):
    return _encode(params, ids, mask, key, deterministic=deterministic)


_encode_jit = jax.jit(_encode, static_argnames=('deterministic',))


# --- structure, init, config -----------------------------------------------------------------

def test_targets_structure_and_count(small):
  params, lora, _, _ = small
  want = [('layer_0', 'attention', 'self', m) for m in ('query', 'value')]
  assert lora_targets(params, QV) == want
  # peft's list form selects the same modules.
  assert lora_targets(params, LoraConfig.for_modules(['query', 'value'])) == want
  assert set(lora) == {'layer_0'}
  q = lora['layer_0']['attention']['self']['query']
  assert set(q) == {'lora_a', 'lora_b'}
  assert q['lora_a'].shape == (32, 4) and q['lora_b'].shape == (4, 32)
  assert lora_param_count(lora) == 2 * 4 * (32 + 32)
  assert QV.scale == 2.0 and LoraConfig(rank=4, alpha=8.0, use_rslora=True).scale == 4.0


def test_init_matches_peft_default_bound(small):
  torch = pytest.importorskip('torch')
  params = small[0]
  cfg = LoraConfig(rank=16, target=r'.*/(query|key)')   # (32, 32) kernels: fan-in 32
  lora = init_lora(jax.random.key(3), params, cfg)
  # peft: kaiming_uniform_(lora_A.weight (r, in), a=sqrt(5)) -> bound gain * sqrt(3 / fan_in).
  bound = torch.nn.init.calculate_gain('leaky_relu', math.sqrt(5)) * math.sqrt(3 / 32)
  adapters = lora['layer_0']['attention']['self']
  for module in ('query', 'key'):
    a, b = np.asarray(adapters[module]['lora_a']), np.asarray(adapters[module]['lora_b'])
    assert a.shape == (32, 16) and b.shape == (16, 32)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound
    assert abs(a.var() - bound ** 2 / 3) < 0.2 * bound ** 2 / 3   # uniform's variance
    np.testing.assert_array_equal(b, 0.0)
  assert not np.allclose(adapters['query']['lora_a'], adapters['key']['lora_a'])  # own keys


def test_bad_config_and_no_match_raise(small):
  with pytest.raises(ValueError, match='rank'):
    LoraConfig(rank=0)
  with pytest.raises(ValueError, match='dropout'):
    LoraConfig(dropout=1.0)
  with pytest.raises(ValueError, match='regex'):
    LoraConfig(target='(query')
  with pytest.raises(ValueError, match='matches no 2-D kernel'):
    init_lora(jax.random.key(0), small[0], LoraConfig(target=r'.*/q_proj'))


# --- forward: identity at B = 0, merged == unmerged --------------------------------------------

def test_fresh_adapter_is_the_base_model_exactly(small):
  params, _, ids, mask = small
  fresh = init_lora(jax.random.key(5), params, QV)
  base = np.asarray(_encode_jit(params, ids, mask))
  np.testing.assert_array_equal(_encode_jit(apply_lora(params, fresh, QV), ids, mask), base)
  np.testing.assert_array_equal(_encode_lora(params, fresh, ids, mask, cfg=QV), base)


def test_merged_equals_unmerged(small):
  params, lora, ids, mask = small
  merged = np.asarray(_encode_jit(apply_lora(params, lora, QV), ids, mask))
  unmerged = np.asarray(_encode_lora(params, lora, ids, mask, cfg=QV))
  np.testing.assert_allclose(unmerged, merged, atol=1e-6)
  assert np.abs(merged - np.asarray(_encode_jit(params, ids, mask))).max() > 1e-2  # adapter acts


def test_merge_lora_keeps_base_dtype(small):
  params, lora, _, _ = small
  half = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  merged = merge_lora(half, lora, QV)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(merged))
  w = np.asarray(half['layer_0']['attention']['self']['value']['kernel'], np.float64)
  ab = lora['layer_0']['attention']['self']['value']
  want = w + 2.0 * np.asarray(ab['lora_a'], np.float64) @ np.asarray(ab['lora_b'], np.float64)
  got = np.asarray(merged['layer_0']['attention']['self']['value']['kernel'], np.float64)
  np.testing.assert_allclose(got, want, rtol=2 ** -7)  # one bf16 rounding
  np.testing.assert_array_equal(merged['layer_0']['attention']['self']['key']['kernel'],
                                half['layer_0']['attention']['self']['key']['kernel'])
  full = merge_lora(params, lora, QV)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7),
                         full, apply_lora(params, lora, QV))


def test_adapter_paths_must_match_the_model(small):
  params, lora, ids, mask = small
  nested = {'encoder': lora}  # adapter built over {'encoder': params}, applied to the encoder alone
  with pytest.raises(RuntimeError, match='never called'):
    _encode_lora(params, nested, ids, mask, cfg=QV)
  with pytest.raises(KeyError, match='no kernel'):
    apply_lora(params, nested, QV)


# --- freezing and gradients --------------------------------------------------------------------

def _loss(params, ids, mask, r):
  return jnp.sum(_encode(params, ids, mask) * r * mask[..., None])


# (lora grads, base grads) through the merged path, and lora grads through the activation path.
_grads_merged = jax.jit(jax.grad(lora_loss(_loss, QV, path='merged'), argnums=(0, 1)))
_grads_activations = jax.jit(jax.grad(lora_loss(_loss, QV, path='activations')))


def test_only_adapter_params_get_gradients(small):
  params, lora, ids, mask = small
  r = jax.random.normal(jax.random.key(7), (*ids.shape, 32))
  merged_grads, base_grads = _grads_merged(lora, params, ids, mask, r)
  assert jax.tree_util.tree_structure(merged_grads) == jax.tree_util.tree_structure(lora)
  for g in jax.tree_util.tree_leaves(merged_grads):
    assert np.count_nonzero(g) > 0.9 * g.size
  # The base is frozen even when the caller asks for its gradient.
  assert all(not np.any(g) for g in jax.tree_util.tree_leaves(base_grads))
  # Two independent formulations of the same derivative.
  act_grads = _grads_activations(lora, params, ids, mask, r)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         act_grads, merged_grads)
  # At B = 0 only B moves first: dL/dA = dL/dW' B^T = 0, dL/dB = s A^T dL/dW' != 0.
  fresh = init_lora(jax.random.key(5), params, QV)
  q = _grads_merged(fresh, params, ids, mask, r)[0]['layer_0']['attention']['self']['query']
  assert not np.any(q['lora_a']) and np.abs(q['lora_b']).max() > 0


def test_optax_labels_freeze_the_base(small):
  params, lora, ids, mask = small
  joint = {'base': params, 'lora': lora}
  labels = lora_labels(joint)
  assert set(jax.tree_util.tree_leaves(labels['lora'])) == {'lora'}
  assert set(jax.tree_util.tree_leaves(labels['base'])) == {'frozen'}
  tx = optax.multi_transform({'lora': optax.adamw(1e-2), 'frozen': optax.set_to_zero()}, labels)
  r = jax.random.normal(jax.random.key(7), (*ids.shape, 32))

  @jax.jit
  def step(joint):
    # A joint tree differentiated whole: the labels, not stop_gradient, keep the base fixed.
    grads = jax.grad(lambda j: _loss(apply_lora(j['base'], j['lora'], QV), ids, mask, r))(joint)
    updates, _ = tx.update(grads, tx.init(joint), joint)
    return optax.apply_updates(joint, updates)
  new = step(joint)
  jax.tree_util.tree_map(np.testing.assert_array_equal, new['base'], params)
  assert not np.allclose(new['lora']['layer_0']['attention']['self']['value']['lora_a'],
                         lora['layer_0']['attention']['self']['value']['lora_a'])


# --- dropout ----------------------------------------------------------------------------------

DROP = LoraConfig(rank=4, alpha=8.0, dropout=0.1, target=QV.target)


def test_dropout_is_off_when_deterministic_and_keyed_when_training(small):
  params, lora, ids, mask = small
  no_dropout = np.asarray(_encode_lora(params, lora, ids, mask, cfg=QV))
  np.testing.assert_array_equal(_encode_lora(params, lora, ids, mask, cfg=DROP), no_dropout)

  def train(key):  # LoRA dropout on, the model's own dropout off
    return np.asarray(_encode_lora(params, lora, ids, mask, key, cfg=DROP,
                                   lora_deterministic=False))
  a, b, c = train(jax.random.key(0)), train(jax.random.key(0)), train(jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - no_dropout).max() > 1e-4 and np.abs(a - c).max() > 1e-4
  with pytest.raises(ValueError, match='PRNG key'):
    _encode_lora(params, lora, ids, mask, cfg=DROP, lora_deterministic=False)
  with pytest.raises(ValueError, match='merged weights'):
    lora_loss(_loss, DROP, deterministic=False, path='merged')


def test_lora_dropout_leaves_the_model_dropout_stream_alone(small):
  params, _, ids, mask = small
  fresh = init_lora(jax.random.key(5), params, QV)   # B = 0: the LoRA branch adds exactly 0
  # An 'rbg' key: the same flax streams, but XLA CPU compiles BERT's dropout far faster than with
  # threefry; which bits are drawn does not matter here, only that LoRA does not shift them.
  key = jax.random.key(11, impl='rbg')
  base = _encode_jit(params, ids, mask, key, deterministic=False)
  with_lora = _encode_lora(params, fresh, ids, mask, key, cfg=DROP, lora_deterministic=False,
                           deterministic=False)
  np.testing.assert_array_equal(with_lora, base)
  assert np.abs(np.asarray(base) - np.asarray(_encode_jit(params, ids, mask))).max() > 1e-3


class _OneLayer(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(8, name='query')(x)


def test_dropout_acts_on_the_lora_input_by_hand():
  """y - (x W + b) = s drop(x) A B: with A B invertible, solve for drop(x) in float64 and check that
  each entry is 0 or x / (1 - p), masks differ across rows, and about 1 - p of entries are kept."""
  p, n = 0.25, 64
  rng = np.random.default_rng(0)
  x = (rng.choice([-1.0, 1.0], (n, 8)) * rng.uniform(0.5, 1.5, (n, 8))).astype(np.float32)
  params = _OneLayer().init(jax.random.key(0), x)['params']
  a = np.linalg.qr(rng.normal(size=(8, 8)))[0].astype(np.float32)   # orthogonal: well conditioned
  b = np.eye(8, dtype=np.float32)
  lora = {'query': {'lora_a': jnp.asarray(a), 'lora_b': jnp.asarray(b)}}
  cfg = LoraConfig(rank=8, alpha=4.0, dropout=p, target='query')
  with lora_scope(lora, cfg, deterministic=False):
    y = _OneLayer().apply({'params': params}, x, rngs={'dropout': jax.random.key(3)})
  w = np.asarray(params['query']['kernel'], np.float64)
  bias = np.asarray(params['query']['bias'], np.float64)
  base = x.astype(np.float64) @ w + bias
  lora_out = (np.asarray(y, np.float64) - base) / cfg.scale
  dropped_x = lora_out @ np.linalg.inv(a.astype(np.float64) @ b)
  kept = np.abs(dropped_x - x / (1 - p)) < 1e-4
  zeroed = np.abs(dropped_x) < 1e-4
  assert np.all(kept ^ zeroed)
  assert abs(kept.mean() - (1 - p)) < 0.08
  assert len({row.tobytes() for row in kept}) > n // 2


# --- parity with peft --------------------------------------------------------------------------

@pytest.fixture(scope='module')
def peft_pair(tmp_path_factory):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  peft = pytest.importorskip('peft')
  folder = save_bert_with_tokenizer(tmp_path_factory.mktemp('tiny_bert'))
  pre = load_pretrained(folder)
  hf = transformers.AutoModel.from_pretrained(str(folder)).eval()   # local folder, no download
  peft_cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=['query', 'value'], lora_dropout=0.0)
  model = peft.get_peft_model(hf, peft_cfg).eval()
  cfg = LoraConfig.for_modules(('query', 'value'), rank=4, alpha=8.0)
  lora = jax.tree_util.tree_map(np.asarray, init_lora(jax.random.key(0), pre.params, cfg))
  # The same random nonzero A and B on both sides (torch Linear weights are (out, in): transpose).
  gen = torch.Generator().manual_seed(0)
  seen = set()
  for name, param in model.named_parameters():
    if 'lora_' not in name:
      continue
    parts = name.split('.')
    i, module, which = int(parts[parts.index('layer') + 1]), parts[-4], parts[-3]
    with torch.no_grad():
      param.copy_(0.2 * torch.randn(param.shape, generator=gen))
    leaf = {'lora_A': 'lora_a', 'lora_B': 'lora_b'}[which]
    lora[f'layer_{i}']['attention']['self'][module][leaf] = param.detach().numpy().T.copy()
    seen.add((f'layer_{i}', 'attention', 'self', module))
  assert seen == set(lora_targets(pre.params, cfg))
  ids, mask = _batch(np.random.default_rng(1), b=3, l=10, vocab=pre.spec.bert.vocab_size)
  return dict(torch=torch, model=model, pre=pre, cfg=cfg, lora=lora, ids=ids, mask=mask)


def _torch_states(t):
  torch = t['torch']
  return t['model'](input_ids=torch.from_numpy(t['ids']).long(),
                    attention_mask=torch.from_numpy(t['mask']).long()).last_hidden_state


def test_forward_matches_peft(peft_pair):
  t = peft_pair
  torch = t['torch']
  with torch.no_grad():
    ref = _torch_states(t).numpy()
  encoder = BertEncoder(t['pre'].spec.bert)
  apply = lambda p: np.asarray(encoder.apply({'params': p}, t['ids'], t['mask']))
  valid = t['mask'].astype(bool)
  merged = apply(apply_lora(t['pre'].params, t['lora'], t['cfg']))
  with lora_scope(t['lora'], t['cfg']):
    unmerged = apply(t['pre'].params)
  np.testing.assert_allclose(merged[valid], ref[valid], atol=1e-5)
  np.testing.assert_allclose(unmerged[valid], ref[valid], atol=1e-5)
  assert np.abs(apply(t['pre'].params)[valid] - ref[valid]).max() > 1e-2   # the adapter matters


def test_gradients_match_peft(peft_pair):
  t = peft_pair
  torch = t['torch']
  r = np.random.default_rng(2).normal(size=(*t['ids'].shape, 32)).astype(np.float32)
  weight = r * t['mask'][..., None]
  t['model'].zero_grad()
  (_torch_states(t) * torch.from_numpy(weight)).sum().backward()
  encoder = BertEncoder(t['pre'].spec.bert)
  loss = lambda p: jnp.sum(encoder.apply({'params': p}, t['ids'], t['mask']) * weight)
  grads = jax.jit(jax.grad(lora_loss(loss, t['cfg'], path='activations')))(t['lora'],
                                                                        t['pre'].params)
  for name, param in t['model'].named_parameters():
    if 'lora_' not in name:
      assert param.grad is None or not param.requires_grad  # peft freezes the base too
      continue
    parts = name.split('.')
    i, module, which = int(parts[parts.index('layer') + 1]), parts[-4], parts[-3]
    leaf = {'lora_A': 'lora_a', 'lora_B': 'lora_b'}[which]
    ours = grads[f'layer_{i}']['attention']['self'][module][leaf]
    ref = param.grad.numpy().T
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_merge_matches_peft_merge_and_unload(peft_pair):
  t = peft_pair
  merged_torch = copy.deepcopy(t['model']).merge_and_unload()
  ref = {k: v.numpy() for k, v in merged_torch.state_dict().items()}
  ours = params_to_hf(merge_lora(t['pre'].params, t['lora'], t['cfg']), t['pre'].spec.bert)
  for name in ('encoder.layer.0.attention.self.query.weight',
               'encoder.layer.1.attention.self.value.weight',
               'encoder.layer.1.attention.self.key.weight'):
    np.testing.assert_allclose(ours[name], ref[name], atol=1e-6)
