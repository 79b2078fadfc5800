"""Every config in configs/ builds its whole run abstractly, from a locked, frozen config whose
``.get`` raises: library code reads config fields directly, and defaults live in the configs.
The one entry convention (``embedjax.config``): overrides, unknown fields, wrong types."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys

import jax
import ml_collections
import pytest

from embedjax.config import ConfigError, config_overrides, leaf_paths, load_config
from embedjax.paths import repo_root

REPO = repo_root()
CONFIG_DIR = REPO / 'configs'
TRAIN = 'train'
# Each config file, its ':arg' variants, and what runs it ('train' = embedjax train, else the
# experiments/ module). A config file missing here fails test_every_config_is_listed.
RUNS = {
    'tiny_synthetic.py': ([None], TRAIN),
    'decoder_tiny.py': ([None], TRAIN),
    'decoder_qwen3_0p6b.py': ([None], TRAIN),
    'decoder_llama_8b.py': ([None], TRAIN),
    'minilm_scifact.py': ([None], TRAIN),
    'minilm_scifact_mrl.py': ([None], TRAIN),
    'limit_finetune.py': (['train', 'test'], TRAIN),
    'limit_eval.py': ([None, 'quick'], 'limit_eval'),
    'limit_free_embedding.py': ([None, 'quick', '48', 'm2'], 'limit_free_embedding'),
    'storage_tradeoff.py': ([None, 'quick'], 'storage_tradeoff'),
    'table_compression.py': ([None, 'memory', 'criteo'], 'table_compression'),
    'table_memory_pipelines.py': ([None], 'table_memory_pipelines'),
    'mteb_scifact.py': ([None, 'quick'], 'mteb_scifact'),
    'llm_embedders.py': ([None], 'llm_embedders'),
    'distill_leaf.py': ([None], TRAIN),
    'distill_leaf_decoder.py': ([], TRAIN),  # dry-built by tests/train/test_distillation.py
    'multitask_scifact.py': ([None], TRAIN),
    'two_stage_stage1.py': ([None], TRAIN),
    # multitask_scifact.py's tasks from stage 1's weights: its tasks are dry-built above, its
    # start by tests/train/test_multitask.py
    'two_stage_stage2.py': ([], TRAIN),
    # the mined cells read a file the study mines first: not dry-built here
    'recipes.py': (['stsb_cosent', 'scifact_hardness'], TRAIN),
    'elastic_retention.py': (['long_lr_5x_small_dims_3x'], TRAIN),
    'pruning.py': ([None, 'gaprune_50_recovered', 'structured_heads_50'], 'pruning'),
    'adapters.py': ([None, 'adr_both', 'qdc'], 'adapters'),
    'beyond_single_vector.py': ([None, 'bm25', 'single_pretrained', 'single_finetuned', 'sparse'],
                                'beyond_single_vector'),
    'long_context.py': ([None, 'quick'], 'long_context'),
    # needs a RoPE model's folder: dry-built by tests/experiments/test_long_context_study.py
    'long_context_train.py': ([], TRAIN),
    'merging.py': (['uniform_soup', 'self_positioning'], 'merging'),
    'merging_specialists.py': (['mrpc', 'sick'], TRAIN),
}
CASES = [(name, arg) for name, (args, _) in RUNS.items() for arg in args]


def _experiment(name: str):
  spec = importlib.util.spec_from_file_location(f'experiments.{name}',
                                                REPO / 'experiments' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _no_get(self, key, default=None):
  raise AssertionError(f'config read with a default: .get({key!r}, {default!r}); declare the '
                       'field in the config and read it directly')


@pytest.fixture
def strict_get(monkeypatch):
  # FrozenConfigDict inherits .get from ConfigDict: one patch covers both.
  monkeypatch.setattr(ml_collections.ConfigDict, 'get', _no_get)


def test_every_config_is_listed():
  assert sorted(p.name for p in CONFIG_DIR.glob('*.py')) == sorted(RUNS)


def test_strict_get_raises(strict_get):
  frozen = ml_collections.FrozenConfigDict({'a': {'b': 1}})
  with pytest.raises(AssertionError, match='with a default'):
    frozen.a.get('b', 2)


@pytest.mark.parametrize('name,arg', CASES, ids=[f'{n}:{a}' if a else n for n, a in CASES])
def test_config_dry_builds_frozen(name, arg, strict_get):
  path = CONFIG_DIR / name
  doc = ast.get_docstring(ast.parse(path.read_text()))
  assert doc and 'python -m ' in doc and name in doc  # the docstring names the command
  cfg = load_config(f'{path}:{arg}' if arg else str(path))
  assert cfg.is_locked
  frozen = ml_collections.FrozenConfigDict(cfg)
  runner = RUNS[name][1]
  if runner == TRAIN:
    from embedjax.cli import training_sources
    from embedjax.train.loop import dry_build
    out = dry_build(frozen, training_sources())
    assert out['param_count'] > 0 and 'loss' in out['metrics']
    if 'target' in out['batch']:  # distillation: texts and teacher embeddings, no documents
      assert out['batch']['target'].shape[0] == cfg.data.batch_size
    else:
      assert out['batch']['doc_ids'].shape == (cfg.data.batch_size, cfg.data.doc_len)
  elif runner == 'table_compression':
    # The benchmark's vocabularies come from its data: a MovieLens-shaped stand-in here.
    out = _experiment(runner).dry_run(frozen, vocab=(943, 1682, 2, 7, 21, 19))
    assert out
  else:
    assert _experiment(runner).dry_run(frozen)


def test_train_base_config_declares_and_comments_every_field():
  from embedjax.train import base_config as bc
  source = (REPO / 'embedjax' / 'train' / 'base_config.py').read_text().splitlines()
  declared = [line for line in source if line.lstrip().startswith('c.') and ' = ' in line]
  assert declared and all('#' in line for line in declared), [l for l in declared if '#' not in l]
  fields = leaf_paths(bc.base_config())
  assert {'loss.scale', 'optim.b1', 'ckpt_keep', 'async_checkpointing', 'export', 'eval_before',
          'model.pooling', 'model.max_seq_length', 'loss.matryoshka_weights'} <= set(fields)
  # The loss block's defaults are the loss function's own (one place).
  from embedjax.losses.contrastive import DEFAULT_SCALE
  assert fields['loss.scale'] == DEFAULT_SCALE


@pytest.mark.parametrize('name', [n for n, (_, runner) in RUNS.items() if runner != TRAIN])
def test_experiment_configs_comment_every_field(name):
  # An experiment's config file is its base: each field it declares says what it means.
  lines = (CONFIG_DIR / name).read_text().splitlines()
  declared = [i for i, l in enumerate(lines) if re.match(r'  c\.[a-z_.]+ = ', l)]
  bare = [lines[i] for i in declared if '#' not in lines[i] and not lines[i - 1].lstrip().startswith('#')]
  assert declared and not bare, bare


def test_check_config_names_missing_and_unknown_fields():
  from embedjax.train.base_config import base_config, check_config, eval_block
  cfg = base_config()
  check_config(cfg)
  del cfg.optim['b1']
  with pytest.raises(ConfigError, match="lacks field 'optim.b1'"):
    check_config(cfg)
  cfg = base_config()
  cfg.optim.lrr = 1.0
  with pytest.raises(ConfigError, match="unknown config field 'optim.lrr' \\(closest: optim.lr\\)"):
    check_config(cfg)
  cfg = base_config()
  cfg.evals.scifact = dict(dims=(64,))
  with pytest.raises(ConfigError, match='evals.scifact must have exactly'):
    check_config(cfg)
  cfg.evals.scifact = eval_block(dims=(64,))
  check_config(cfg)


def test_overrides_both_forms_typed_and_checked():
  path = str(CONFIG_DIR / 'minilm_scifact.py')
  cfg = load_config(path, ['--config.optim.lr=1e-5', '--config.steps', '3',
                           '--config.loss.matryoshka_dims=(64, 32)'])
  assert cfg.optim.lr == 1e-5 and cfg.steps == 3 and tuple(cfg.loss.matryoshka_dims) == (64, 32)
  mrl = load_config(str(CONFIG_DIR / 'minilm_scifact_mrl.py'))
  assert tuple(mrl.loss.matryoshka_dims) == (384, 256, 128, 64, 32)
  with pytest.raises(ConfigError, match=r"unknown config field 'optim.lrr' \(closest: optim.lr\)"):
    load_config(path, ['--config.optim.lrr=1'])
  with pytest.raises(ConfigError, match='--config.steps: expected int'):
    load_config(path, ['--config.steps=abc'])
  with pytest.raises(ConfigError, match='expected tuple of int'):
    load_config(path, ['--config.evals.scifact.dims=a'])
  with pytest.raises(ConfigError, match='no such file'):
    load_config('configs/nope.py')
  assert config_overrides(['--only', 'x', '--config.a=1', '--config.b', '2']) == [
      '--config.a=1', '--config.b', '2']


def test_cli_unknown_override_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'embedjax.cli', 'train', '--config', 'configs/tiny_synthetic.py',
       '--workdir', str(tmp_path), '--config.optim.lrr=1e-3'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip() == ("embedjax train: configs/tiny_synthetic.py: unknown config field "
                                 "'optim.lrr' (closest: optim.lr)")
  assert not list(tmp_path.iterdir())  # nothing was started


def test_dry_build_of_a_model_larger_than_this_machine():
  # ~4B parameters: 16 GB of float32 params, 48 GB with Adam's moments, twice this machine's
  # memory. Built abstractly only.
  from embedjax.train.loop import dry_build
  cfg = load_config(str(CONFIG_DIR / 'tiny_synthetic.py'), [
      '--config.model.bert.hidden_size=4096', '--config.model.bert.num_hidden_layers=24',
      '--config.model.bert.num_attention_heads=32', '--config.model.bert.intermediate_size=11008',
      '--config.model.max_seq_length=512'])
  out = dry_build(cfg)
  assert out['param_count'] > 3.9e9
  leaves = jax.tree_util.tree_leaves(out['state'])
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def test_set_fields_checks_python_values_as_a_command_line_override_would():
  from embedjax.config import set_fields
  from embedjax.train.base_config import base_config
  c = set_fields(base_config(), {'data.file.columns': 'anchor=q', 'loss.matryoshka_dims': (64, 32),
                                 'steps': 5, 'optim.lr': 1})
  assert (c.data.file.columns, c.loss.matryoshka_dims, c.steps) == ('anchor=q', (64, 32), 5)
  assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)  # ints widen to a float field
  cases = {'data.fil.columns': ('x', "unknown config field 'data.fil.columns' (closest: "
                                     'data.file.columns)'),
           'steps': ('abc', 'steps: expected int'),
           'loss.directions': ((1,), 'loss.directions: expected tuple of str, got (1,)')}
  for name, (value, message) in cases.items():
    with pytest.raises(ConfigError, match=re.escape(message)):
      set_fields(base_config(), {name: value}, where='fit overrides')


def test_attention_kernel_and_dropout_reach_the_model():
  from embedjax.train.loop import dry_build, model_spec
  tiny = str(REPO / 'configs' / 'tiny_synthetic.py')
  spec, _ = model_spec(load_config(tiny, []).model)
  own = spec.bert.attention_probs_dropout_prob
  assert spec.bert.attention_impl == 'auto' and own == 0.1  # the model's own dropout
  spec, _ = model_spec(load_config(tiny, ['--config.model.attention_impl=xla',
                                          '--config.model.attention_dropout=0']).model)
  assert spec.bert.attention_impl == 'xla' and spec.bert.attention_probs_dropout_prob == 0.0
  with pytest.raises(ConfigError, match=r"model.attention_impl 'flash': not one of"):
    dry_build(load_config(tiny, ['--config.model.attention_impl=flash']))
  with pytest.raises(ConfigError, match=r'model.attention_dropout 1.5: -1'):
    dry_build(load_config(tiny, ['--config.model.attention_dropout=1.5']))
  with pytest.raises(ConfigError, match=r"data.padding 'longest': not one of"):
    dry_build(load_config(tiny, ['--config.data.padding=longest']))
