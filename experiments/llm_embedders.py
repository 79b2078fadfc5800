r"""The LLM-embedder summary for dashboards: measures parity and sharding itself, writes one file.

python -m experiments.llm_embedders --config configs/llm_embedders.py

Writes ``results/llm_embedders.json``:
  parity: {llama, mistral, qwen2, qwen3: max |embedjax - transformers| over the last hidden states
          of real tokens, causal attention, right- and left-padded rows, float32} for tiny
          random-init models that transformers creates (the sizes in the config);
  sharding_max_loss_rel_diff: {fsdp8, dp4_tp2, fsdp4_tp2: max over the steps of |loss - loss on
          one device| / |loss on one device|}, a tiny decoder trained with SGD for a few steps on
          8 forced CPU devices (a child process: the device count is fixed before jax starts);
  gradcache_chunk512_peak_gib / gradcache_chunk512_step_s: read from
          results/bench_gradcache_cpu.json when that file was written by its program with the
          remat job (``cached_c512_remat_full``), else null with the reason in ``pending``.
Everything with the provenance of ``embedjax.provenance.Run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/llm_embedders.py')
flags.DEFINE_string('child', None, 'internal: run the sharded steps and write this JSON')

ARCHS = ('llama', 'mistral', 'qwen2', 'qwen3')
MESHES = {'single': (1, 1, 1), 'fsdp8': (1, 8, 1), 'dp4_tp2': (4, 1, 2), 'fsdp4_tp2': (1, 4, 2)}


def hf_config(arch: str, size: dict):
  import transformers
  common = dict(**size, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
  return {'llama': lambda: transformers.LlamaConfig(**common, attention_bias=True),
          'mistral': lambda: transformers.MistralConfig(**common, sliding_window=5),
          'qwen2': lambda: transformers.Qwen2Config(**common),
          'qwen3': lambda: transformers.Qwen3Config(**common, head_dim=24)}[arch]()


def parity(arch: str, cfg) -> float:
  import jax.numpy as jnp
  import numpy as np
  import torch
  import transformers

  from embedjax.models.decoder import Decoder
  from embedjax.models.hf_decoder import load_decoder_params, read_decoder_config
  torch.manual_seed(cfg.seed)
  model = transformers.AutoModel.from_config(hf_config(arch, cfg.size.to_dict()),
                                             attn_implementation='eager')
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.eval()
  rng = np.random.default_rng(cfg.seed)
  worst = 0.0
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    dcfg = read_decoder_config(Path(tmp))
    params = load_decoder_params(Path(tmp), dcfg)
    for left in (False, True):
      lengths, width = list(cfg.lengths), max(cfg.lengths)
      ids = np.zeros((len(lengths), width), np.int64)
      mask = np.zeros_like(ids)
      for i, n in enumerate(lengths):
        sl = slice(width - n, width) if left else slice(0, n)
        ids[i, sl], mask[i, sl] = rng.integers(3, cfg.size.vocab_size, n), 1
      with torch.no_grad():
        want = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
      got = Decoder(dcfg).apply({'params': params}, jnp.asarray(ids, jnp.int32),
                                jnp.asarray(mask, jnp.int32), left_padded=left)
      keep = mask.astype(bool)
      worst = max(worst, float(np.abs(np.asarray(got)[keep] -
                                      want.last_hidden_state.numpy()[keep]).max()))
  return worst


def sharded_losses(cfg) -> dict[str, list[float]]:
  """Child process (8 forced devices): SGD losses of a tiny decoder on each mesh."""
  import jax
  import numpy as np
  import optax

  from embedjax.models.decoder import DecoderConfig
  from embedjax.models.pretrained import init_model_params
  from embedjax.models.spec import EmbedderSpec
  from embedjax.train import sharding
  from embedjax.train.state import create_state
  from embedjax.train.step import StepConfig
  dec = DecoderConfig(model_type='llama', vocab_size=64, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=32)
  spec = EmbedderSpec(decoder=dec, pooling='mean', max_seq_length=32)
  step_cfg = StepConfig(spec=spec, dropout=False)
  rng = np.random.default_rng(cfg.seed)
  b, lq, ld = 8, 8, 12
  batch = {'query_ids': rng.integers(3, 64, (b, lq)).astype(np.int32),
           'query_mask': np.ones((b, lq), np.int32),
           'doc_ids': rng.integers(3, 64, (b, ld)).astype(np.int32),
           'doc_mask': (np.arange(ld)[None] < rng.integers(4, ld + 1, (b, 1))).astype(np.int32),
           'doc_key': np.arange(b, dtype=np.int32)}
  tx = optax.sgd(0.05)
  # host copies: each mesh's state is placed from them (the jitted step donates its input)
  params = jax.tree_util.tree_map(
      np.asarray, {'encoder': init_model_params(spec, jax.random.key(cfg.seed))})
  out = {}
  for name, (data, fsdp, tensor) in MESHES.items():
    devices = jax.devices()[:data * fsdp * tensor]
    mesh = sharding.make_mesh(data, fsdp, tensor, devices=devices)
    state = create_state(params, tx)
    state_sh = sharding.state_shardings(state, mesh)
    state = sharding.shard_state(state, state_sh)
    step = sharding.sharded_train_step(step_cfg, tx, state_sh, mesh)
    losses = []
    for _ in range(cfg.steps):
      state, metrics = step(state, sharding.global_batch(mesh, batch), jax.random.key(0))
      losses.append(float(metrics['loss']))
    out[name] = losses
  return out


def gradcache_summary(path: Path) -> tuple[dict, str | None]:
  if not path.exists():
    return {}, f'{path.name} is missing'
  record = json.loads(path.read_text())
  if record.get('hand_assembled'):
    return {}, f'{path.name} is hand-assembled; rerun benchmarks/gradcache_cpu.py'
  job = record.get('jobs', {}).get('cached_c512_remat_full')
  if not job or job.get('step_s') is None:
    return {}, f'{path.name} has no timed cached_c512_remat_full job yet'
  return {'gradcache_chunk512_peak_gib': job['peak_rss_gib'],
          'gradcache_chunk512_step_s': job['step_s']}, None


def dry_run(cfg) -> dict:
  """What a run would do, without running it (for the config test)."""
  return {'archs': list(cfg.archs), 'meshes': list(MESHES), 'steps': cfg.steps,
          'out': cfg.out}


def main(argv) -> None:
  del argv
  cfg = _CONFIG.value
  if flags.FLAGS.child:
    Path(flags.FLAGS.child).write_text(json.dumps(sharded_losses(cfg)))
    return
  from embedjax import paths
  from embedjax.io import atomic_write_json
  from embedjax.provenance import Run
  run = Run(config=cfg, seeds=cfg.seed, extra_packages=('torch', 'transformers')).start()
  record: dict = {'parity': {}, 'sharding_max_loss_rel_diff': {}}
  for arch in cfg.archs:
    record['parity'][arch] = parity(arch, cfg)
    print(f'parity {arch}: max abs diff {record["parity"][arch]:.2e}', flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / 'losses.json'
    env = {**os.environ, 'XLA_FLAGS': (os.environ.get('XLA_FLAGS', '') +
                                       ' --xla_force_host_platform_device_count=8').strip()}
    subprocess.run([sys.executable, '-m', 'experiments.llm_embedders', '--config',
                    str(paths.repo_root() / 'configs' / 'llm_embedders.py'), '--child', str(out)],
                   check=True, env=env, cwd=paths.repo_root())
    losses = json.loads(out.read_text())
  single = losses['single']
  for name in MESHES:
    if name != 'single':
      record['sharding_max_loss_rel_diff'][name] = max(
          abs(a - b) / abs(b) for a, b in zip(losses[name], single))
  record['sharding_losses'] = losses
  gc, pending = gradcache_summary(paths.repo_root() / 'results' / 'bench_gradcache_cpu.json')
  record['gradcache_chunk512_peak_gib'] = gc.get('gradcache_chunk512_peak_gib')
  record['gradcache_chunk512_step_s'] = gc.get('gradcache_chunk512_step_s')
  if pending:
    record['pending'] = pending
  record['provenance'] = run.finish().provenance()
  target = paths.repo_root() / cfg.out
  atomic_write_json(target, record)
  print(json.dumps({k: v for k, v in record.items() if k != 'provenance'}, indent=2))
  print(f'wrote {target}')


if __name__ == '__main__':
  app.run(main)
