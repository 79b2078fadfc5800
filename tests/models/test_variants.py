"""BERT-family variants (RoBERTa, XLM-RoBERTa, DistilBERT, ELECTRA) against transformers' own tiny
random-init models, prefixed checkpoints, and the clear errors for what is not implemented."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from embedjax.models.bert import BertConfig, BertEncoder
from embedjax.models.checkpoint_files import read_state_dict
from embedjax.models.pretrained import load_pretrained, params_from_hf, params_to_hf

from tiny_models import TINY, save_bert_with_tokenizer

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

VOCAB = 60


def _hf_config(kind: str):
  if kind == 'roberta':
    return transformers.RobertaConfig(vocab_size=VOCAB, type_vocab_size=1, **TINY)
  if kind == 'xlm-roberta':
    return transformers.XLMRobertaConfig(vocab_size=VOCAB, type_vocab_size=1, **TINY)
  if kind == 'distilbert':
    return transformers.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                         hidden_dim=64, max_position_embeddings=64)
  return transformers.ElectraConfig(vocab_size=VOCAB, embedding_size=16, **TINY)


def _batch(pad_id: int):
  rng = np.random.default_rng(0)
  ids = rng.integers(3, VOCAB, size=(3, 12)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 8:] = 0
  mask[2, 2:] = 0
  ids[mask == 0] = pad_id
  return ids, mask


@pytest.mark.parametrize('kind', ['roberta', 'xlm-roberta', 'distilbert', 'electra'])
def test_hidden_states_match_transformers(kind, tmp_path):
  torch.manual_seed(0)
  hf = transformers.AutoModel.from_config(_hf_config(kind)).eval()
  hf.save_pretrained(str(tmp_path))
  cfg = BertConfig.from_hf(json.loads((tmp_path / 'config.json').read_text()))
  assert cfg.model_type == kind
  state, source = read_state_dict(tmp_path)
  params, _ = params_from_hf(state, cfg, source)
  ids, mask = _batch(cfg.pad_token_id)
  ours = jax.jit(BertEncoder(cfg).apply)({'params': params}, ids, mask)
  with torch.no_grad():
    want = hf(input_ids=torch.from_numpy(ids).long(),
              attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(ours)[valid], want[valid], atol=1e-5)

  # Export side: our names and config.json load into the same transformers class, strictly.
  back = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(**cfg.to_hf()))
  assert type(back) is type(hf)
  exported = {k: torch.from_numpy(v) for k, v in params_to_hf(params, cfg).items()}
  missing, unexpected = back.load_state_dict(exported, strict=False)
  assert not unexpected and all('pooler' in m or 'position_ids' in m for m in missing), missing


@pytest.mark.parametrize('task_model,prefix', [('BertForMaskedLM', 'bert.'),
                                               ('RobertaForMaskedLM', 'roberta.')])
def test_prefixed_task_checkpoints_load_their_encoder(task_model, prefix):
  config = (transformers.BertConfig(vocab_size=VOCAB, **TINY) if prefix == 'bert.' else
            _hf_config('roberta'))
  torch.manual_seed(1)
  model = getattr(transformers, task_model)(config)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  assert any(k.startswith(prefix + 'embeddings.') for k in state)
  cfg = BertConfig.from_hf(config.to_dict())
  params, extra = params_from_hf(state, cfg)
  np.testing.assert_array_equal(params['word_embeddings']['embedding'],
                                state[prefix + 'embeddings.word_embeddings.weight'])
  assert not any(k.startswith(('lm_head', 'cls.')) for k in extra)  # task heads are dropped
  # A generic 'model.' prefix too.
  renamed = {'model.' + k: v for k, v in params_to_hf(params, cfg).items()}
  again, _ = params_from_hf(renamed, cfg)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, again)


def test_unsupported_model_types_are_named(tmp_path):
  with pytest.raises(ValueError, match="'mpnet' is not supported: MPNet adds a relative position"):
    BertConfig.from_hf(transformers.MPNetConfig(vocab_size=VOCAB, **TINY).to_dict())
  folder = save_bert_with_tokenizer(tmp_path / 'm')
  cfg = json.loads((folder / 'config.json').read_text())
  (folder / 'config.json').write_text(json.dumps({**cfg, 'model_type': 'gpt2'}))
  with pytest.raises(ValueError, match=r"config.json: model_type 'gpt2' is not supported "
                                       r"\(encoders: bert, .*; decoders: llama, mistral, qwen2, qwen3\)"):
    load_pretrained(folder)
