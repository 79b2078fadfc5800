"""Runs sharded train steps in their own process (device count / distributed set before jax starts).

python tests/train/run_sharded_step.py --mode steps --devices 8 --out DIR [--ckpt CKPT]
python tests/train/run_sharded_step.py --mode restore --devices 2 --ckpt CKPT --out DIR
python tests/train/run_sharded_step.py --mode steps --devices 4 --process-id I --num-processes 2
    --port P --out DIR --meshes fsdp8 --optims sgd

mode 'steps': three train steps (``STEPS``) of each tiny model (``tiny_specs``) with each
optimizer on each of its meshes (``OPTIM_MESHES``; meshes larger than the device count are
skipped); writes DIR/results.json ({'<model>/<optim>/<mesh>': {'losses', 'kernel_spec',
'kernel_shard_shape', 'bytes' (per addressable device), 'total_bytes', 'unmatched'}}, plus
'devices', 'processes' and, with 8 devices, 'mesh_processes': the process of each device of
make_mesh(data=2, fsdp=-1, tensor=2)) and DIR/params.npz ('<model>/sgd/<mesh>/<param path>': the
final params of the sgd runs, one process only). With --ckpt it also saves the decoder/adamw/fsdp8
state after its steps through embedjax.train.checkpoint.Checkpointer (Orbax) at step 3, and its
values to DIR/saved.npz. With several processes each initialises its own shards
(``init_sharded``) and feeds its own rows of the batch (``jax.make_array_from_process_local_data``);
process 0 writes the files.
mode 'restore': restores that checkpoint onto make_mesh(fsdp=-1) over this process's devices;
writes DIR/restored.npz (values) and DIR/restored.json (specs, device count, bytes per device).
"""

from __future__ import annotations

import argparse
import functools
import json
import os

STEPS = 3
BATCH, QUERY_LEN, DOC_LEN = 8, 8, 12
MODELS = ('decoder', 'bert')
OPTIMS = ('sgd', 'adamw')
# name -> (data, fsdp, tensor); 'single' is one device.
MESHES = {'single': (1, 1, 1), 'fsdp8': (1, 8, 1), 'dp4_tp2': (4, 1, 2), 'fsdp4_tp2': (1, 4, 2)}
# AdamW (losses only) runs for the decoder only: each (model, optimizer, mesh) costs a compilation,
# and the optimizer moments' shardings do not depend on the backbone (they match their params'
# rows by path suffix), and FSDP(8) is the mesh whose checkpoint the restore test reads.
# BERT on the mesh that uses every axis kind (its rules are also checked leaf by leaf in the
# unit tests): each (model, optimizer, mesh) costs a compilation on 2 cores.
OPTIM_MESHES = {('decoder', 'sgd'): tuple(MESHES), ('bert', 'sgd'): ('single', 'fsdp4_tp2'),
                ('decoder', 'adamw'): ('single', 'fsdp8'), ('bert', 'adamw'): ()}
# A kernel whose spec the test checks (split over 'fsdp' under FSDP).
KERNELS = {'decoder': 'encoder/layers_0/mlp/gate_proj/kernel',
           'bert': 'encoder/layer_0/intermediate_dense/kernel'}
CKPT_CASE = 'decoder/adamw/fsdp8'


def tiny_specs():
  """{'decoder': EmbedderSpec, 'bert': EmbedderSpec}: a tiny Llama with GQA (4 heads, 2 kv heads)
  and a tiny BERT (vocab 51: not divisible by 'tensor' = 2, so its table falls back to replication)."""
  from embedjax.models.bert import BertConfig
  from embedjax.models.decoder import DecoderConfig
  from embedjax.models.spec import EmbedderSpec
  dec = DecoderConfig(model_type='llama', vocab_size=64, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=32, attention_impl='xla')
  bert = BertConfig(vocab_size=51, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=32)
  return {'decoder': EmbedderSpec(decoder=dec, pooling='mean', max_seq_length=32),
          'bert': EmbedderSpec(bert=bert, pooling='mean', max_seq_length=32)}


def make_batch(seed: int = 0) -> dict:
  """A global batch of BATCH pairs (numpy), token ids in [1, 50) (valid for both vocabularies)."""
  import numpy as np
  from batches import random_batch
  return random_batch(np.random.default_rng(seed), BATCH, QUERY_LEN, DOC_LEN)


def make_tx(name: str):
  import optax
  return optax.sgd(0.05) if name == 'sgd' else optax.adamw(1e-3, weight_decay=0.01)


def init_state(model: str, optim: str):
  """The initial TrainState (random init from a fixed key: the same values in every process)."""
  import jax

  from embedjax.models.pretrained import init_model_params
  from embedjax.train.state import create_state
  params = {'encoder': init_model_params(tiny_specs()[model], jax.random.key(0))}
  return create_state(params, make_tx(optim))


def host_state(model: str, optim: str):
  """``init_state`` as numpy arrays. Jitted: op by op, Flax's init takes seconds on a busy CPU."""
  import jax
  import numpy as np
  state = jax.jit(init_state, static_argnums=(0, 1))(model, optim)
  return jax.tree_util.tree_map(np.asarray, state)


def flat(tree, prefix: str = '') -> dict:
  import jax
  import numpy as np

  from embedjax.train.sharding import path_str
  return {prefix + path_str(p): np.asarray(jax.device_get(x))
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _spec_json(spec) -> list:
  return [list(a) if isinstance(a, tuple) else a for a in spec]


def local_rows(mesh, batch: dict) -> dict:
  """This process's rows of the global batch: the rows of the devices it holds, in mesh order."""
  import jax

  from embedjax.train.sharding import batch_sharding
  idx = batch_sharding(mesh).addressable_devices_indices_map((BATCH,))
  starts = sorted({i[0].start or 0 for i in idx.values()})
  stops = sorted({i[0].stop or BATCH for i in idx.values()})
  lo, hi = starts[0], stops[-1]
  assert hi - lo == BATCH // jax.process_count(), (lo, hi)
  return {k: v[lo:hi] for k, v in batch.items()}


def run_steps(args) -> None:
  import jax
  import numpy as np

  from embedjax.train import sharding as S
  from embedjax.train.step import StepConfig

  specs = tiny_specs()
  batch = make_batch()
  results = {'devices': jax.device_count(), 'processes': jax.process_count()}
  if jax.device_count() == 8:
    # Which process holds each device of a data 2 x fsdp 2 x tensor 2 mesh (the layout check).
    layout = S.make_mesh(data=2, fsdp=-1, tensor=2).devices
    results['mesh_processes'] = np.vectorize(lambda d: d.process_index)(layout).tolist()
  params_out, saved = {}, None
  for model in args.models.split(','):
    cfg = StepConfig(spec=specs[model], loss='info_nce', dropout=False)
    for optim in args.optims.split(','):
      tx = make_tx(optim)
      meshes = [m for m in args.meshes.split(',') if m in OPTIM_MESHES[model, optim]
                and np.prod(MESHES[m]) <= jax.device_count()]
      if not meshes:
        continue
      shapes = jax.eval_shape(functools.partial(init_state, model, optim))
      # One process: initialise once, copy onto each mesh (shard_state). Several: each device
      # initialises its own shards (init_sharded), nothing is whole in one process.
      base = host_state(model, optim) if jax.process_count() == 1 else None
      for mesh_name in meshes:
        shape = MESHES[mesh_name]
        mesh = S.make_mesh(*shape, devices=jax.devices()[:int(np.prod(shape))])
        state_sh = S.state_shardings(shapes, mesh)
        if base is not None:
          state = S.shard_state(base, state_sh)
        else:
          state = S.init_sharded(functools.partial(init_state, model, optim), state_sh)
        step = S.sharded_train_step(cfg, tx, state_sh, mesh)
        gbatch = S.global_batch(mesh, local_rows(mesh, batch))
        losses = []
        for _ in range(STEPS):
          state, metrics = step(state, gbatch, jax.random.key(1))
          losses.append(float(metrics['loss']))
        case = f'{model}/{optim}/{mesh_name}'
        per_device = S.bytes_per_device(state.params)
        kernel = dict(zip(flat(state_sh.params).keys(), jax.tree_util.tree_leaves(state.params)))
        kernel = kernel[KERNELS[model]]
        results[case] = {
            'losses': losses,
            'kernel_spec': _spec_json(kernel.sharding.spec),
            'kernel_shard_shape': list(kernel.addressable_shards[0].data.shape),
            'bytes': sorted(per_device.values()),
            'total_bytes': int(sum(x.nbytes for x in jax.tree_util.tree_leaves(state.params))),
            'unmatched': [p for p, _ in S.unmatched(state)],
        }
        if jax.process_count() == 1 and optim == 'sgd':
          params_out.update(flat(state.params, case + '/'))
        if args.ckpt and case == CKPT_CASE:
          from embedjax.train.checkpoint import Checkpointer
          ckpt = Checkpointer(args.ckpt, async_save=True)
          ckpt.save(STEPS, state, {'position': STEPS})
          ckpt.close()
          saved = flat(state)
  if jax.process_index() == 0:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
      json.dump(results, f)
    np.savez(os.path.join(args.out, 'params.npz'), **params_out)
    if saved is not None:
      np.savez(os.path.join(args.out, 'saved.npz'), **saved)


def run_restore(args) -> None:
  import jax
  import numpy as np

  from embedjax.train import sharding as S
  from embedjax.train.checkpoint import Checkpointer

  model, optim, _ = CKPT_CASE.split('/')
  shapes = jax.eval_shape(lambda: init_state(model, optim))
  mesh = S.make_mesh(fsdp=-1)
  target = S.abstract_state(shapes, S.state_shardings(shapes, mesh))
  ckpt = Checkpointer(args.ckpt)
  state, data_state = ckpt.restore(STEPS, target)
  ckpt.close()
  specs = {p: _spec_json(x.sharding.spec)
           for p, x in zip(flat(state).keys(), jax.tree_util.tree_leaves(state))}
  shardings_ok = all(x.sharding == t.sharding for x, t in zip(jax.tree_util.tree_leaves(state),
                                                              jax.tree_util.tree_leaves(target)))
  os.makedirs(args.out, exist_ok=True)
  np.savez(os.path.join(args.out, 'restored.npz'), **flat(state))
  with open(os.path.join(args.out, 'restored.json'), 'w') as f:
    json.dump({'devices': jax.device_count(), 'specs': specs, 'data_state': data_state,
               'shardings_match_target': shardings_ok,
               'bytes': sorted(S.bytes_per_device(state).values())}, f)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--mode', choices=('steps', 'restore'), default='steps')
  ap.add_argument('--out', required=True)
  ap.add_argument('--devices', type=int, default=8)
  ap.add_argument('--ckpt')
  ap.add_argument('--models', default=','.join(MODELS))
  ap.add_argument('--optims', default=','.join(OPTIMS))
  ap.add_argument('--meshes', default=','.join(MESHES))
  ap.add_argument('--process-id', type=int)
  ap.add_argument('--num-processes', type=int, default=1)
  ap.add_argument('--port', type=int, default=0)
  args = ap.parse_args()
  # The device count must be set before jax starts.
  # XLA:CPU's older elemental fusion emitters at LLVM level 0 compile a train step 5-10x faster
  # than the defaults; every mesh variant compared is compiled with the same flags, and neither
  # changes float semantics (no fast math).
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={args.devices}'
                             ' --xla_backend_optimization_level=0'
                             ' --xla_cpu_use_fusion_emitters=false')
  import jax
  if args.process_id is not None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(f'127.0.0.1:{args.port}', num_processes=args.num_processes,
                               process_id=args.process_id)
  if args.mode == 'steps':
    run_steps(args)
  else:
    run_restore(args)
  print('done', jax.process_index(), flush=True)
  if args.process_id is not None:
    jax.distributed.shutdown()


if __name__ == '__main__':
  main()
