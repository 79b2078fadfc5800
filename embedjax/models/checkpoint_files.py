"""Reading the files of a model folder: JSON with line numbers in errors, and weight files.

Weights come from ``model.safetensors`` (or the shards a ``model.safetensors.index.json`` lists),
else from a PyTorch ``pytorch_model.bin``, which only torch can read: torch is imported lazily,
in :func:`read_torch_bin` alone, so embedjax runs without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def read_json(path: Path):
  """Parsed JSON of a file; a syntax error names the file and line."""
  try:
    return json.loads(Path(path).read_text(encoding='utf-8'))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}:{e.lineno}: invalid JSON ({e.msg})') from e


def read_torch_bin(path: Path) -> dict[str, np.ndarray]:
  """Tensors of a PyTorch ``.bin`` state dict as float32-or-native numpy arrays (needs torch)."""
  try:
    import torch  # optional: only this file format needs it
  except ImportError:
    raise ImportError(f'{path}: reading pytorch_model.bin needs torch (pip install torch), or '
                      'convert the checkpoint to model.safetensors') from None
  state = torch.load(str(path), weights_only=True, map_location='cpu')
  out = {}
  for name, tensor in state.items():
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
      tensor = tensor.float()
    out[name] = tensor.numpy()
  return out


def read_state_dict(folder: Path) -> tuple[dict[str, np.ndarray], str]:
  """(tensors by name, the file(s) they came from) of a model folder."""
  folder = Path(folder)
  single = folder / 'model.safetensors'
  if single.exists():
    return load_file(str(single)), str(single)
  index = folder / 'model.safetensors.index.json'
  if index.exists():
    weight_map = read_json(index).get('weight_map')
    if not isinstance(weight_map, dict):
      raise ValueError(f'{index}: no "weight_map" object')
    state = {}
    for shard in sorted(set(weight_map.values())):
      state.update(load_file(str(folder / shard)))
    return state, str(index)
  torch_bin = folder / 'pytorch_model.bin'
  if torch_bin.exists():
    return read_torch_bin(torch_bin), str(torch_bin)
  raise FileNotFoundError(f'{folder}: no model.safetensors, model.safetensors.index.json or '
                          'pytorch_model.bin')
