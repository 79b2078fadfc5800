"""Multi-vector (ColBERT) and sparse (SPLADE) training runs from a config: the config checks, a
few steps of a tiny run through the loop, and the exported head read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedjax.config import ConfigError, load_config
from embedjax.train import representation
from embedjax.train.loop import dry_build, model_spec, step_config, train

REPO = Path(__file__).resolve().parents[2]
TINY = ('--config.model.bert.num_hidden_layers=1', '--config.data.batch_size=4',
        '--config.data.query_len=8', '--config.data.doc_len=12', '--config.steps=2',
        '--config.ckpt_every=2', '--config.log_every=1', '--config.optim.decay=constant',
        '--config.eval_before=False')


def _config(*extra):
  return load_config(str(REPO / 'configs' / 'tiny_synthetic.py'), [*TINY, *extra])


def test_bad_combinations_are_one_line_errors():
  with pytest.raises(ConfigError, match="trains with loss.name 'info_nce'"):
    dry_build(_config('--config.model.representation=multi_vector', '--config.loss.name=cosent'))
  with pytest.raises(ConfigError, match='loss.matryoshka_dims: not with model.representation'):
    dry_build(_config('--config.model.representation=sparse', '--config.loss.matryoshka_dims=(8,)'))
  with pytest.raises(ConfigError, match="model.representation 'dense': not one of"):
    dry_build(_config('--config.model.representation=dense'))


def test_multi_vector_step_settings_come_from_the_tokenizer():
  cfg = _config('--config.model.representation=multi_vector')
  spec, tokenizer = model_spec(cfg.model)
  step = step_config(cfg, spec)
  vocab = tokenizer.vocab()
  assert (step.loss, step.representation, step.query_augment) == ('maxsim_info_nce',
                                                                   'multi_vector', 8)
  assert step.mask_token_id == vocab['[MASK]']
  assert vocab['.'] in step.skip_ids and vocab[','] in step.skip_ids and vocab['the'] not in step.skip_ids


@pytest.mark.parametrize('kind', ['multi_vector', 'sparse'])
def test_a_tiny_run_trains_and_exports_its_head(kind, tmp_path, monkeypatch):
  monkeypatch.setenv('EMBEDJAX_CACHE', str(tmp_path / 'cache'))
  extra = (['--config.model.token_dim=16'] if kind == 'multi_vector'
           else ['--config.loss.flops_query=0.01', '--config.loss.flops_doc=0.01',
                 '--config.loss.scale=1.0', '--config.loss.similarity=dot'])
  cfg = _config(f'--config.model.representation={kind}', *extra)
  built = dry_build(cfg)
  assert 'head' in built['state'].params
  summary = train(cfg, tmp_path / 'run', progress=False)
  assert summary['steps_done'] == 2
  rows = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert len(losses) == 2 and np.isfinite(losses).all()
  info, head = representation.load_head(tmp_path / 'run' / 'export')
  assert info['representation'] == kind
  trained = summary['state'].params['head']
  if kind == 'multi_vector':
    assert head['kernel'].shape == (32, 16) and info['query_length'] == 8
    np.testing.assert_array_equal(head['kernel'], np.asarray(trained['kernel']))
  else:
    assert head['bias'].shape == (30522,)
    np.testing.assert_array_equal(head['dense']['kernel'], np.asarray(trained['dense']['kernel']))
