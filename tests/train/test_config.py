"""Config files load with get_config(arg) and typed command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedjax.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / 'configs').glob('*.py'))


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_names_its_command(path):
  cfg = load_config(str(path))
  assert 'get_config' in path.read_text()
  doc = path.read_text().split('"""')[1]
  assert 'python ' in doc and path.name in doc  # header comment = the command that runs it
  assert cfg is not None


def test_overrides_are_typed_and_checked():
  path = str(Path(__file__).resolve().parents[2] / 'configs' / 'minilm_scifact.py')
  cfg = load_config(path, ['--config.optim.lr=1e-5', '--config.steps=3',
                           '--config.loss.matryoshka_dims=(64, 32)'])
  assert cfg.optim.lr == 1e-5 and cfg.steps == 3 and tuple(cfg.loss.matryoshka_dims) == (64, 32)
  mrl = load_config(path.replace('minilm_scifact.py', 'minilm_scifact_mrl.py'))
  assert tuple(mrl.loss.matryoshka_dims) == (384, 256, 128, 64, 32)
  with pytest.raises(KeyError, match='optim.lrr'):
    load_config(path, ['--config.optim.lrr=1'])
  with pytest.raises(TypeError, match='steps'):
    load_config(path, ['--config.steps=abc'])
  with pytest.raises(ValueError, match='must look like'):
    load_config(path, ['--optim.lr=1'])
  with pytest.raises(FileNotFoundError):
    load_config('configs/nope.py')
