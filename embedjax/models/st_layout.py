"""The sentence-transformers folder layout, read and written as a whole, for any backbone.

A sentence-transformers model folder lists its modules in ``modules.json`` (each with a type and
a subfolder): a Transformer (the backbone: whatever architecture its ``config.json`` names, with
``sentence_bert_config.json`` beside it), then Pooling (``1_Pooling/config.json``), optional Dense
layers (``2_Dense/config.json`` + weights), optional Normalize. ``config_sentence_transformers.json``
holds the prompts, the default prompt name and the similarity function. This module turns those
files into an :class:`STLayout` and back; it knows nothing about any backbone, so encoder and
decoder models share it. Dense weights are read here (they do not depend on the backbone).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from embedjax.models.checkpoint_files import read_json, read_state_dict
from embedjax.models.spec import DenseSpec

SIMILARITY_FNS = ('cosine', 'dot', 'euclidean', 'manhattan')
# sentence-transformers pooling mode names <-> embedjax's.
POOLING_FROM_ST = {'cls': 'cls', 'mean': 'mean', 'max': 'max', 'weightedmean': 'weighted_mean',
                   'lasttoken': 'last_token', 'mean_sqrt_len_tokens': 'mean_sqrt_len'}
POOLING_TO_ST = {v: k for k, v in POOLING_FROM_ST.items()}
# The legacy boolean keys of 1_Pooling/config.json (still read by every version).
_LEGACY_POOLING_KEYS = {
    'pooling_mode_cls_token': 'cls', 'pooling_mode_max_tokens': 'max',
    'pooling_mode_mean_tokens': 'mean', 'pooling_mode_mean_sqrt_len_tokens': 'mean_sqrt_len_tokens',
    'pooling_mode_weightedmean_tokens': 'weightedmean', 'pooling_mode_lasttoken': 'lasttoken',
}
# torch activation classes a Dense config may name <-> embedjax's names.
ACTIVATION_FROM_TORCH = {
    'torch.nn.modules.linear.Identity': 'identity', 'torch.nn.modules.activation.Tanh': 'tanh',
    'torch.nn.modules.activation.ReLU': 'relu', 'torch.nn.modules.activation.GELU': 'gelu',
    'torch.nn.modules.activation.Sigmoid': 'sigmoid', 'torch.nn.modules.activation.SiLU': 'silu',
}
ACTIVATION_TO_TORCH = {v: k for k, v in ACTIVATION_FROM_TORCH.items()}
# Modules with no effect at inference.
_INERT_MODULES = ('Dropout',)


@dataclasses.dataclass(frozen=True)
class STLayout:
  """What a model folder says besides its backbone's own files.

  ``pooling`` is None when the folder is a plain Hugging Face model (no modules.json); the other
  fields then keep their defaults unless config_sentence_transformers.json is present.
  """
  backbone_dir: Path                   # folder of the backbone's config.json, weights, tokenizer
  pooling: str | None = None           # embedjax pooling mode name
  include_prompt: bool = True
  dense: tuple[DenseSpec, ...] = ()
  dense_params: tuple[dict[str, np.ndarray], ...] = ()  # {'kernel': (in, out), 'bias'?: (out,)}
  normalize: bool = False
  max_seq_length: int | None = None
  do_lower_case: bool = False
  prompts: dict[str, str] = dataclasses.field(default_factory=dict)
  default_prompt_name: str | None = None
  similarity_fn: str = 'cosine'


def _module_kind(module: dict, where: str) -> str:
  kind = module.get('type')
  if not isinstance(kind, str) or not kind:
    raise ValueError(f'{where}: module {module.get("idx", "?")} has no "type"')
  return kind.rsplit('.', 1)[-1]


def _read_pooling(path: Path) -> tuple[str, bool]:
  cfg = read_json(path)
  if 'pooling_mode' in cfg:
    raw = cfg['pooling_mode']
    modes = [raw] if isinstance(raw, str) else list(raw)
  else:
    modes = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if cfg.get(key)] or ['mean']
  if len(modes) != 1:
    raise ValueError(f'{path}: pooling_mode {modes} concatenates several poolings; embedjax '
                     'supports exactly one')
  if modes[0] not in POOLING_FROM_ST:
    raise ValueError(f'{path}: pooling_mode {modes[0]!r} is not one of {sorted(POOLING_FROM_ST)}')
  return POOLING_FROM_ST[modes[0]], bool(cfg.get('include_prompt', True))


def _read_dense(folder: Path) -> tuple[DenseSpec, dict[str, np.ndarray]]:
  config_path = folder / 'config.json'
  cfg = read_json(config_path)
  for key in ('in_features', 'out_features'):
    if not isinstance(cfg.get(key), int):
      raise ValueError(f'{config_path}: field {key!r} must be an integer, got {cfg.get(key)!r}')
  if cfg.get('use_residual'):
    raise ValueError(f'{config_path}: use_residual=true (a residual Dense) is not supported')
  if cfg.get('module_input_name', 'sentence_embedding') != 'sentence_embedding':
    raise ValueError(f'{config_path}: module_input_name {cfg["module_input_name"]!r} is not '
                     "supported (only 'sentence_embedding')")
  torch_name = cfg.get('activation_function', 'torch.nn.modules.activation.Tanh')
  if torch_name not in ACTIVATION_FROM_TORCH:
    raise ValueError(f'{config_path}: activation_function {torch_name!r} is not one of '
                     f'{sorted(ACTIVATION_FROM_TORCH)}')
  layer = DenseSpec(in_features=cfg['in_features'], out_features=cfg['out_features'],
                    bias=bool(cfg.get('bias', True)), activation=ACTIVATION_FROM_TORCH[torch_name])
  state, source = read_state_dict(folder)
  weight = state.get('linear.weight')
  want = (layer.out_features, layer.in_features)
  if weight is None or weight.shape != want:
    raise ValueError(f'{source}: tensor linear.weight has shape '
                     f'{None if weight is None else weight.shape}, config.json implies {want}')
  params = {'kernel': np.ascontiguousarray(np.asarray(weight, np.float32).T)}
  if layer.bias:
    bias = state.get('linear.bias')
    if bias is None or bias.shape != (layer.out_features,):
      raise ValueError(f'{source}: tensor linear.bias has shape '
                       f'{None if bias is None else bias.shape}, config.json implies '
                       f'{(layer.out_features,)}')
    params['bias'] = np.asarray(bias, np.float32)
  return layer, params


def _read_model_config(folder: Path) -> dict[str, Any]:
  """prompts / default_prompt_name / similarity_fn from config_sentence_transformers.json."""
  path = folder / 'config_sentence_transformers.json'
  if not path.exists():
    return {}
  cfg = read_json(path)
  prompts = cfg.get('prompts') or {}
  if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
    raise ValueError(f'{path}: "prompts" must map names to strings, got {prompts!r}')
  default = cfg.get('default_prompt_name')
  if default is not None and default not in prompts:
    raise ValueError(f'{path}: default_prompt_name {default!r} is not one of the prompts '
                     f'{sorted(prompts)}')
  similarity = cfg.get('similarity_fn_name') or 'cosine'
  if similarity not in SIMILARITY_FNS:
    raise ValueError(f'{path}: similarity_fn_name {similarity!r} is not one of {SIMILARITY_FNS}')
  return {'prompts': dict(prompts), 'default_prompt_name': default, 'similarity_fn': similarity}


def read_layout(folder: Path) -> STLayout:
  """Reads a model folder's sentence-transformers files (none needed for a plain HF folder)."""
  folder = Path(folder)
  model_config = _read_model_config(folder)
  modules_path = folder / 'modules.json'
  if not modules_path.exists():
    return STLayout(backbone_dir=folder, **model_config)
  modules = read_json(modules_path)
  if not isinstance(modules, list) or not modules:
    raise ValueError(f'{modules_path}: expected a non-empty list of modules')
  kinds = [_module_kind(m, str(modules_path)) for m in modules]
  if kinds[0] != 'Transformer' or kinds.count('Transformer') != 1:
    raise ValueError(f'{modules_path}: the first module, and only it, must be a Transformer '
                     f'(got {kinds})')
  backbone = folder / modules[0].get('path', '')
  fields: dict[str, Any] = {'backbone_dir': backbone, **model_config}
  st_cfg_path = backbone / 'sentence_bert_config.json'
  if st_cfg_path.exists():
    st_cfg = read_json(st_cfg_path)
    fields['max_seq_length'] = st_cfg.get('max_seq_length')
    fields['do_lower_case'] = bool(st_cfg.get('do_lower_case', False))
  dense, dense_params, stage = [], [], 'transformer'
  for module, kind in zip(modules[1:], kinds[1:]):
    where = f'{modules_path}: module {module.get("idx", "?")} ({kind})'
    sub = folder / module.get('path', '')
    if kind in _INERT_MODULES:
      continue
    if kind == 'Pooling':
      if stage != 'transformer':
        raise ValueError(f'{where}: a second Pooling, or Pooling after {stage}, is not supported')
      fields['pooling'], fields['include_prompt'] = _read_pooling(sub / 'config.json')
      stage = 'pooling'
    elif kind == 'Dense':
      if stage not in ('pooling', 'dense'):
        raise ValueError(f'{where}: Dense must follow Pooling (and come before Normalize)')
      layer, params = _read_dense(sub)
      dense.append(layer)
      dense_params.append(params)
      stage = 'dense'
    elif kind == 'Normalize':
      if stage not in ('pooling', 'dense'):
        raise ValueError(f'{where}: Normalize must follow Pooling')
      fields['normalize'] = True
      stage = 'normalize'
    else:
      raise ValueError(f'{where}: module type {module["type"]!r} is not supported (supported: '
                       f'Transformer, Pooling, Dense, Normalize, Dropout)')
  if stage == 'transformer':
    raise ValueError(f'{modules_path}: no Pooling module')
  return STLayout(dense=tuple(dense), dense_params=tuple(dense_params), **fields)


def write_layout(folder: Path, layout: STLayout, *, embedding_dim: int) -> None:
  """Writes the sentence-transformers files of ``layout`` into ``folder`` (backbone at its root).

  Args:
    folder: an existing folder, which receives modules.json, sentence_bert_config.json,
      config_sentence_transformers.json and one subfolder per Pooling / Dense / Normalize module.
    layout: what to write (``backbone_dir`` is ignored; the backbone is the folder itself).
    embedding_dim: the backbone's hidden size (the Pooling module's input width).
  """
  from safetensors.numpy import save_file

  write = lambda path, obj: path.write_text(json.dumps(obj, indent=2) + '\n', encoding='utf-8')
  modules = [{'idx': 0, 'name': '0', 'path': '', 'type': 'sentence_transformers.models.Transformer'}]

  def add(kind: str) -> Path:
    idx = len(modules)
    modules.append({'idx': idx, 'name': str(idx), 'path': f'{idx}_{kind}',
                    'type': f'sentence_transformers.models.{kind}'})
    (folder / f'{idx}_{kind}').mkdir()
    return folder / f'{idx}_{kind}'

  pooling = add('Pooling')
  pooling_cfg = {'word_embedding_dimension': embedding_dim, 'include_prompt': layout.include_prompt}
  pooling_cfg.update({key: mode == POOLING_TO_ST[layout.pooling or 'mean']
                      for key, mode in _LEGACY_POOLING_KEYS.items()})
  write(pooling / 'config.json', pooling_cfg)
  for layer, params in zip(layout.dense, layout.dense_params, strict=True):
    sub = add('Dense')
    write(sub / 'config.json', {'in_features': layer.in_features, 'out_features': layer.out_features,
                                'bias': layer.bias,
                                'activation_function': ACTIVATION_TO_TORCH[layer.activation]})
    state = {'linear.weight': np.ascontiguousarray(np.asarray(params['kernel'], np.float32).T)}
    if layer.bias:
      state['linear.bias'] = np.ascontiguousarray(np.asarray(params['bias'], np.float32))
    save_file(state, str(sub / 'model.safetensors'), metadata={'format': 'pt'})
  if layout.normalize:
    add('Normalize')
  write(folder / 'modules.json', modules)
  write(folder / 'sentence_bert_config.json',
        {'max_seq_length': layout.max_seq_length, 'do_lower_case': layout.do_lower_case})
  write(folder / 'config_sentence_transformers.json',
        {'model_type': 'SentenceTransformer', 'prompts': dict(layout.prompts),
         'default_prompt_name': layout.default_prompt_name,
         'similarity_fn_name': layout.similarity_fn})
