"""Import and export of decoder backbones (Llama, Mistral, Qwen2, Qwen3) in the Hugging Face layout.

A folder holds ``config.json``, ``model.safetensors`` or sharded ``model-*.safetensors`` with
``model.safetensors.index.json``, and ``tokenizer.json``. Checkpoints of causal LMs nest the
backbone under ``model.`` and add ``lm_head.weight``; embedding checkpoints (Qwen3-Embedding and
the like) store the bare ``LlamaModel``-style names. Both are read; the language-model head is not
used by an embedder and is dropped. Only numpy, safetensors and tokenizers are used.

Every failure names the file and the field or tensor: an unsupported architecture
(``config.json: model_type``), a shard the index lists but the folder lacks, a tensor missing or
of the wrong shape for ``config.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from embedjax.models.checkpoint_files import read_json
from embedjax.models.decoder import (DECODER_MODEL_TYPES, DecoderConfig, hf_layout,
                                     init_decoder_params, init_position_module)

_ANCHOR = 'embed_tokens.weight'
_HEADS = ('lm_head.weight', 'score.weight')


def is_decoder_config(hf: dict[str, Any]) -> bool:
  return hf.get('model_type') in DECODER_MODEL_TYPES


def read_decoder_config(folder: Path, **overrides) -> DecoderConfig:
  """The DecoderConfig of ``folder/config.json``; errors name the file."""
  path = Path(folder) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{folder}: no config.json')
  try:
    return DecoderConfig.from_hf(read_json(path), **overrides)
  except KeyError as e:
    raise ValueError(f'{path}: missing field {e.args[0]!r}') from None
  except (ValueError, TypeError) as e:
    raise ValueError(f'{path}: {e}') from None


def shard_files(folder: Path) -> list[Path]:
  """The safetensors files of a folder: model.safetensors, or the shards its index lists (each
  checked to exist, so a missing shard fails before any tensor is read)."""
  folder = Path(folder)
  single = folder / 'model.safetensors'
  if single.exists():
    return [single]
  index = folder / 'model.safetensors.index.json'
  if not index.exists():
    raise FileNotFoundError(f'{folder}: no model.safetensors or model.safetensors.index.json')
  weight_map = read_json(index).get('weight_map')
  if not isinstance(weight_map, dict):
    raise ValueError(f'{index}: field "weight_map" is missing or not an object')
  shards = [folder / name for name in sorted(set(weight_map.values()))]
  for shard in shards:
    if not shard.exists():
      raise FileNotFoundError(f'{index}: weight_map names shard {shard.name!r}, which is not in '
                              f'{folder}')
  return shards


def _backbone_name(name: str) -> str | None:
  """A checkpoint tensor's name in the backbone (``model.`` stripped), None for heads."""
  if name in _HEADS:
    return None
  return name[len('model.'):] if name.startswith('model.') else name


def load_decoder_params(folder: Path, cfg: DecoderConfig, *, place=None) -> dict:
  """Reads a folder's weights into a params pytree, shard by shard.

  Args:
    folder: the model folder. cfg: its config (decides which tensors must exist).
    place: optional ``fn(path tuple, numpy array) -> array`` called on each tensor as soon as it is
      read (e.g. ``jax.device_put`` onto its sharding), so that a large checkpoint is never held
      whole on the host; default: keep the numpy array (in cfg's param dtype).
  Returns:
    The params pytree of :class:`embedjax.models.decoder.Decoder`.
  """
  from safetensors import safe_open
  layout = {hf: (path, transpose) for hf, path, transpose in hf_layout(cfg)}
  expected = jax.eval_shape(lambda: init_decoder_params(cfg, jax.random.key(0)))
  dtype = np.dtype(cfg.param_dtype) if cfg.param_dtype == 'float32' else jax.numpy.bfloat16
  params: dict = {}
  found: set[str] = set()
  for shard in shard_files(folder):
    with safe_open(str(shard), framework='numpy') as f:
      for name in f.keys():
        hf_name = _backbone_name(name)
        if hf_name is None or hf_name not in layout:
          continue
        path, transpose = layout[hf_name]
        value = f.get_tensor(name)
        value = value.T if transpose else value
        want = _leaf(expected, path).shape
        if value.shape != want:
          raise ValueError(f'{shard}: tensor {name!r} has shape {tuple(value.shape)}, config.json '
                           f'implies {tuple(want)}')
        value = np.ascontiguousarray(value.astype(dtype))
        node = params
        for key in path[:-1]:
          node = node.setdefault(key, {})
        node[path[-1]] = place(path, value) if place else value
        found.add(hf_name)
  # A model first given a learned position module (its folder has none of the module's tensors)
  # starts from the module's init with a fixed key: CLEX from its untrained dynamics (NTK-aware
  # scaling at alpha = 2t - 1 whatever ``up`` is, since ``down`` is zero), SeqPE from GPT-2's init.
  for module in ('rope_clex', 'seqpe'):
    names = [hf for hf, (path, _) in layout.items() if path[0] == module]
    if names and not any(hf in found for hf in names):
      init = init_position_module(cfg, module, jax.random.key(0))
      params[module] = jax.tree_util.tree_map_with_path(
          lambda path, v, m=module: place((m, *(k.key for k in path)), np.asarray(v, dtype))
          if place else np.asarray(v, dtype), init)
      found.update(names)
  missing = [hf for hf in layout if hf not in found]
  if missing:
    raise KeyError(f'{folder}: missing tensor {missing[0]!r} ({len(missing)} missing) for a '
                   f'{cfg.num_hidden_layers}-layer {cfg.model_type}')
  return params


def _leaf(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def decoder_params_to_hf(params, cfg: DecoderConfig) -> dict[str, np.ndarray]:
  """The params as a transformers ``*Model`` state dict (float32, contiguous, bare names)."""
  state = {}
  for hf_name, path, transpose in hf_layout(cfg):
    value = np.asarray(jax.device_get(_leaf(params, path)), dtype=np.float32)
    state[hf_name] = np.ascontiguousarray(value.T if transpose else value)
  return state
