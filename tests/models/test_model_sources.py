"""Where models come from: the local Hugging Face cache (offline) and pytorch_model.bin files."""

from __future__ import annotations

import builtins
import os

import jax
import numpy as np
import pytest

from embedjax.models import checkpoint_files
from embedjax.models.pretrained import load_pretrained, load_spec, resolve_model_dir

from tiny_models import save_bert_with_tokenizer

REPO = 'sentence-transformers/all-MiniLM-L6-v2'


def _fake_cache(root, source, revisions=('abc123',), ref='abc123'):
  """models--ORG--NAME/snapshots/REV/ with symlinks to ``source``'s files, as huggingface_hub lays out."""
  repo = root / ('models--' + REPO.replace('/', '--'))
  for rev in revisions:
    snap = repo / 'snapshots' / rev
    snap.mkdir(parents=True)
    for f in source.iterdir():
      os.symlink(f, snap / f.name)
  if ref:
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(ref)
  return repo


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  return save_bert_with_tokenizer(tmp_path_factory.mktemp('tiny') / 'bert')


def test_hub_cache_env_vars_in_order(tmp_path, monkeypatch, tiny):
  for var in ('HF_HUB_CACHE', 'HF_HOME'):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  default = _fake_cache(tmp_path / 'home' / '.cache' / 'huggingface' / 'hub', tiny)
  assert resolve_model_dir(REPO) == default / 'snapshots' / 'abc123'
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf_home'))
  home = _fake_cache(tmp_path / 'hf_home' / 'hub', tiny, revisions=('r1', 'r2'), ref='r2')
  assert resolve_model_dir(REPO) == home / 'snapshots' / 'r2'
  monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hub_cache'))
  hub = _fake_cache(tmp_path / 'hub_cache', tiny, revisions=('only',), ref=None)
  assert resolve_model_dir(REPO) == hub / 'snapshots' / 'only'
  spec, _, folder = load_spec(REPO)
  assert folder == hub / 'snapshots' / 'only' and spec.bert.hidden_size == 32


def test_cached_minilm_loads_like_the_packaged_one(tmp_path, monkeypatch, minilm):
  monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path))
  _fake_cache(tmp_path, resolve_model_dir('all-MiniLM-L6-v2'))
  model = load_pretrained(REPO)
  assert model.spec == minilm.spec
  jax.tree_util.tree_map(np.testing.assert_array_equal, model.params, minilm.params)


def test_unknown_name_says_where_it_looked(tmp_path, monkeypatch):
  monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path))
  with pytest.raises(FileNotFoundError) as e:
    resolve_model_dir('org/not-cached')
  message = str(e.value)
  assert '\n' not in message and 'nor a folder' in message
  assert str(tmp_path / 'models--org--not-cached') in message


def _bin_folder(tmp_path, tiny):
  """The tiny model with its weights as pytorch_model.bin only."""
  import shutil

  import torch
  from safetensors.numpy import load_file

  folder = tmp_path / 'bin'
  shutil.copytree(tiny, folder)
  state = load_file(str(folder / 'model.safetensors'))
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, folder / 'pytorch_model.bin')
  (folder / 'model.safetensors').unlink()
  return folder


def test_pytorch_bin_loads_through_torch(tmp_path, tiny):
  pytest.importorskip('torch')
  folder = _bin_folder(tmp_path, tiny)
  from_bin = load_pretrained(folder)
  from_safetensors = load_pretrained(tiny)
  jax.tree_util.tree_map(np.testing.assert_array_equal, from_bin.params, from_safetensors.params)


def test_pytorch_bin_without_torch_says_what_to_do(tmp_path, tiny, monkeypatch):
  pytest.importorskip('torch')
  folder = _bin_folder(tmp_path, tiny)
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == 'torch' or name.startswith('torch.'):
      raise ImportError('No module named torch')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_torch)
  with pytest.raises(ImportError, match=r'pytorch_model.bin: reading pytorch_model.bin needs torch '
                                        r'\(pip install torch\), or convert .* to model.safetensors'):
    checkpoint_files.read_state_dict(folder)
