"""Elastic-depth losses (embedjax.losses.elastic) and per-layer embeddings
(embedjax.models.layerwise) against sentence-transformers' AdaptiveLayerLoss / Matryoshka2dLoss on a
tiny random-init BERT (loss value and gradients), against transformers' hidden states, and against
a float64 numpy reference of the weighting on synthetic per-layer embeddings."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.losses.contrastive import info_nce
from embedjax.losses.elastic import adaptive_layer, layer_weight, matryoshka_2d
from embedjax.models.bert import BertConfig
from embedjax.models.layerwise import embed_layers, num_states
from embedjax.models.pretrained import init_model_params, load_pretrained
from embedjax.models.spec import EmbedderSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'models'))
from tiny_models import save_bert_with_tokenizer  # noqa: E402

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
st = pytest.importorskip('sentence_transformers')
from sentence_transformers.base.modules import Dense, Normalize, Transformer  # noqa: E402
from sentence_transformers.sentence_transformer import losses as st_losses  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Pooling  # noqa: E402

HIDDEN = 16
ANCHORS = ['A man is playing a guitar.', 'The weather is lovely today!', 'cat',
           'JAX composes pure functions under jit.']
POSITIVES = ['a man playing guitar', 'lovely weather today', 'the cat sat on the mat',
             'pure functions under jit in jax']
NEGATIVES = ['the dog sat on a mat', 'embeddings compress meaning into vectors',
             'query passage search', 'hello world']


# --- the tiny model, on both sides --------------------------------------------------------------
# XLA CPU compiles dominate here, so the encoder's forward and backward are compiled once per
# module (``plain_model``) and shared by both parity tests; each loss is differentiated with respect
# to the per-layer embeddings only, and chained through the shared encoder pullback.

@pytest.fixture(scope='module')
def backbone(tmp_path_factory):
  """A 2-layer BERT of width 16 (transformers), moved off its init so every tensor matters."""
  folder = save_bert_with_tokenizer(tmp_path_factory.mktemp('tiny') / 'bert')
  cfg = transformers.BertConfig.from_pretrained(str(folder))   # the tokenizer's vocab size
  cfg.update(dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32))
  torch.manual_seed(0)
  model = transformers.BertModel(cfg, add_pooling_layer=False)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(str(folder))
  return folder


def _st_model(backbone, folder, *, dense_normalize: bool):
  torch.manual_seed(1)
  modules = [Transformer(str(backbone), max_seq_length=32), Pooling(HIDDEN, pooling_mode='mean')]
  if dense_normalize:
    modules += [Dense(HIDDEN, HIDDEN, activation_function=torch.nn.Tanh()), Normalize()]
  st.SentenceTransformer(modules=modules, device='cpu').save(str(folder))
  model = st.SentenceTransformer(str(folder), device='cpu')
  # Eval mode: no dropout on either side (the losses themselves do nothing mode-dependent).
  return model.eval(), load_pretrained(folder)


@pytest.fixture(scope='module')
def plain_model(backbone, tmp_path_factory):
  """Transformer + mean Pooling; our side embeds all three columns in one padded batch."""
  model, pre = _st_model(backbone, tmp_path_factory.mktemp('plain'), dense_normalize=False)
  batch = pre.tokenizer(ANCHORS + POSITIVES + NEGATIVES)
  embed_all = lambda params: embed_layers(params, pre.spec, batch['input_ids'],
                                          batch['attention_mask'])          # (L, 3B, D)
  # The forward with its residuals (a vjp function is a pytree, so it leaves jit), then the
  # backward alone: the encoder is compiled once each way.
  layers, pullback = jax.jit(lambda params: jax.vjp(embed_all, params))(pre.params)
  backward = jax.jit(lambda pullback, cotangent: pullback(cotangent)[0])
  return model, pre, layers, lambda cotangent: backward(pullback, cotangent)


def _st_loss_and_grads(model, loss, columns):
  """sentence-transformers' loss on the text columns, and the torch grads of three weights."""
  model.zero_grad()
  features = [model.preprocess(texts) for texts in columns]
  value = loss(features, None)
  value.backward()
  bert = model[0].auto_model
  grads = {
      'query': bert.encoder.layer[0].attention.self.query.weight.grad.numpy().T,
      'word_embeddings': bert.embeddings.word_embeddings.weight.grad.numpy(),
      'value_last': bert.encoder.layer[-1].attention.self.value.weight.grad.numpy().T,
  }
  return value.item(), grads


def _our_loss_and_grads(plain_model, loss, n_columns):
  _, pre, layers, pullback = plain_model
  b = len(ANCHORS)

  def total(layers):
    q, d, negatives = layers[:, :b], layers[:, b:2 * b], layers[:, 2 * b:]
    negatives = negatives[:, :, None] if n_columns == 3 else None           # (L, B, 1, D)
    return loss(q, d, hard_negatives_layers=negatives)[0]

  value, cotangent = jax.jit(jax.value_and_grad(total))(layers)
  grads = pullback(cotangent)
  last = pre.spec.bert.num_hidden_layers - 1
  return float(value), {
      'query': np.asarray(grads['layer_0']['attention']['self']['query']['kernel']),
      'word_embeddings': np.asarray(grads['word_embeddings']['embedding']),
      'value_last': np.asarray(grads[f'layer_{last}']['attention']['self']['value']['kernel']),
  }


def _assert_parity(ours, theirs):
  (value, grads), (want_value, want_grads) = ours, theirs
  assert value == pytest.approx(want_value, rel=1e-5, abs=1e-5)
  for name, want in want_grads.items():
    assert np.abs(want).max() > 1e-4, name         # the gradient is not trivially zero
    np.testing.assert_allclose(grads[name], want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_adaptive_layer_equals_sentence_transformers(plain_model):
  model, pre = plain_model[:2]
  # Token ids first: a mismatch there would make everything below meaningless.
  ref_ids = model.preprocess(ANCHORS)
  assert pre.tokenizer.encode(ANCHORS) == [
      list(r[m.bool()].numpy()) for r, m in zip(ref_ids['input_ids'], ref_ids['attention_mask'])]
  ref = st_losses.AdaptiveLayerLoss(model, st_losses.MultipleNegativesRankingLoss(model),
                                    n_layers_per_step=-1)
  theirs = _st_loss_and_grads(model, ref, [ANCHORS, POSITIVES])
  ours = _our_loss_and_grads(plain_model, adaptive_layer(info_nce, n_layers_per_step=-1), 2)
  _assert_parity(ours, theirs)


def test_matryoshka_2d_equals_sentence_transformers(plain_model):
  """Non-default weights, 'linear' layer weights and a hard-negative column (more KL rows)."""
  model = plain_model[0]
  options = dict(n_layers_per_step=-1, n_dims_per_step=-1, last_layer_weight=0.7,
                 prior_layers_weight=1.3, kl_div_weight=2.0, kl_temperature=0.5,
                 layer_weighting='linear')
  ref = st_losses.Matryoshka2dLoss(model, st_losses.MultipleNegativesRankingLoss(model),
                                   matryoshka_dims=[16, 8], matryoshka_weights=[1.0, 0.5],
                                   **options)
  theirs = _st_loss_and_grads(model, ref, [ANCHORS, POSITIVES, NEGATIVES])
  ours = _our_loss_and_grads(
      plain_model, matryoshka_2d(info_nce, (16, 8), weights=(1.0, 0.5), **options), 3)
  _assert_parity(ours, theirs)


def test_embed_layers_apply_the_whole_head_like_sentence_transformers(backbone, tmp_path):
  """Each hidden state through Pooling, Dense and Normalize, as AdaptiveLayerLoss feeds them."""
  model, pre = _st_model(backbone, tmp_path / 'dense', dense_normalize=True)
  batch = pre.tokenizer(ANCHORS)
  mask = torch.from_numpy(batch['attention_mask']).long()
  with torch.no_grad():
    states = model[0].auto_model(input_ids=torch.from_numpy(batch['input_ids']).long(),
                                 attention_mask=mask, output_hidden_states=True).hidden_states
    want = []
    for hidden in states:
      features = {'token_embeddings': hidden, 'attention_mask': mask}
      for module in list(model)[1:]:
        features = module(features)
      want.append(features['sentence_embedding'].numpy())
  got = np.asarray(jax.jit(lambda p: embed_layers(p, pre.spec, batch['input_ids'],
                                                  batch['attention_mask']))(pre.params))
  assert got.shape == (3, len(ANCHORS), HIDDEN) and len(want) == 3
  np.testing.assert_allclose(got, np.stack(want), atol=1e-5)
  # The last state is the ordinary embedding.
  np.testing.assert_allclose(got[-1], model.encode(ANCHORS), atol=1e-5)


def test_layer_selection():
  spec = EmbedderSpec(bert=BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=3,
                                      num_attention_heads=2, intermediate_size=8,
                                      max_position_embeddings=8), max_seq_length=8)
  assert num_states(spec) == 4
  params = jax.eval_shape(lambda: init_model_params(spec, jax.random.key(0)))
  ids = jnp.zeros((2, 5), jnp.int32)
  shape = jax.eval_shape(lambda p: embed_layers(p, spec, ids, ids, layers=(0, -2)), params).shape
  assert shape == (2, 2, 8)
  for bad in ((4,), (-5,), ()):
    with pytest.raises(ValueError, match='out of range|empty'):
      embed_layers(params, spec, ids, ids, layers=bad)


def test_embed_layers_decoder_equal_transformers_hidden_states(tmp_path):
  """Decoder states: intermediate ones before the final RMSNorm, the last after it (as HF)."""
  from embedjax.models.hf_decoder import load_decoder_params, read_decoder_config

  cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=HIDDEN, intermediate_size=24,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                 max_position_embeddings=32, tie_word_embeddings=False)
  torch.manual_seed(0)
  model = transformers.AutoModel.from_config(cfg, attn_implementation='eager').eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(tmp_path)
  dcfg = read_decoder_config(tmp_path)
  params = load_decoder_params(tmp_path, dcfg)
  spec = EmbedderSpec(decoder=dcfg, pooling='last_token', normalize=False, max_seq_length=16)
  lengths = np.array([7, 4, 1])
  mask = (np.arange(7)[None] < lengths[:, None]).astype(np.int64)
  ids = np.random.default_rng(0).integers(3, 64, size=(3, 7)) * mask
  with torch.no_grad():
    states = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                   output_hidden_states=True).hidden_states
  want = np.stack([h.numpy()[np.arange(3), lengths - 1] for h in states])
  got = np.asarray(jax.jit(lambda p: embed_layers(p, spec, ids, mask))(params))
  assert got.shape == (3, 3, HIDDEN)
  np.testing.assert_allclose(got, want, atol=1e-5)


# --- float64 numpy reference on synthetic per-layer embeddings ------------------------------------

def _np_mnrl(q, d, negatives, scale=20.0):
  """MultipleNegativesRankingLoss (cosine, query_to_doc): candidates = positives, then negatives."""
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  docs = d if negatives is None else np.concatenate(
      [d] + [negatives[:, j] for j in range(negatives.shape[1])])
  logits = scale * unit(q) @ unit(docs).T
  top = logits.max(1, keepdims=True)
  log_z = np.log(np.exp(logits - top).sum(1)) + top[:, 0]
  return float(np.mean(log_z - np.diag(logits[:, :len(q)])))


def _np_matryoshka(q, d, negatives, dims_weights):
  unit_prefix = lambda x, k: x[..., :k] / np.linalg.norm(x[..., :k], axis=-1, keepdims=True)
  return sum(w * _np_mnrl(unit_prefix(q, k), unit_prefix(d, k),
                          None if negatives is None else unit_prefix(negatives, k))
             for k, w in dims_weights)


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kl(student, teacher, t):
  """KL(softmax(teacher / t) || softmax(student / t)) summed over dims, averaged over rows."""
  log_p = _np_log_softmax(teacher / t)
  return float((np.exp(log_p) * (log_p - _np_log_softmax(student / t))).sum() / len(student))


def _np_total(q, d, negatives, used, inner, *, weights, last=1.0, prior=1.0, kl=1.0, t=0.3):
  """The 2DMSE / AdaptiveLayer objective written out; ``weights[i]`` = weight of prior state i,
  ``inner(layer)`` = the (Matryoshka) loss of one state."""
  rows = lambda i: np.concatenate([q[i], d[i]] + ([] if negatives is None else
                                                  [negatives[i].reshape(-1, q.shape[-1])]))
  total = last * inner(-1)
  for i in used:
    total += inner(i) * weights[i] / len(used) * prior
    if t > 0:
      total += _np_kl(rows(i), rows(-1), t) * t * kl
  return total


def _synthetic(seed=0, n_states=4, b=5, dim=6, h=1):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(n_states, b, dim))
  d = q + 0.9 * rng.normal(size=q.shape)
  negatives = rng.normal(size=(n_states, b, h, dim))
  return q, d, negatives


NP_WEIGHTINGS = {'uniform': lambda i: 1.0, 'log': lambda i: 1.0 / (1.0 + np.log1p(i)),
                 'linear': lambda i: 1.0 / (i + 1.0)}


# 'uniform' and 'linear' are also checked against sentence-transformers above.
@pytest.mark.parametrize('weighting', ['log', 'callable'])
def test_adaptive_layer_weighting_equals_numpy(weighting):
  q, d, negatives = _synthetic()
  custom = lambda i: 0.5 + i
  w = [(custom if weighting == 'callable' else NP_WEIGHTINGS[weighting])(i) for i in range(3)]
  options = dict(last_layer_weight=0.8, prior_layers_weight=1.7, kl_div_weight=0.6,
                 kl_temperature=0.4)
  want = _np_total(q, d, negatives, [0, 1, 2],
                   lambda i: _np_mnrl(q[i], d[i], negatives[i]), weights=w,
                   last=0.8, prior=1.7, kl=0.6, t=0.4)
  loss = adaptive_layer(info_nce, n_layers_per_step=-1,
                        layer_weighting=custom if weighting == 'callable' else weighting, **options)
  got, metrics = jax.jit(loss)(jnp.float32(q), jnp.float32(d),
                               hard_negatives_layers=jnp.float32(negatives))
  assert float(got) == pytest.approx(want, rel=1e-5)
  for key, state in (('last_layer_loss', -1), ('loss@layer1', 1)):
    assert float(metrics[key]) == pytest.approx(_np_mnrl(q[state], d[state], negatives[state]),
                                                rel=1e-5)
  assert float(metrics['kl_div_loss']) > 0.01
  assert [layer_weight('log', i) for i in range(3)] == pytest.approx(
      [NP_WEIGHTINGS['log'](i) for i in range(3)])


def test_no_kl_at_temperature_zero_and_zero_means_all_layers():
  q64, d64, _ = _synthetic(1, h=0)
  q, d = jnp.float32(q64), jnp.float32(d64)
  want = _np_total(q64, d64, None, [0, 1, 2], lambda i: _np_mnrl(q64[i], d64[i], None),
                   weights=[1.0] * 3, t=0.0)
  no_kl = adaptive_layer(info_nce, n_layers_per_step=-1, kl_temperature=0.0)
  value, metrics = jax.jit(no_kl)(q, d)
  assert float(value) == pytest.approx(want, rel=1e-5)
  assert float(metrics['kl_div_loss']) == 0.0
  # sentence-transformers samples only for 0 < n < L - 1: 0 (and L - 1 or more) use every layer,
  # without a key: the same program as -1 (compared traced, nothing compiled).
  program = lambda n: str(jax.make_jaxpr(adaptive_layer(info_nce, n_layers_per_step=n))(q, d))
  assert program(0) == program(3) == program(9) == program(-1)
  with pytest.raises(ValueError, match='key'):
    adaptive_layer(info_nce, n_layers_per_step=1)(q, d)


def test_sampled_layers_are_one_subset_with_gradients_only_there():
  """n_layers_per_step=2 of 3 prior states: each key's loss is the reference on one 2-subset, the
  unsampled state gets no gradient, and 16 keys draw every subset."""
  q, d, negatives = _synthetic(2)
  subsets = list(itertools.combinations(range(3), 2))
  refs = [_np_total(q, d, negatives, s, lambda i: _np_mnrl(q[i], d[i], negatives[i]),
                    weights=[1.0] * 3) for s in subsets]
  loss = adaptive_layer(info_nce, n_layers_per_step=2)
  value_and_grad = jax.jit(jax.value_and_grad(lambda q_, key: loss(
      q_, jnp.float32(d), hard_negatives_layers=jnp.float32(negatives), key=key)[0]))
  seen = set()
  for seed in range(16):
    value, grad = value_and_grad(jnp.float32(q), jax.random.key(seed))
    hit = [k for k, r in enumerate(refs) if abs(float(value) - r) <= 1e-5 * abs(r)]
    assert len(hit) == 1, (float(value), refs)
    used = subsets[hit[0]]
    seen.add(used)
    norms = np.abs(np.asarray(grad)).sum(axis=(1, 2))
    assert all((norms[i] > 0) == (i in used) for i in range(3)), (used, norms)
    assert norms[3] > 0
  assert seen == set(subsets)


def test_matryoshka_2d_equals_numpy_all_and_sampled_dims():
  """Two states (one prior), dims given unsorted with their weights; every dim, then one drawn
  dim per loss call (sentence-transformers' default)."""
  q, d, negatives = _synthetic(3, n_states=2, dim=6)
  dims_weights = [(6, 1.0), (4, 0.5), (2, 2.0)]
  options = dict(weights=(2.0, 1.0, 0.5), n_layers_per_step=-1, last_layer_weight=1.2,
                 prior_layers_weight=0.9, kl_div_weight=1.5, kl_temperature=0.3)
  args = (jnp.float32(q), jnp.float32(d))
  kwargs = dict(hard_negatives_layers=jnp.float32(negatives))
  every = jax.jit(matryoshka_2d(info_nce, (2, 6, 4), n_dims_per_step=-1, **options))
  want = _np_total(q, d, negatives, [0],
                   lambda i: _np_matryoshka(q[i], d[i], negatives[i], dims_weights),
                   weights=[1.0], last=1.2, prior=0.9, kl=1.5, t=0.3)
  assert float(every(*args, **kwargs)[0]) == pytest.approx(want, rel=1e-5)

  # One dim drawn for each of the two loss calls: the loss is the reference for one assignment
  # (last layer's dim, prior layer's dim), and several keys draw different ones.
  sampled = jax.jit(matryoshka_2d(info_nce, (2, 6, 4), **options))
  weight_of = dict(dims_weights)

  def reference(k_last, k_prior):
    dim_at = {-1: k_last, 0: k_prior}
    inner = lambda i: _np_matryoshka(q[i], d[i], negatives[i], [(dim_at[i], weight_of[dim_at[i]])])
    return _np_total(q, d, negatives, [0], inner, weights=[1.0], last=1.2, prior=0.9, kl=1.5,
                     t=0.3)

  totals = {c: reference(*c) for c in itertools.product(weight_of, repeat=2)}
  drawn = set()
  for seed in range(8):
    value = float(sampled(*args, **kwargs, key=jax.random.key(seed))[0])
    hit = [c for c, r in totals.items() if abs(value - r) <= 1e-5 * abs(r)]
    assert len(hit) == 1, (value, totals)
    drawn.add(hit[0])
  assert len(drawn) > 1
  with pytest.raises(ValueError, match='key'):
    sampled(*args, **kwargs)
