"""Model-parallel sharding: logical axis rules, FSDP / tensor-parallel steps, checkpoints across meshes.

Unit tests run here (one CPU device; specs are checked on an ``AbstractMesh``). The mesh runs come
from subprocesses of tests/train/run_sharded_step.py (the device count is fixed before jax
starts): one process with 8 forced CPU devices runs three train steps of a tiny decoder (Llama,
GQA) and a tiny BERT on every mesh of ``MESHES`` and saves an FSDP(8) checkpoint; a second restores
that checkpoint onto 2 devices; two processes of 4 devices each (jax.distributed over gloo) run
FSDP over all 8. The reference for every sharded run is the same step on one device: sharding
must not change the numbers beyond float32 reassociation.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from embedjax.config import ConfigError
from embedjax.models.decoder import DecoderConfig
from embedjax.models.lora import LoraConfig, init_lora
from embedjax.models.pretrained import init_model_params
from embedjax.models.spec import DenseSpec, EmbedderSpec
from embedjax.train import sharding as S
from embedjax.train.state import create_state

RUNNER = Path(__file__).with_name('run_sharded_step.py')
_spec = importlib.util.spec_from_file_location('run_sharded_step', RUNNER)
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)

MESH222 = AbstractMesh((2, 2, 2), S.MESH_AXES)


# ------------------------------------------------------------------------------------------------
# Rules and specs


def test_logical_to_spec_by_hand():
  rules = S.DEFAULT_RULES
  assert S.logical_to_spec(('embed', 'mlp'), rules, MESH222, (32, 64)) == P('fsdp', 'tensor')
  # 3 rows do not split over fsdp = 2: replicated, the other dim still split.
  assert S.logical_to_spec(('embed', 'mlp'), rules, MESH222, (3, 64)) == P(None, 'tensor')
  assert S.logical_to_spec(('batch', 'length'), rules, MESH222, (8, 12)) == P(('data', 'fsdp'),
                                                                              None)
  # 6 rows do not split over data x fsdp = 4; a fallback rule for the same name takes over.
  assert S.logical_to_spec(('batch', 'length'), rules, MESH222, (6, 12)) == P(None, None)
  fallback = rules + (('batch', 'data'),)
  assert S.logical_to_spec(('batch', 'length'), fallback, MESH222, (6, 12)) == P('data', None)
  # Unnamed dims and names without a rule are replicated.
  assert S.logical_to_spec((None, 'nope', 'norm'), rules, MESH222, (4, 4, 4)) == P(None, None, None)
  # Without a shape, no divisibility check.
  assert S.logical_to_spec(('vocab', 'embed'), rules, MESH222) == P('tensor', 'fsdp')


def test_logical_to_spec_never_uses_a_mesh_axis_twice():
  rules = (('embed', 'fsdp'), ('mlp', 'fsdp'), ('mlp', 'tensor'))
  assert S.logical_to_spec(('embed', 'mlp'), rules, MESH222, (8, 8)) == P('fsdp', 'tensor')
  assert S.logical_to_spec(('embed', 'mlp'), rules[:2], MESH222, (8, 8)) == P('fsdp', None)
  # Precedence is the rules' order, not the dims' (as in Flax).
  rules = (('mlp', 'fsdp'), ('embed', 'fsdp'), ('embed', 'tensor'))
  assert S.logical_to_spec(('embed', 'mlp'), rules, MESH222, (8, 8)) == P('tensor', 'fsdp')
  # A None rule fixes its dim as replicated; later rules of that name do not apply.
  assert S.logical_to_spec(('norm',), (('norm', None), ('norm', 'tensor')), MESH222, (8,)) == P(None)
  # Tuple targets count every axis as used.
  rules = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('embed', 'tensor'))
  assert S.logical_to_spec(('batch', 'embed'), rules, MESH222, (8, 8)) == P(('data', 'fsdp'),
                                                                           'tensor')


def test_logical_to_spec_matches_flax(trees):
  # Without shapes (no divisibility fallback) the rules mean what they mean in Flax.
  nn = pytest.importorskip('flax.linen')
  rule_sets = [S.DEFAULT_RULES,
               (('mlp', 'fsdp'), ('embed', 'fsdp'), ('embed', 'tensor'), ('heads', 'tensor'),
                ('kv', ('fsdp', 'tensor')), ('vocab', 'data'), ('norm', None), ('norm', 'fsdp')),
               (('embed', ('data', 'fsdp')), ('heads', 'data'), ('heads', 'tensor'),
                ('mlp', 'tensor'), ('kv', 'fsdp'))]
  all_axes = set()
  for state in trees.values():
    for spec in jax.tree_util.tree_leaves(S.logical_axes(state)):
      all_axes.add(tuple(spec))
  all_axes |= {('batch', 'length'), ('length', 'batch', None)}
  for rules in rule_sets:
    for axes in sorted(all_axes, key=str):
      ours = S.logical_to_spec(axes, rules, MESH222)
      theirs = nn.logical_to_mesh_axes(axes, rules)
      assert ours == theirs, (rules, axes, ours, theirs)


def test_logical_to_spec_rejects_bad_input():
  with pytest.raises(ValueError, match='rank-1'):
    S.logical_to_spec(('embed', 'mlp'), S.DEFAULT_RULES, MESH222, (8,))
  with pytest.raises(ValueError, match="'pipeline'"):
    S.logical_to_spec(('embed',), (('embed', 'pipeline'),), MESH222, (8,))
  with pytest.raises(ValueError, match='more than once'):
    S.logical_to_spec(('embed', 'embed'), S.DEFAULT_RULES, MESH222, (8, 8))
  small = AbstractMesh((2,), ('data',))
  with pytest.raises(ValueError, match="mesh axis 'fsdp'"):
    S.logical_to_spec(('embed',), S.DEFAULT_RULES, small, (8,))


def test_rules_from_config_round_trip():
  cfg = ml_collections.ConfigDict({'rules': S.DEFAULT_RULES})
  assert S.rules_from_config(cfg.rules) == S.DEFAULT_RULES
  # Through JSON (a stored config): tuples come back as lists.
  stored = json.loads(cfg.to_json())['rules']
  assert isinstance(stored[0][1], list)
  assert S.rules_from_config(stored) == S.DEFAULT_RULES
  # The mapping form, as a ConfigDict block.
  block = ml_collections.ConfigDict(S.rules_to_config(S.DEFAULT_RULES))
  block.mlp = None  # a command-line style override
  expected = {n: None if n == 'mlp' else t for n, t in S.DEFAULT_RULES}
  # One target per name, so the order (ConfigDict sorts its keys) does not matter.
  assert dict(S.rules_from_config(block)) == expected
  with pytest.raises(ConfigError, match='repeat'):
    S.rules_to_config(S.DEFAULT_RULES + (('batch', 'data'),))
  with pytest.raises(ConfigError, match="unknown mesh axis 'model'"):
    S.rules_from_config({'embed': 'model'})
  with pytest.raises(ConfigError, match='rule 0'):
    S.rules_from_config([('embed',)])


def test_make_mesh_sizes():
  mesh = S.make_mesh(data=-1)
  assert dict(mesh.shape) == {'data': jax.device_count(), 'fsdp': 1, 'tensor': 1}
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
  with pytest.raises(ValueError, match=r'= 2 devices, but there are 1'):
    S.make_mesh(fsdp=2, devices=jax.devices()[:1])
  with pytest.raises(ValueError, match='at most one'):
    S.make_mesh(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match='not a multiple'):
    S.make_mesh(data=-1, tensor=2, devices=jax.devices()[:1])


# ------------------------------------------------------------------------------------------------
# Every param (and optimizer moment) gets a rule


def _decoder_model(**kw):
  dec = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      **kw)
  return dec


@pytest.fixture(scope='module')
def trees():
  """Abstract TrainStates (``jax.eval_shape``: no arrays made) of every backbone and head."""
  specs = dict(runner.tiny_specs())
  specs['qwen3_dense_latent'] = EmbedderSpec(
      decoder=_decoder_model(model_type='qwen3', qk_norm=True, attention_bias=True, mlp_bias=True),
      pooling='latent_attention', latent_heads=2, max_seq_length=32,
      dense=(DenseSpec(32, 16),))
  out = {}
  for name, spec in specs.items():
    def build(spec=spec):
      params = {'encoder': init_model_params(spec, jax.random.key(0), num_latents=8),
                'logit_scale': jnp.zeros((), jnp.float32)}
      return create_state(params, optax.adamw(1e-3))
    out[name] = jax.eval_shape(build)

  def lora_state():
    base = init_model_params(specs['decoder'], jax.random.key(0))
    lora = init_lora(jax.random.key(1), base, LoraConfig.for_modules(('q_proj', 'v_proj'), rank=4))
    return create_state({'lora': lora}, optax.adamw(1e-3))
  out['lora'] = jax.eval_shape(lora_state)
  return out


def test_every_leaf_gets_a_rule(trees):
  for name, state in trees.items():
    assert S.unmatched(state) == [], name
  # unmatched does list what no row covers.
  assert S.unmatched({'mystery': {'kernel': jnp.zeros((4, 4))}}) == [('mystery/kernel', (4, 4))]


def _axes(state, path):
  leaves = {S.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
  return S.logical_axes_of(path, len(leaves[path].shape))


def test_logical_axes_of_known_leaves(trees):
  dec, bert, q3, lora = trees['decoder'], trees['bert'], trees['qwen3_dense_latent'], trees['lora']
  cases = [
      (dec, 'params/encoder/embed_tokens', ('vocab', 'embed')),
      (dec, 'params/encoder/layers_0/self_attn/q_proj/kernel', ('embed', 'heads')),
      (dec, 'params/encoder/layers_0/self_attn/k_proj/kernel', ('embed', 'kv')),
      (dec, 'opt_state/0/mu/encoder/layers_0/self_attn/o_proj/kernel', ('heads', 'embed')),
      (dec, 'opt_state/0/nu/encoder/layers_0/mlp/down_proj/kernel', ('mlp', 'embed')),
      (dec, 'params/encoder/norm/weight', ('norm',)),
      (dec, 'params/logit_scale', ()),
      (bert, 'params/encoder/layer_0/attention/output_dense/kernel', ('heads', 'embed')),
      (bert, 'params/encoder/layer_0/output_dense/kernel', ('mlp', 'embed')),
      (bert, 'params/encoder/word_embeddings/embedding', ('vocab', 'embed')),
      (bert, 'params/encoder/position_embeddings/embedding', (None, 'embed')),
      (q3, 'params/encoder/layers_0/self_attn/q_norm/weight', ('norm',)),
      (q3, 'params/encoder/layers_0/self_attn/v_proj/bias', ('kv',)),
      (q3, 'params/encoder/latent_attention/cross_attn/to_kv/kernel', ('embed', 'heads')),
      (q3, 'params/encoder/latent_attention/feed_forward/net_2/kernel', ('mlp', 'embed')),
      (q3, 'params/encoder/dense_0/kernel', ('embed', None)),
      (lora, 'params/lora/layers_0/self_attn/q_proj/lora_a', ('embed', None)),
      (lora, 'params/lora/layers_0/self_attn/v_proj/lora_b', (None, 'kv')),
      (lora, 'opt_state/0/mu/lora/layers_0/self_attn/v_proj/lora_b', (None, 'kv')),
  ]
  for state, path, expected in cases:
    assert _axes(state, path) == expected, path
  # The optimizer's step count is a scalar and replicated.
  sh = S.state_shardings(dec, S.make_mesh())
  assert sh.opt_state[0].count.spec == P() and sh.step.spec == P()


def test_param_shardings_follow_rules(trees):
  # Specs on a 2 x 2 x 2 mesh without 8 devices: logical axes -> logical_to_spec.
  dec = trees['decoder'].params
  axes = S.logical_axes(dec)
  spec = lambda path: S.logical_to_spec(
      tuple(_leaf(axes, path)), S.DEFAULT_RULES, MESH222, _leaf(dec, path).shape)
  assert spec('encoder/layers_0/self_attn/q_proj/kernel') == P('fsdp', 'tensor')
  assert spec('encoder/layers_0/self_attn/o_proj/kernel') == P('tensor', 'fsdp')
  assert spec('encoder/layers_0/input_layernorm/weight') == P(None)
  bert = trees['bert'].params  # vocab 51 does not split over tensor = 2
  assert S.logical_to_spec(('vocab', 'embed'), S.DEFAULT_RULES, MESH222,
                           _leaf(bert, 'encoder/word_embeddings/embedding').shape) == P(None, 'fsdp')


def _leaf(tree, path):
  flat = {S.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  return flat[path]


def test_bytes_per_device_one_device():
  x = {'a': jnp.zeros((4, 8), jnp.float32), 'b': jnp.zeros((3,), jnp.int8)}
  assert list(S.bytes_per_device(x).values()) == [4 * 8 * 4 + 3]


# ------------------------------------------------------------------------------------------------
# 8 forced CPU devices, one process


def _env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return env


def _run(args, timeout=240):
  proc = subprocess.run([sys.executable, str(RUNNER), *args], env=_env(), capture_output=True,
                        text=True, timeout=timeout, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope='module')
def eight(tmp_path_factory):
  root = tmp_path_factory.mktemp('sharded_step')
  _run(['--mode', 'steps', '--devices', '8', '--out', str(root / 'eight'),
        '--ckpt', str(root / 'ckpt')])
  results = json.loads((root / 'eight' / 'results.json').read_text())
  with np.load(root / 'eight' / 'params.npz') as f:
    params = dict(f)
  assert results['devices'] == 8 and results['processes'] == 1
  return root, results, params


def _cases(results, model, optim):
  return {k.split('/')[2]: v for k, v in results.items()
          if k.startswith(f'{model}/{optim}/')}


@pytest.mark.slow
@pytest.mark.parametrize('model', runner.MODELS)
def test_sharded_steps_equal_one_device(eight, model):
  _, results, params = eight
  for optim in runner.OPTIMS:
    cases = _cases(results, model, optim)
    assert set(cases) == set(runner.OPTIM_MESHES[model, optim])
    if not cases:
      continue
    ref = np.asarray(cases['single']['losses'])
    assert abs(ref[2] - ref[0]) > 1e-3, 'the steps did not change the loss'
    for mesh, case in cases.items():
      np.testing.assert_allclose(case['losses'], ref, rtol=1e-5, err_msg=f'{model}/{optim}/{mesh}')
  # SGD: the params after three steps too.
  prefix = f'{model}/sgd/single/'
  names = [k[len(prefix):] for k in params if k.startswith(prefix)]
  assert names
  for mesh in runner.OPTIM_MESHES[model, 'sgd']:
    if mesh == 'single':
      continue
    for name in names:
      np.testing.assert_allclose(params[f'{model}/sgd/{mesh}/{name}'], params[prefix + name],
                                 atol=1e-5, err_msg=f'{model}/{mesh}/{name}')


@pytest.mark.slow
def test_fsdp_splits_params(eight):
  _, results, _ = eight
  # decoder gate_proj kernel (32, 64) with ('embed', 'mlp') -> ('fsdp', 'tensor').
  shard = {m: results[f'decoder/sgd/{m}']['kernel_shard_shape'] for m in runner.MESHES}
  assert shard == {'single': [32, 64], 'fsdp8': [4, 64], 'dp4_tp2': [32, 32],
                   'fsdp4_tp2': [8, 32]}
  assert results['decoder/sgd/fsdp8']['kernel_spec'] == ['fsdp', 'tensor']
  # BERT intermediate kernel (16, 32) with ('embed', 'mlp') over fsdp 4 x tensor 2.
  assert results['bert/sgd/fsdp4_tp2']['kernel_shard_shape'] == [4, 16]
  # Per-device bytes under FSDP(8), from the arrays' shardings: about an eighth of the params
  # (norm weights stay replicated).
  case = results['decoder/sgd/fsdp8']
  total = case['total_bytes']
  assert len(case['bytes']) == 8
  assert total / 8 <= min(case['bytes']) and max(case['bytes']) <= 1.25 * total / 8
  assert results['decoder/sgd/single']['bytes'] == [total]
  for key, case in results.items():
    if isinstance(case, dict):
      assert case['unmatched'] == [], key


@pytest.mark.slow
def test_checkpoint_restores_onto_two_devices(eight):
  root, _, _ = eight
  _run(['--mode', 'restore', '--devices', '2', '--ckpt', str(root / 'ckpt'),
        '--out', str(root / 'two')])
  info = json.loads((root / 'two' / 'restored.json').read_text())
  with np.load(root / 'eight' / 'saved.npz') as f:
    saved = dict(f)
  with np.load(root / 'two' / 'restored.npz') as f:
    restored = dict(f)
  assert info['devices'] == 2 and info['shardings_match_target']
  assert info['data_state'] == {'position': runner.STEPS}
  assert set(restored) == set(saved)
  for k, value in saved.items():
    np.testing.assert_array_equal(restored[k], value, err_msg=k)
  assert int(restored['step']) == runner.STEPS
  # Restored onto fsdp = 2: the big leaves (params and Adam moments) split in two.
  kernel = runner.KERNELS['decoder']  # encoder/...
  for prefix in ('params/', 'opt_state/0/mu/', 'opt_state/0/nu/'):
    assert info['specs'][prefix + kernel] == ['fsdp', 'tensor'], prefix + kernel
  total = sum(v.nbytes for v in saved.values())
  assert len(info['bytes']) == 2 and max(info['bytes']) < 0.6 * total


# ------------------------------------------------------------------------------------------------
# Two processes x 4 devices (jax.distributed, gloo)


@pytest.mark.slow
def test_two_processes_fsdp_equal_one_device(eight):
  root, results, _ = eight
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
  out = root / 'multi'
  procs = [subprocess.Popen(
      [sys.executable, str(RUNNER), '--mode', 'steps', '--out', str(out), '--devices', '4',
       '--process-id', str(i), '--num-processes', '2', '--port', str(port),
       '--models', 'decoder', '--optims', 'sgd', '--meshes', 'fsdp8'],
      env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=180)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert all(p.returncode == 0 for p in procs), '\n'.join(o[-3000:] for o in outs)
  multi = json.loads((out / 'results.json').read_text())
  assert multi['devices'] == 8 and multi['processes'] == 2
  # make_mesh(data=2, fsdp=-1, tensor=2): tensor pairs inside one process, data across processes.
  layout = np.asarray(multi['mesh_processes'])
  assert (layout == np.arange(2)[:, None, None]).all(), layout
  case = multi['decoder/sgd/fsdp8']
  np.testing.assert_allclose(case['losses'], results['decoder/sgd/single']['losses'], rtol=1e-5)
  assert case['kernel_shard_shape'] == [4, 64]
  assert len(case['bytes']) == 4  # process 0's own devices
