"""A whole sentence-transformers folder (Transformer, Pooling, Dense, Normalize, prompts, similarity,
lowercasing) read by embedjax and compared with sentence-transformers itself, on tiny models."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from embedjax.encoding import encode
from embedjax.models.bert import BertEncoder
from embedjax.models.embedder import apply_dense, split_params
from embedjax.models.pooling import pool
from embedjax.models.pretrained import export_sentence_transformers, load_pretrained
from embedjax.models.st_layout import read_layout

from tiny_models import TEXTS, save_bert_with_tokenizer

torch = pytest.importorskip('torch')
st = pytest.importorskip('sentence_transformers')
from sentence_transformers.base.modules import Dense, Normalize, Transformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Pooling  # noqa: E402

PROMPTS = {'query': 'query: ', 'passage': 'passage: '}


@pytest.fixture(scope='module')
def backbone(tmp_path_factory):
  """A cased tiny BERT (so that do_lower_case has something to do)."""
  return save_bert_with_tokenizer(tmp_path_factory.mktemp('tiny') / 'bert', lowercase=False)


def _st_model(backbone, folder, *, mode='mean', include_prompt=True, dense=(), normalize=True,
              lower=False, similarity='dot', default_prompt_name=None):
  torch.manual_seed(1)
  modules = [Transformer(str(backbone), max_seq_length=48, do_lower_case=lower)]
  modules.append(Pooling(32, pooling_mode=mode, include_prompt=include_prompt))
  width = 32
  for out, act in dense:
    modules.append(Dense(width, out, activation_function=act))
    width = out
  if normalize:
    modules.append(Normalize())
  model = st.SentenceTransformer(modules=modules, device='cpu', prompts=PROMPTS,
                                 default_prompt_name=default_prompt_name,
                                 similarity_fn_name=similarity)
  model.save(str(folder))
  if lower:
    # sentence-transformers saves do_lower_case as a Lowercase step in tokenizer.json, but
    # transformers rebuilds a BertTokenizer's normalizer from tokenizer_config.json on reload and
    # drops it; the model as built is the reference for what the folder means.
    return model
  return st.SentenceTransformer(str(folder), device='cpu')


def test_dense_normalize_prompts_and_lowercase_match_sentence_transformers(backbone, tmp_path):
  ref = _st_model(backbone, tmp_path / 'st', dense=((24, torch.nn.Tanh()), (16, torch.nn.Identity())),
                  lower=True, similarity='dot', default_prompt_name='query')
  ours = load_pretrained(tmp_path / 'st')
  spec = ours.spec
  assert [(d.in_features, d.out_features, d.activation) for d in spec.dense] == [
      (32, 24, 'tanh'), (24, 16, 'identity')]
  assert spec.normalize and spec.pooling == 'mean' and spec.max_seq_length == 48
  assert ours.prompts == ref.prompts and ours.prompts['query'] == PROMPTS['query']
  assert ours.default_prompt_name == 'query'
  assert ours.similarity_fn == 'dot' and ours.tokenizer.lowercases

  # Token ids, lowercasing included (the tokenizer is cased; the folder asks for lowercase).
  want_ids = ref.tokenize(TEXTS)
  got_ids = ours.tokenizer.encode(TEXTS)
  assert got_ids == [list(r[m.bool()].numpy()) for r, m in zip(want_ids['input_ids'],
                                                                want_ids['attention_mask'])]
  want = ref.encode(TEXTS, prompt_name='passage')
  got = encode(ours, TEXTS, prompt=ours.prompts['passage'], progress=False)
  assert got.shape == (len(TEXTS), 16)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # The default prompt is ST's: encode without a name uses 'query'.
  np.testing.assert_allclose(encode(ours, TEXTS, prompt=PROMPTS['query'], progress=False),
                             ref.encode(TEXTS), atol=1e-5)


def test_pooling_modes_without_prompt_tokens_match_sentence_transformers(backbone, tmp_path):
  ref = _st_model(backbone, tmp_path / 'st', mode='cls', include_prompt=False, normalize=False,
                  dense=((8, torch.nn.ReLU()),))
  ours = load_pretrained(tmp_path / 'st')
  spec = ours.spec
  assert (spec.pooling, spec.include_prompt, spec.normalize) == ('cls', False, False)
  encoder, (dense,) = split_params(ours.params, spec)
  for name in (None, 'query'):
    prompt = PROMPTS[name] if name else ''
    batch = ours.tokenizer([prompt + t for t in TEXTS])
    # One encoder forward per prompt; each pooling mode then runs on its hidden states.
    hidden = jax.jit(BertEncoder(spec.bert).apply)({'params': encoder}, batch['input_ids'],
                                                   batch['attention_mask'])
    positions = np.arange(batch['input_ids'].shape[1])[None]
    pool_mask = positions >= (ours.tokenizer.prompt_length(prompt) if prompt else 0)
    for st_mode, mode in [('cls', 'cls'), ('max', 'max'), ('weightedmean', 'weighted_mean'),
                          ('lasttoken', 'last_token'), ('mean_sqrt_len_tokens', 'mean_sqrt_len'),
                          ('mean', 'mean')]:
      ref[1].pooling_mode = st_mode  # the same weights under each pooling
      want = ref.encode(TEXTS, prompt_name=name)
      pooled = pool(hidden, batch['attention_mask'], mode, np.broadcast_to(pool_mask, hidden.shape[:2]))
      got = apply_dense(dense, spec.dense[0], pooled)
      np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f'{mode} prompt={name}')
  # The packed, jitted path (prompt tokens masked out through position ids).
  ref[1].pooling_mode = 'cls'
  got = encode(ours, TEXTS, prompt=PROMPTS['query'], progress=False, max_segments=4)
  np.testing.assert_allclose(got, ref.encode(TEXTS, prompt_name='query'), atol=1e-5)


def test_export_of_a_loaded_model_round_trips(backbone, tmp_path):
  ref = _st_model(backbone, tmp_path / 'st', dense=((20, torch.nn.GELU()),), lower=True,
                  similarity='euclidean', default_prompt_name='passage', include_prompt=False,
                  mode='weightedmean')
  ours = load_pretrained(tmp_path / 'st')
  # Perturb the Dense weights so the check cannot pass by re-reading the original files.
  params = dict(ours.params, dense_0={k: v * 1.5 for k, v in ours.params['dense_0'].items()})
  out = export_sentence_transformers(tmp_path / 'export', ours, params=params)
  again = st.SentenceTransformer(str(out), device='cpu')
  assert again.prompts == ref.prompts and again.default_prompt_name == 'passage'
  assert again.similarity_fn_name == 'euclidean'
  got = encode(ours, TEXTS, params=params, prompt=PROMPTS['passage'], progress=False)
  np.testing.assert_allclose(again.encode(TEXTS), got, atol=1e-5)
  assert np.abs(got - ref.encode(TEXTS)).max() > 1e-3  # the perturbation is visible
  reloaded = load_pretrained(out)
  assert reloaded.spec == ours.spec and reloaded.similarity_fn == 'euclidean'
  assert reloaded.tokenizer.lowercases and reloaded.prompts == ref.prompts


def test_plain_hf_folder_defaults_to_mean_pooling_without_normalize(backbone):
  model = load_pretrained(backbone)
  assert (model.spec.pooling, model.spec.normalize, model.spec.dense) == ('mean', False, ())
  assert model.prompts == {} and model.similarity_fn == 'cosine'


def _write(path, obj):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj))


def test_layout_errors_name_the_file_and_field(tmp_path):
  transformer = {'idx': 0, 'name': '0', 'path': '', 'type': 'sentence_transformers.models.Transformer'}
  pooling = {'idx': 1, 'name': '1', 'path': '1_Pooling', 'type': 'sentence_transformers.models.Pooling'}
  _write(tmp_path / '1_Pooling' / 'config.json', {'pooling_mode': ['cls', 'mean']})
  _write(tmp_path / 'modules.json', [transformer, pooling])
  with pytest.raises(ValueError, match=r'1_Pooling/config.json: pooling_mode .* concatenates'):
    read_layout(tmp_path)
  _write(tmp_path / '1_Pooling' / 'config.json', {'pooling_mode': 'mean'})
  _write(tmp_path / 'modules.json', [transformer, pooling,
                                     {'idx': 2, 'path': '2_LSTM', 'type': 'sentence_transformers.models.LSTM'}])
  with pytest.raises(ValueError, match=r"modules.json: module 2 \(LSTM\).*not supported"):
    read_layout(tmp_path)
  _write(tmp_path / '2_Dense' / 'config.json', {'in_features': 32, 'out_features': 8,
                                                'activation_function': 'my.Custom'})
  _write(tmp_path / 'modules.json', [transformer, pooling,
                                     {'idx': 2, 'path': '2_Dense', 'type': 'sentence_transformers.models.Dense'}])
  with pytest.raises(ValueError, match=r"2_Dense/config.json: activation_function 'my.Custom'"):
    read_layout(tmp_path)
  _write(tmp_path / 'modules.json', [transformer, pooling])
  _write(tmp_path / 'config_sentence_transformers.json', {'similarity_fn_name': 'jaccard'})
  with pytest.raises(ValueError, match=r'config_sentence_transformers.json: similarity_fn_name'):
    read_layout(tmp_path)
  _write(tmp_path / 'config_sentence_transformers.json', {'prompts': {'q': 'q: '},
                                                          'default_prompt_name': 'doc'})
  with pytest.raises(ValueError, match=r"default_prompt_name 'doc'"):
    read_layout(tmp_path)
