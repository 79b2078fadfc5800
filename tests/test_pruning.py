"""embedjax.pruning against float64 numpy references and against the unpruned models' outputs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax import pruning
from embedjax.models.bert import BertConfig, BertEncoder
from embedjax.models.decoder import Decoder, DecoderConfig, init_decoder_params
from embedjax.models.pretrained import init_params

BERT = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=24, max_position_embeddings=16)
DECODER = DecoderConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=4)
IDS = np.array([[5, 7, 9, 11, 3, 0], [4, 8, 12, 0, 0, 0]], np.int32)
MASK = (IDS > 0).astype(np.int32)


@pytest.fixture(scope='module')
def bert_params():
  return init_params(BERT, jax.random.key(0))


def _bert_out(params, cfg):
  return np.asarray(BertEncoder(cfg).apply({'params': params}, IDS, MASK))


def _decoder_out(params, cfg):
  out = Decoder(cfg).apply({'params': params}, IDS, MASK)
  return np.asarray(out) * MASK[..., None]  # padding positions are not outputs


def _prunable_abs(params):
  return np.concatenate([np.abs(np.asarray(x, np.float64)).ravel()
                         for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
                         if pruning.prunable(path, x)])


@pytest.mark.parametrize('sparsity', [0.0, 0.3, 0.7])
def test_global_magnitude_prunes_the_smallest_layer_weights_only(bert_params, sparsity):
  pruned, masks = pruning.magnitude_prune(bert_params, sparsity, 'global')
  before, after = _prunable_abs(bert_params), _prunable_abs(pruned)
  removed = after == 0
  assert removed.sum() == int(np.floor(sparsity * before.size))
  if 0 < sparsity:
    assert before[removed].max() <= before[~removed].min()  # the float64 threshold
  assert pruning.sparsity_of(pruned) == pytest.approx(removed.sum() / before.size)
  # embeddings, norms and biases untouched
  for path, x in jax.tree_util.tree_flatten_with_path(pruned)[0]:
    if not pruning.prunable(path, x):
      np.testing.assert_array_equal(x, _get(bert_params, path))


def _get(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree


@pytest.mark.parametrize('scope', ['layer', 'tensor'])
def test_scoped_magnitude_removes_the_fraction_in_every_group(bert_params, scope):
  pruned, _ = pruning.magnitude_prune(bert_params, 0.5, scope)
  groups = {}
  for path, x in jax.tree_util.tree_flatten_with_path(pruned)[0]:
    if pruning.prunable(path, x):
      key = pruning.layer_index(path) if scope == 'layer' else jax.tree_util.keystr(path)
      w = np.asarray(_get(bert_params, path))
      groups.setdefault(key, []).append((w.ravel(), np.asarray(x).ravel()))
  assert len(groups) == (2 if scope == 'layer' else 12)
  for members in groups.values():
    w = np.abs(np.concatenate([m[0] for m in members]))
    kept = np.concatenate([m[1] for m in members]) != 0
    assert (~kept).sum() == w.size // 2
    assert w[~kept].max() <= w[kept].min()


def test_bad_ratios_and_scopes_are_refused(bert_params):
  for bad in (1.0, -0.1, 1.5):
    with pytest.raises(ValueError, match=r'outside \[0, 1\)'):
      pruning.magnitude_prune(bert_params, bad)
    with pytest.raises(ValueError, match=r'outside \[0, 1\)'):
      pruning.structured_prune(bert_params, BERT, head_ratio=bad)
  with pytest.raises(ValueError, match='scope'):
    pruning.magnitude_prune(bert_params, 0.5, 'row')
  with pytest.raises(ValueError, match='keep_heads'):
    pruning.prune_structure(bert_params, BERT, keep_heads=[[0, 1]])  # one row for two layers
  with pytest.raises(ValueError, match='distinct'):
    pruning.prune_structure(bert_params, BERT, keep_neurons=[[0, 0], [1, 2]])


def test_gaprune_scores_equal_a_float64_reference():
  """A tiny linear embedder y = x W1 W2 with a squared loss: gradients by hand in float64."""
  rng = np.random.default_rng(0)
  w1, w2 = rng.normal(size=(5, 4)), rng.normal(size=(4, 3))
  params = {'layer_0': {'a': {'kernel': jnp.asarray(w1, jnp.float32)},
                        'b': {'kernel': jnp.asarray(w2, jnp.float32)}}}

  def loss(p, batch):
    x, y = batch
    return 0.5 * jnp.mean(jnp.sum((x @ p['layer_0']['a']['kernel'] @ p['layer_0']['b']['kernel']
                                   - y) ** 2, -1))

  def ref_grads(x, y):  # d/dW of 0.5 mean ||x W1 W2 - y||^2
    r = (x @ w1 @ w2 - y) / len(x)
    return (x.T @ r @ w2.T, (x @ w1).T @ r)

  def batches(seed):
    g = np.random.default_rng(seed)
    return [(g.normal(size=(3, 5)), g.normal(size=(3, 3))) for _ in range(4)]

  stats = {}
  for name, seed in (('domain', 1), ('general', 2)):
    data = batches(seed)
    grads = [ref_grads(x, y) for x, y in data]
    mean = [np.mean([g[i] for g in grads], 0) for i in range(2)]
    fisher = [np.mean([g[i] ** 2 for g in grads], 0) for i in range(2)]
    got_mean, got_fisher = pruning.gradient_statistics(
        loss, params, [tuple(jnp.asarray(a, jnp.float32) for a in b) for b in data])
    for i, k in enumerate('ab'):
      np.testing.assert_allclose(got_mean['layer_0'][k]['kernel'], mean[i], rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(got_fisher['layer_0'][k]['kernel'], fisher[i], rtol=1e-4,
                                 atol=1e-7)
    stats[name] = (mean, fisher, got_mean, got_fisher)

  scores = pruning.gaprune_scores(params, stats['domain'][3], stats['general'][3],
                                  stats['domain'][2], stats['general'][2], beta=0.5)
  raw = pruning.gaprune_scores(params, stats['domain'][3], stats['general'][3],
                               stats['domain'][2], stats['general'][2], beta=0.5, postprocess=None)
  for i, (k, w) in enumerate((('a', w1), ('b', w2))):
    gd, gg = stats['domain'][0][i].ravel(), stats['general'][0][i].ravel()
    cos = gd @ gg / (np.linalg.norm(gd) * np.linalg.norm(gg))
    x = ((stats['domain'][1][i] - 0.5 * stats['general'][1][i]) * np.abs(w)
         * np.clip(1 + 0.2 * cos, 0.8, 1.2) + 0.5 * np.sqrt(np.abs(w) + 1e-8))
    dai = np.log1p(np.exp(x))
    z = (dai - dai.mean()) / dai.std(ddof=1)
    np.testing.assert_allclose(raw['layer_0'][k]['kernel'], dai, rtol=1e-5)
    np.testing.assert_allclose(scores['layer_0'][k]['kernel'], 1 / (1 + np.exp(-z)), rtol=1e-4)


def _zero_units(params, cfg, heads, neurons):
  """Zeroes every weight of the given head units and FFN neurons in every layer."""
  p = jax.tree_util.tree_map(np.array, params)
  d = cfg.head_size
  for key in [k for k in p if pruning._LAYER_KEY.match(k)]:
    if isinstance(cfg, DecoderConfig):
      group = cfg.num_attention_heads // cfg.num_key_value_heads
      a, m = p[key]['self_attn'], p[key]['mlp']
      for h in heads:
        q = slice(h * group * d, (h + 1) * group * d)
        a['q_proj']['kernel'][:, q] = 0
        a['o_proj']['kernel'][q] = 0
        for n in ('k_proj', 'v_proj'):
          a[n]['kernel'][:, h * d:(h + 1) * d] = 0
      for n in neurons:
        m['gate_proj']['kernel'][:, n] = m['up_proj']['kernel'][:, n] = 0
        m['down_proj']['kernel'][n] = 0
    else:
      a = p[key]['attention']
      for h in heads:
        cols = slice(h * d, (h + 1) * d)
        for n in ('query', 'key', 'value'):
          a['self'][n]['kernel'][:, cols] = a['self'][n]['bias'][cols] = 0
        a['output_dense']['kernel'][cols] = 0
      for n in neurons:
        p[key]['intermediate_dense']['kernel'][:, n] = p[key]['intermediate_dense']['bias'][n] = 0
        p[key]['output_dense']['kernel'][n] = 0
  return p


@pytest.mark.parametrize('family', ['bert', 'decoder'])
def test_pruning_zero_importance_units_keeps_outputs_and_reduces_shapes(bert_params, family):
  if family == 'bert':
    cfg, params, out = BERT, _zero_units(bert_params, BERT, [1, 3], [0, 5, 6, 20]), _bert_out
  else:
    cfg = DECODER
    params = _zero_units(init_decoder_params(DECODER, jax.random.key(1)), DECODER, [0], [2, 3, 9, 11])
    out = _decoder_out
  units = pruning.unit_scores(params, cfg)
  n_units = units['heads'].shape[1]
  pruned, new_cfg = pruning.structured_prune(params, cfg, head_ratio=0.5, neuron_ratio=4 / 24)
  assert new_cfg.intermediate_size == 20 and new_cfg.head_size == cfg.head_size
  if family == 'bert':
    assert new_cfg.num_attention_heads == 2
    assert pruned['layer_0']['attention']['self']['query']['kernel'].shape == (16, 8)
    assert pruned['layer_1']['attention']['output_dense']['kernel'].shape == (8, 16)
  else:
    assert (new_cfg.num_key_value_heads, new_cfg.num_attention_heads) == (1, 2)
    assert pruned['layers_0']['self_attn']['k_proj']['kernel'].shape == (16, 4)
    assert pruned['layers_1']['self_attn']['o_proj']['kernel'].shape == (8, 16)
  assert n_units == cfg.num_attention_heads // (cfg.num_attention_heads // getattr(
      cfg, 'num_key_value_heads', cfg.num_attention_heads))
  before = sum(x.size for x in jax.tree_util.tree_leaves(params))
  assert sum(x.size for x in jax.tree_util.tree_leaves(pruned)) < before
  np.testing.assert_allclose(out(pruned, new_cfg), out(params, cfg), rtol=1e-5, atol=1e-5)


def test_dropping_layers_equals_the_hidden_state_at_that_depth(bert_params):
  pruned, cfg = pruning.prune_structure(bert_params, BERT, keep_layers=[0])
  assert cfg.num_hidden_layers == 1 and 'layer_1' not in pruned
  _, states = BertEncoder(BERT).apply({'params': bert_params}, IDS, MASK, output_hidden_states=True)
  np.testing.assert_allclose(_bert_out(pruned, cfg), states[1], rtol=1e-6, atol=1e-6)
  # keep_layers=[1] renumbers: the second layer's weights become layer_0
  moved, _ = pruning.prune_structure(bert_params, BERT, keep_layers=[1])
  np.testing.assert_array_equal(moved['layer_0']['output_dense']['kernel'],
                                bert_params['layer_1']['output_dense']['kernel'])


def test_a_head_pruned_model_exports_and_loads_back(minilm, tmp_path):
  import embedjax
  from embedjax.models.pretrained import export_sentence_transformers

  params, cfg = pruning.structured_prune(minilm.params, minilm.spec.bert, head_ratio=0.5,
                                         neuron_ratio=0.25, layer_ratio=0.2)
  assert (cfg.num_attention_heads, cfg.attention_head_size, cfg.intermediate_size,
          cfg.num_hidden_layers) == (6, 32, 1152, 5)
  small = dataclasses.replace(minilm, spec=dataclasses.replace(minilm.spec, bert=cfg),
                              params=params)
  export_sentence_transformers(tmp_path / 'pruned', small)
  texts = ['a pruned model still embeds', 'two sentences']
  loaded = embedjax.load(tmp_path / 'pruned')
  assert loaded.spec.bert == cfg
  np.testing.assert_allclose(loaded.encode(texts), embedjax.models.model.EmbeddingModel(small).encode(
      texts), rtol=1e-5, atol=1e-6)


def test_keep_zeros_keeps_a_pruned_model_sparse_through_adamw_updates(bert_params):
  from embedjax.train.base_config import base_config
  from embedjax.train.optim import make_optimizer
  pruned, _ = pruning.magnitude_prune(bert_params, 0.5)
  params = {'encoder': jax.tree_util.tree_map(np.array, pruned)}
  params['encoder']['layer_0']['output_dense']['bias'][:] = 0  # zero, but not a layer matrix
  optim = base_config().optim
  with optim.unlocked():
    optim.update(lr=1e-2, weight_decay=0.1, keep_zeros=True)
  tx = make_optimizer(optim, params, 10)
  state = tx.init(params)
  rng = np.random.default_rng(0)
  p = params
  for _ in range(3):
    grads = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), p)
    updates, state = tx.update(grads, state, p)
    p = optax_apply(p, updates)
  assert pruning.sparsity_of(p['encoder']) == pytest.approx(0.5, abs=1e-6)
  before, after = (np.asarray(t['encoder']['layer_1']['intermediate_dense']['kernel'])
                   for t in (params, p))
  assert np.all(after[before == 0] == 0) and np.all(after[before != 0] != before[before != 0])
  assert np.all(np.asarray(p['encoder']['layer_0']['output_dense']['bias']) != 0)
  optim.unlock()
  optim.keep_zeros = False
  plain = make_optimizer(optim, params, 10)
  updates, _ = plain.update(grads, plain.init(params), params)
  assert pruning.sparsity_of(optax_apply(params, updates)['encoder']) < 0.01


def optax_apply(p, updates):
  import optax
  return optax.apply_updates(p, updates)
