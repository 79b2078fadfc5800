"""Decoder embedders end to end: a sentence-transformers folder around a tiny transformers decoder
(last-token pooling with an appended EOS as Qwen3-Embedding-style models do; mean pooling with a
BOS as Llama's tokenizer adds) loads in embedjax and gives sentence-transformers' embeddings, with
and without a query prompt; export writes a folder transformers and sentence-transformers load."""

from __future__ import annotations

import json

import numpy as np
import pytest

import embedjax
from embedjax.models.st_layout import STLayout, write_layout

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
st = pytest.importorskip('sentence_transformers')

from tests.models.test_decoder import hf_config, make_hf_model  # noqa: E402

WORDS = ('the a is of to in and cat dog sat mat man playing guitar weather lovely today '
         'embeddings compress meaning into vectors jax pure functions query passage search '
         'instruct given find relevant').split()
TEXTS = ['a man is playing a guitar', 'embeddings compress meaning into vectors',
         'the weather is lovely today', 'cat', 'the cat sat on the mat and the dog sat',
         'jax pure functions']
PROMPT = 'instruct given a query find relevant passage query '


def save_tokenizer(folder, *, bos: bool, eos: bool, padding_side: str):
  import tokenizers
  specials = ['<pad>', '<bos>', '<eos>', '<unk>']  # ids 0..3 = the configs' pad/bos/eos
  vocab = {t: i for i, t in enumerate(specials + WORDS)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='<unk>'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  single = ' '.join((['<bos>'] if bos else []) + ['$A'] + (['<eos>'] if eos else []))
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single=single, special_tokens=[('<bos>', 1), ('<eos>', 2)])
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token='<pad>', bos_token='<bos>', eos_token='<eos>',
      unk_token='<unk>', padding_side=padding_side, model_max_length=48)
  fast.save_pretrained(str(folder))
  return len(vocab)


def st_folder(folder, arch, *, pooling, bos, eos, padding_side):
  folder.mkdir(parents=True, exist_ok=True)
  save_tokenizer(folder, bos=bos, eos=eos, padding_side=padding_side)
  make_hf_model(arch, folder)
  write_layout(folder, STLayout(backbone_dir=folder, pooling=pooling, normalize=True,
                                max_seq_length=48, prompts={'query': PROMPT}),
               embedding_dim=hf_config(arch).hidden_size)
  return folder


CASES = {
    # Qwen3-Embedding style: EOS appended, last-token pooling, left padding in transformers
    'qwen3_last_token': ('qwen3', dict(pooling='last_token', bos=False, eos=True,
                                       padding_side='left')),
    'llama_mean': ('llama', dict(pooling='mean', bos=True, eos=False, padding_side='right')),
}


@pytest.fixture(scope='module', params=sorted(CASES))
def case(request, tmp_path_factory):
  arch, kw = CASES[request.param]
  folder = st_folder(tmp_path_factory.mktemp(request.param), arch, **kw)
  return request.param, folder, embedjax.load(folder), st.SentenceTransformer(str(folder),
                                                                               device='cpu')


def test_embeddings_equal_sentence_transformers(case):
  name, _, model, ref = case
  assert model.spec.decoder is not None and model.spec.bert is None
  for prompt_name in (None, 'query'):
    want = ref.encode(TEXTS, prompt_name=prompt_name, convert_to_numpy=True, batch_size=4)
    got = model.encode(TEXTS, prompt_name=prompt_name)
    np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f'{name} prompt={prompt_name}')


def test_export_round_trip(case, tmp_path):
  name, folder, model, ref = case
  out = tmp_path / 'exported'
  model.save(out)
  hf = transformers.AutoModel.from_pretrained(str(folder)).eval()
  again = transformers.AutoModel.from_pretrained(str(out)).eval()
  ids = torch.tensor([[5, 9, 12, 7, 2, 0], [6, 8, 2, 0, 0, 0]])
  mask = (ids > 0).long()
  with torch.no_grad():
    a = hf(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    b = again(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
  np.testing.assert_allclose(b[mask.numpy() > 0], a[mask.numpy() > 0], atol=1e-6)
  reloaded = st.SentenceTransformer(str(out), device='cpu')
  np.testing.assert_allclose(reloaded.encode(TEXTS[:3], prompt_name='query'),
                             ref.encode(TEXTS[:3], prompt_name='query'), atol=2e-5)
  config = json.loads((out / 'config.json').read_text())
  assert config['model_type'] == CASES[name][0]


def test_bad_folders_fail_with_one_line_naming_the_file(case, tmp_path):
  import shutil
  _, folder, _, _ = case
  bad = tmp_path / 'bad'
  shutil.copytree(folder, bad)
  config = json.loads((bad / 'config.json').read_text())
  (bad / 'config.json').write_text(json.dumps({**config, 'model_type': 'gpt_neox'}))
  with pytest.raises(ValueError, match=r"config\.json: .*model_type 'gpt_neox'"):
    embedjax.load(bad)
  (bad / 'config.json').write_text(json.dumps({**config, 'intermediate_size': 72}))
  with pytest.raises(ValueError, match=r"model\.safetensors: tensor '.*mlp\..*' has shape"):
    embedjax.load(bad)
  (bad / 'config.json').write_text(json.dumps({**config, 'num_hidden_layers': 3}))
  with pytest.raises(KeyError, match=r"missing tensor 'layers\.2\."):
    embedjax.load(bad)
  (bad / 'config.json').write_text(json.dumps(config))
  # a sharded checkpoint whose index names a shard that is absent
  (bad / 'model.safetensors').rename(bad / 'model-00001-of-00002.safetensors')
  (bad / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': {
      'embed_tokens.weight': 'model-00001-of-00002.safetensors',
      'norm.weight': 'model-00002-of-00002.safetensors'}}))
  with pytest.raises(FileNotFoundError, match=r"index\.json: weight_map names shard "
                                              r"'model-00002-of-00002\.safetensors'"):
    embedjax.load(bad)


def test_a_bidirectional_embedder_reloads_bidirectional(case, tmp_path):
  """The attention mode is embedjax's own field of config.json: a bidirectional embedder saved
  and read again embeds as before, not as the causal model its transformers class would run."""
  import dataclasses
  _, _, model, _ = case
  bidir = model.replace(spec=dataclasses.replace(
      model.spec, decoder=dataclasses.replace(model.spec.decoder, attention='bidirectional')))
  want = bidir.encode(TEXTS)
  assert not np.allclose(want, model.encode(TEXTS), atol=1e-3)  # the mode changes embeddings
  bidir.save(tmp_path / 'bidir')
  assert json.loads((tmp_path / 'bidir' / 'config.json').read_text())['attention'] == \
      'bidirectional'
  again = embedjax.load(tmp_path / 'bidir')
  assert again.spec.decoder.attention == 'bidirectional'
  np.testing.assert_allclose(again.encode(TEXTS), want, atol=1e-6)
  model.save(tmp_path / 'causal')  # a causal model's config.json stays transformers' own
  assert 'attention' not in json.loads((tmp_path / 'causal' / 'config.json').read_text())
