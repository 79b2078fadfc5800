"""The long-context study's parts: each RoPE method's config, a stretched MiniLM encoding a text
past its trained length, and the summary from records."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from embedjax.config import load_config
from embedjax.models.decoder import DecoderConfig
from embedjax.paths import repo_root
from experiments import long_context as study


@pytest.fixture(scope='module')
def cfg():
  return load_config(str(repo_root() / 'configs' / 'long_context.py'))


def test_rope_methods_set_the_decoder_config(cfg):
  base = DecoderConfig(max_position_embeddings=512, rope_theta=1e4, hidden_size=128,
                       num_attention_heads=2, num_key_value_heads=1)
  assert study.rope_config(base, 'none', cfg, 4096) == base
  # a fixed factor: the same config at every length
  for length in (256, 8192):
    linear = study.rope_config(base, 'linear_4x', cfg, length)
    assert dict(linear.rope_scaling) == {'rope_type': 'linear', 'factor': 4.0}
    assert linear.max_positions == 2048
  dynamic = study.rope_config(base, 'dynamic_4x', cfg, 1024)
  assert dynamic.max_position_embeddings == 512 and dynamic.max_positions == 2048
  yarn = dict(study.rope_config(base, 'yarn_2x', cfg, 256).rope_scaling)
  assert yarn == {'rope_type': 'yarn', 'factor': 2.0, 'original_max_position_embeddings': 512}
  ntk = study.rope_config(base, 'ntk_4x', cfg, 512)
  assert ntk.rope_theta == pytest.approx(1e4 * 4 ** (64 / 62)) and not ntk.rope_scaling
  # no factor in the name: s = length / 512 (the trained length), the trained model up to 512
  for method in ('linear', 'dynamic', 'yarn', 'ntk', 'self_extend'):
    for length in (256, 512):
      assert study.rope_config(base, method, cfg, length) == base, (method, length)
  linear = study.rope_config(base, 'linear', cfg, 4096)
  assert dict(linear.rope_scaling) == {'rope_type': 'linear', 'factor': 8.0}
  assert linear.max_positions == 4096
  dynamic = study.rope_config(base, 'dynamic', cfg, 8192)
  assert dict(dynamic.rope_scaling) == {'rope_type': 'dynamic', 'factor': 16.0}
  assert dynamic.max_position_embeddings == 512 and dynamic.max_positions == 8192
  yarn = dict(study.rope_config(base, 'yarn', cfg, 1024).rope_scaling)
  assert yarn == {'rope_type': 'yarn', 'factor': 2.0, 'original_max_position_embeddings': 512}
  ntk = study.rope_config(base, 'ntk', cfg, 2048)
  assert ntk.rope_theta == pytest.approx(1e4 * 4 ** (64 / 62)) and ntk.max_positions == 2048
  # SelfExtend, window 256: the smallest group g with (512 - 256) g + 256 >= length
  for length, group in ((1024, 3), (2048, 7), (4096, 15), (8192, 31)):
    se = study.rope_config(base, 'self_extend', cfg, length)
    assert (se.self_extend_group, se.self_extend_window) == (group, 256)
  fixed = load_config(str(repo_root() / 'configs' / 'long_context.py'),
                      ['--config.self_extend.group=8'])
  se = study.rope_config(base, 'self_extend', fixed, 256)
  assert (se.self_extend_group, se.self_extend_window) == (8, 256)
  with pytest.raises(Exception, match='rope method'):
    study.rope_config(base, 'longrope_2x', cfg, 1024)
  with pytest.raises(Exception, match='the N of'):
    study.rope_config(base, 'linear_fourx', cfg, 1024)


def test_a_rope_method_reads_each_length_whole(minilm, cfg):
  """With the factor of each length, every method reads the whole input (blocked attention but
  SelfExtend); a fixed factor stops at its range, a plain rotary table (none, NTK) does not."""
  import jax
  from embedjax.models.pretrained import Pretrained, init_model_params
  from embedjax.models.spec import EmbedderSpec
  decoder = DecoderConfig(model_type='qwen3', vocab_size=minilm.tokenizer.vocab_size,
                          hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1,
                          max_position_embeddings=512, attention='bidirectional')
  spec = EmbedderSpec(decoder=decoder, pooling='mean', max_seq_length=512)
  model = Pretrained(spec=spec, params=init_model_params(spec, jax.random.key(0)),
                     tokenizer=minilm.tokenizer.with_max_length(512), source='tiny')
  for method in ('none', 'linear', 'dynamic', 'yarn', 'ntk', 'self_extend', 'ntk_4x'):
    variant = study.rope_variant(model, method, cfg, 4096)
    assert variant.spec.max_seq_length == 4096, method
    assert variant.tokenizer.max_length == 4096, method
    blocked = variant.spec.decoder.attention_block
    assert blocked == (0 if method == 'self_extend' else cfg.attention_block), method
  assert study.rope_variant(model, 'linear_4x', cfg, 4096).spec.max_seq_length == 2048
  assert study.rope_variant(model, 'linear', cfg, 256).spec.decoder == dataclasses.replace(
      decoder, attention_block=cfg.attention_block)


def test_interpolated_minilm_reads_past_its_trained_length(minilm, cfg):
  text = ' '.join(['the sky is blue .'] * 180)  # about 900 tokens
  ids = minilm.tokenizer.with_max_length(4096).encode([text])[0]
  assert len(ids) > 600
  truncated = study.minilm_encoder(minilm, 'truncate', cfg, 1024)([text])
  stretched = study.minilm_encoder(minilm, 'interpolate_2x', cfg, 1024)([text])
  assert stretched.shape == truncated.shape == (1, 384)
  assert np.isfinite(stretched).all() and np.abs(stretched - truncated).max() > 1e-3


def test_summary_follows_the_records():
  recs = [{'model': 'minilm', 'method': m, 'task': 'passkey', 'length': n, 'score': s}
          for m, n, s in (('truncate', 256, 0.7), ('truncate', 512, 0.3), ('chunk', 256, 0.2))]
  s = study.summarize(recs)
  assert s == {'minilm': {'truncate': {'passkey': {'256': 0.7, '512': 0.3}},
                          'chunk': {'passkey': {'256': 0.2}}}, 'rope': {}}
  table = study.markdown(s)
  assert '| truncate | 0.700 | 0.300 |' in table and '| chunk | 0.200 | - |' in table


def test_an_interrupted_cell_resumes_from_its_cached_shards(tmp_path):
  calls, interrupt = [], [True]

  def encode(texts):  # a deterministic stand-in for a model: the text's length, twice
    calls.append(list(texts))
    if texts and texts[0].startswith('t4') and interrupt:
      raise KeyboardInterrupt  # the sitting ends inside the third shard
    return np.array([[len(t), 2.0 * len(t)] for t in texts], np.float32).reshape(-1, 2)

  texts = [f't{i}' + 'x' * i for i in range(7)]
  want = np.array([[len(t), 2.0 * len(t)] for t in texts], np.float32)
  first = study.resumable(encode, tmp_path / 'cache', 'cell', shard=2)
  with pytest.raises(KeyboardInterrupt):
    first(texts)
  assert len(list((tmp_path / 'cache').glob('*.npy'))) == 2  # the two finished shards
  calls.clear()
  interrupt.clear()
  again = study.resumable(encode, tmp_path / 'cache', 'cell', shard=2)
  np.testing.assert_array_equal(again(texts), want)
  assert calls == [texts[4:6], texts[6:]] and again.cached == 4  # only what was left
  assert study.resumable(encode, tmp_path / 'other', 'cell', shard=2)([]).shape == (0, 2)


def test_a_cell_writes_its_record_once_and_leaves_no_cache(minilm, tmp_path):
  cfg = load_config(str(repo_root() / 'configs' / 'long_context.py'),
                    [f'--config.runs_dir={tmp_path / "runs"}'])
  rec = study.run_cell(cfg, {'minilm': minilm}, 'minilm', 'truncate', 'passkey', 256, tmp_path)
  assert rec['texts_resumed'] == 0 and 0.0 <= rec['score'] <= 1.0
  assert rec['score'] == rec['result']['ndcg@1']
  assert study.cell_path(tmp_path, 'minilm', 'truncate', 'passkey', 256).is_file()
  assert not list((tmp_path / 'runs').rglob('*.npy'))  # the cell's cache goes once it is done
  assert study.run_cell(cfg, {'minilm': minilm}, 'minilm', 'truncate', 'passkey', 256,
                        tmp_path) is None  # current: skipped
  again = study.run_cell(cfg, {'minilm': minilm}, 'minilm', 'truncate', 'passkey', 256,
                         tmp_path, force=True)  # --redo: made again, the same score
  assert again['score'] == rec['score'] and again['finished_at'] >= rec['finished_at']
  # --redo names cells as make results does ('.../seed0' allowed); others are errors
  assert study.redo_cells(cfg, ['minilm/truncate/passkey_256/seed0', 'rope/yarn/needle_1024']) == {
      'minilm/truncate/passkey_256', 'rope/yarn/needle_1024'}
  with pytest.raises(Exception, match='not a cell of the grid'):
    study.redo_cells(cfg, ['minilm/truncate/passkey_300'])


def test_the_rope_cells_wait_for_their_model_in_one_line(tmp_path):
  import subprocess
  import sys
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.long_context', '--config', 'configs/long_context.py',
       f'--config.rope_model={tmp_path / "not_trained"}', f'--config.out_dir={tmp_path / "out"}',
       '--only-models', 'rope'], cwd=repo_root(), capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert f'skipping the RoPE cells: no model at {tmp_path / "not_trained"}' in out.stdout
  assert 'Traceback' not in out.stderr and not (tmp_path / 'out' / 'runs').exists()


def test_make_results_sees_the_grid_shortest_inputs_first(cfg, tmp_path):
  runs = study.expected_runs()
  grid = len(cfg.tasks) * len(cfg.lengths)
  assert len(runs) == (len(cfg.methods) + len(cfg.rope_methods)) * grid
  for model in ('minilm', 'rope'):  # each model's cells shortest inputs first
    lengths = [int(c.rsplit('_', 1)[1]) for c, _ in runs if c.startswith(model + '/')]
    assert lengths == sorted(lengths)
  assert {s for _, s in runs} == {0}
  # the RoPE model is the recipes study's decoder student, found in the repository's runs/
  assert study.rope_model_path(cfg) == repo_root() / cfg.rope_model
  assert cfg.rope_model == 'runs/recipes/distill_leaf_decoder/seed0/export'
  cell = 'minilm/interpolate_2x/long_scifact_1024'
  path = study.record_path(cell, 0, tmp_path)
  assert path == study.cell_path(tmp_path, 'minilm', 'interpolate_2x', 'long_scifact', 1024)
  assert not study.config_is_current(cell, 0, tmp_path)
  path.parent.mkdir(parents=True)
  chash = study.cell_hash(cfg, 'minilm', 'interpolate_2x', 'long_scifact', 1024)
  path.write_text(f'{{"config_hash": "{chash}"}}')
  assert study.config_is_current(cell, 0, tmp_path)
  path.write_text('{"config_hash": "other"}')
  assert not study.config_is_current(cell, 0, tmp_path)


@pytest.mark.parametrize('kind', ['clex', 'seqpe', 'none_trained'])
def test_a_learned_method_starts_from_a_changed_copy_of_the_rope_model(minilm, cfg, kind,
                                                                       tmp_path):
  """The first step of the clex / seqpe cells: the RoPE model's folder copied with the method in
  its config.json; it loads with the new module at its init, encodes, and its training config
  points at it."""
  import jax
  from embedjax.encoding import encode
  from embedjax.models.pretrained import (Pretrained, export_sentence_transformers,
                                          init_model_params, load_pretrained)
  from embedjax.models.spec import DenseSpec, EmbedderSpec
  decoder = DecoderConfig(model_type='qwen3', vocab_size=minilm.tokenizer.vocab_size,
                          hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, qk_norm=True,
                          max_position_embeddings=64, attention='bidirectional')
  # a linear head to MiniLM's width, as the distilled student has
  spec = EmbedderSpec(decoder=decoder, pooling='mean', max_seq_length=64,
                      dense=(DenseSpec(32, 384, bias=False, activation='identity'),))
  base = Pretrained(spec=spec, params=init_model_params(spec, jax.random.key(0)),
                    tokenizer=minilm.tokenizer.with_max_length(64), source='tiny')
  export_sentence_transformers(tmp_path / 'base', base)
  dest = study.learned_init_folder(tmp_path / 'base', kind, 4, tmp_path / 'init')
  assert study.learned_init_folder(tmp_path / 'base', kind, 4, tmp_path / 'init') == dest
  changed = load_pretrained(dest)
  if kind == 'clex':
    assert dict(changed.spec.decoder.rope_scaling) == {'rope_type': 'clex', 'max_factor': 4}
    assert changed.spec.decoder.max_positions == 256
    assert not np.any(np.asarray(changed.params['rope_clex']['down']))
  elif kind == 'seqpe':
    assert changed.spec.decoder.position_encoding == 'seqpe'
    assert changed.spec.decoder.seqpe_settings['max_factor'] == 4
  else:  # the control: the model as it was, to be trained the same steps
    assert changed.spec.decoder == base.spec.decoder
    assert changed.spec.decoder.attention == 'bidirectional'
  np.testing.assert_array_equal(changed.params['embed_tokens'], np.asarray(base.params['embed_tokens']))
  long = study.rope_variant(changed, kind, cfg, 200)  # as the study reads 200 tokens
  assert long.spec.max_seq_length == 200
  out = encode(long, [' '.join(['the sky is blue .'] * 40)], progress=False)
  assert out.shape == (1, 384) and np.isfinite(out).all()
  tcfg = study.train_config(kind, dest)
  assert tcfg.model.init == f'pretrained:{dest}' and tcfg.steps > 0
  if kind == 'clex':  # the training config builds on it (one batch, the loss, the step)
    from embedjax.cli import training_sources
    from embedjax.train.loop import dry_build
    tiny = study.train_config(kind, dest, ['--config.model.max_seq_length=64',
                                           '--config.data.query_len=64'])
    out = dry_build(tiny, training_sources())
    assert out['param_count'] > 0 and out['batch']['target'].shape[0] == tcfg.data.batch_size


def test_the_longest_text_is_counted_in_the_models_tokens(minilm, cfg):
  """The tasks count words and punctuation; a cell reads by its longest text in tokens. Each of
  'the sky is blue .' is one WordPiece token: 100 copies are 500 tokens plus [CLS] and [SEP]."""
  data = dataclasses.make_dataclass('Data', ['query_texts', 'corpus_texts'])(
      ['the sky'], ['the sky is blue .', ' '.join(['the sky is blue .'] * 100)])
  assert study.longest_text(minilm, data) == 502
  assert study._tokens_read(minilm, 'truncate', cfg, 502) == 256
  assert study._tokens_read(minilm, 'interpolate_2x', cfg, 2000) == 1024
  assert study._tokens_read(minilm, 'interpolate_8x', cfg, 2000) == 2000
  assert study._tokens_read(minilm, 'chunk', cfg, 10_597) == 10_597  # the longest text here


def _tiny_rope_folder(minilm, folder, max_positions=64):
  import jax
  from embedjax.models.pretrained import (Pretrained, export_sentence_transformers,
                                          init_model_params)
  from embedjax.models.spec import EmbedderSpec
  decoder = DecoderConfig(model_type='qwen3', vocab_size=minilm.tokenizer.vocab_size,
                          hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, qk_norm=True,
                          max_position_embeddings=max_positions, attention='bidirectional')
  spec = EmbedderSpec(decoder=decoder, pooling='mean', max_seq_length=max_positions)
  export_sentence_transformers(folder, Pretrained(
      spec=spec, params=init_model_params(spec, jax.random.key(0)),
      tokenizer=minilm.tokenizer.with_max_length(max_positions), source='tiny'))
  return folder


def test_a_rope_cell_reads_its_longest_text_and_names_its_model_by_content(minilm, tmp_path):
  """A RoPE cell (a tiny decoder trained, say, at 64 tokens) scales by its longest text in
  tokens, 290 on passkey_256, and reads all of it; its hash covers the model folder's files,
  so a model trained again at the same path makes its records stale."""
  from embedjax.models.pretrained import load_pretrained
  folder = _tiny_rope_folder(minilm, tmp_path / 'rope')
  cfg = load_config(str(repo_root() / 'configs' / 'long_context.py'),
                    [f'--config.rope_model={folder}', '--config.rope_trained_length=64',
                     f'--config.runs_dir={tmp_path / "runs"}'])
  model = load_pretrained(folder)
  assert model.spec.decoder.attention == 'bidirectional'
  rec = study.run_cell(cfg, {'rope': model}, 'rope', 'linear', 'passkey', 256, tmp_path)
  assert rec['longest_text_tokens'] == rec['tokens_read'] > 256
  assert dict(study.rope_config(model.spec.decoder, 'linear', cfg, rec['tokens_read'])
              .rope_scaling)['factor'] == rec['tokens_read'] / 64
  before = study.cell_hash(cfg, 'rope', 'linear', 'passkey', 256)
  assert rec['config_hash'] == before
  weights = folder / 'model.safetensors'
  weights.write_bytes(weights.read_bytes() + b' ')  # another model at the same path
  assert study.cell_hash(cfg, 'rope', 'linear', 'passkey', 256) != before
  absent = load_config(str(repo_root() / 'configs' / 'long_context.py'),
                       [f'--config.rope_model={tmp_path / "none"}'])
  assert study.rope_model_sha256(absent) == 'absent'
