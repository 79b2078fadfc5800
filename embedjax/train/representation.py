"""What a training run makes of a text besides one vector: the config's ``model.representation``
turned into the step's settings, the head's initial params, and its export.

  'multi_vector'  ColBERT token vectors: params['head'] = {'kernel': (H, model.token_dim)} (new),
                  queries padded with [MASK] tokens (``model.query_augment``), documents'
                  punctuation left out of MaxSim (``model.skip_punctuation``); loss InfoNCE over
                  MaxSim (the step's 'maxsim_info_nce').
  'sparse'        SPLADE weights: params['head'] = BERT's MLM head, read from the pretrained
                  folder when it has one ('cls.predictions.*'), else newly initialised; loss
                  InfoNCE over dot products of the weights plus the FLOPS terms
                  (``loss.flops_query``, ``loss.flops_doc``).

The export writes, beside the sentence-transformers folder of the encoder, ``representation.json``
(the kind and its settings) and ``representation_head.safetensors`` (the head, '/'-joined names);
:func:`load_head` reads them back.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import jax
import ml_collections
import numpy as np

from embedjax.config import ConfigError
from embedjax.io import atomic_write_text
from embedjax.models.spec import EmbedderSpec
from embedjax.models.tokenizer import TextTokenizer

SETTINGS_FILE = 'representation.json'
HEAD_FILE = 'representation_head.safetensors'
MASK_TOKENS = ('[MASK]', '<mask>')


def kind(cfg: ml_collections.ConfigDict) -> str:
  return str(cfg.model.representation)


def mask_token_id(tokenizer: TextTokenizer) -> int:
  vocab = tokenizer.vocab()
  for token in MASK_TOKENS:
    if token in vocab:
      return int(vocab[token])
  raise ConfigError(f'model.query_augment: the tokenizer has no mask token (looked for '
                    f'{list(MASK_TOKENS)}); set model.query_augment=False')


def punctuation_ids(tokenizer: TextTokenizer) -> tuple[int, ...]:
  """Ids of the tokens that are one ASCII punctuation character (ColBERT's skiplist)."""
  vocab = tokenizer.vocab()
  return tuple(sorted(int(vocab[c]) for c in string.punctuation if c in vocab))


def step_settings(cfg: ml_collections.ConfigDict, tokenizer: TextTokenizer) -> dict:
  """The StepConfig fields of ``cfg``'s representation ({} for 'single')."""
  k = kind(cfg)
  if k == 'multi_vector':
    return dict(representation=k, loss='maxsim_info_nce', loss_kwargs=(),
                query_augment=int(cfg.data.query_len) if cfg.model.query_augment else 0,
                mask_token_id=mask_token_id(tokenizer) if cfg.model.query_augment else 0,
                skip_ids=punctuation_ids(tokenizer) if cfg.model.skip_punctuation else ())
  if k == 'sparse':
    return dict(representation=k,
                flops_weights=(float(cfg.loss.flops_query), float(cfg.loss.flops_doc)))
  return {}


def _hidden_size(spec: EmbedderSpec) -> int:
  return spec.bert.hidden_size if spec.bert is not None else spec.decoder.hidden_size


def _pretrained_mlm_head(cfg: ml_collections.ConfigDict, spec: EmbedderSpec):
  """BERT's MLM head from the pretrained folder of ``model.init``, or None where it has none."""
  from embedjax.models.checkpoint_files import read_state_dict
  from embedjax.models.pretrained import resolve_model_dir
  from embedjax.models.splade import mlm_head_from_hf
  init_kind, _, name = cfg.model.init.partition(':')
  if init_kind != 'pretrained':
    return None
  folder = resolve_model_dir(name)
  try:
    state, source = read_state_dict(folder)
  except FileNotFoundError:
    return None
  return mlm_head_from_hf(state, spec.bert, source)


def init_head(cfg: ml_collections.ConfigDict, spec: EmbedderSpec, key: jax.Array,
              encoder_params=None):
  """The head's initial params, or None for 'single'. A new MLM head starts sparse from the
  encoder's word embeddings (``encoder_params``; :func:`embedjax.models.splade.init_mlm_head`)."""
  k = kind(cfg)
  if k == 'multi_vector':
    from embedjax.models.late_interaction import init_head as init_projection
    return init_projection(key, _hidden_size(spec), int(cfg.model.token_dim))
  if k == 'sparse':
    if spec.bert is None:
      raise ConfigError("model.representation 'sparse' needs a BERT-family encoder (an MLM head)")
    from embedjax.models.splade import init_mlm_head
    head = _pretrained_mlm_head(cfg, spec)
    if head is not None:
      return head
    embeddings = None if encoder_params is None else encoder_params['word_embeddings']['embedding']
    return init_mlm_head(key, spec.bert, embeddings)
  return None


def settings(cfg: ml_collections.ConfigDict, tokenizer: TextTokenizer) -> dict:
  """What ``representation.json`` records: the kind and how texts are prepared."""
  out = {'representation': kind(cfg)}
  step = step_settings(cfg, tokenizer)
  if out['representation'] == 'multi_vector':
    out.update(token_dim=int(cfg.model.token_dim), query_length=step['query_augment'],
               mask_token_id=step['mask_token_id'], skip_ids=list(step['skip_ids']))
  return out


def export(folder: Path, cfg: ml_collections.ConfigDict, tokenizer: TextTokenizer, head) -> None:
  """Writes the head and its settings into an exported model folder."""
  from safetensors.numpy import save_file
  from embedjax.train.sharding import path_str
  flat = {path_str(p): np.asarray(jax.device_get(x), np.float32)
          for p, x in jax.tree_util.tree_flatten_with_path(head)[0]}
  tmp = folder / (HEAD_FILE + '.tmp')
  save_file(flat, str(tmp))
  tmp.replace(folder / HEAD_FILE)
  atomic_write_text(folder / SETTINGS_FILE, json.dumps(settings(cfg, tokenizer), indent=1) + '\n')


def load_head(folder: str | Path) -> tuple[dict, dict] | None:
  """(settings, head params) of an exported multi-vector or sparse model, or None for a
  single-vector folder."""
  from safetensors.numpy import load_file
  folder = Path(folder)
  if not (folder / SETTINGS_FILE).is_file():
    return None
  info = json.loads((folder / SETTINGS_FILE).read_text())
  head: dict = {}
  for name, value in load_file(str(folder / HEAD_FILE)).items():
    node = head
    *parents, leaf = name.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return info, head
