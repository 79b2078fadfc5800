"""Decoder encoding on CPU: embedjax vs transformers (torch), same weights, batches, threads.

    .venv/bin/python benchmarks/decoder_cpu.py [--threads T] [--runs 3] [--texts 128]
    .venv/bin/python benchmarks/decoder_cpu.py --quick      # smoke run: tiny model, one timed run

A random-init Llama-shaped decoder of about 0.1B parameters (``decoder-0.1b`` of
``embedjax.models.decoder.NAMED_SHAPES``: hidden 768, 12 layers, 12 query / 4 key-value heads,
SwiGLU 2048, vocabulary 32,000) is created by transformers and saved; embedjax loads that folder.
Both encode the same texts: token-id sequences with lengths drawn once from a fixed seed (16..256
tokens, skewed short like a retrieval corpus), sorted by length and cut into batches of 32,
right-padded to each batch's longest. embedjax: ``Decoder`` under ``jax.jit``, one program per
padded length (compiled during the warm-up run). transformers: ``AutoModel`` in eval mode under
``torch.inference_mode`` with its default (sdpa) attention; bidirectional attention is given to it
as a 4D additive mask (the way LLM2Vec-style models run on transformers). Both in float32, outputs
mean-pooled over real tokens and compared (minimum cosine). One untimed warm-up run each, then the
timed runs interleaved (A B, B A, ...). Reported per mode (causal, bidirectional): medians,
texts/s, ``ratio_vs_transformers`` = transformers median / embedjax median (> 1: embedjax faster).
Threads as in ``benchmarks/encode_cpu.py`` (affinity pinning for XLA, ``torch.set_num_threads``).
Also measured, to say what limits the ratio: the model's dominant operation alone, one float32
(3,072 x 768) @ (768 x 2,048) matmul (an MLP projection of a 32 x 96-token batch), jitted jax vs
torch, median of 20 (``gemm_probe``).
Writes ``results/bench_decoder_cpu.json`` with provenance.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))
sys.path.insert(0, str(_REPO / 'benchmarks'))

MODES = ('causal', 'bidirectional')
TINY = dict(model_type='llama', vocab_size=512, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, rope_theta=5e5)


def lengths(n: int, seed: int, max_len: int) -> list[int]:
  import numpy as np
  rng = np.random.default_rng(seed)
  # log-uniform between 16 and max_len: many short texts, a tail of long ones
  return sorted(int(x) for x in np.exp(rng.uniform(np.log(16), np.log(max_len), n)))


def batches(n: int, seed: int, vocab: int, batch: int, max_len: int):
  import numpy as np
  rng = np.random.default_rng(seed + 1)
  out = []
  ls = lengths(n, seed, max_len)
  for i in range(0, n, batch):
    chunk = ls[i:i + batch]
    width = max(chunk)
    ids = np.zeros((len(chunk), width), np.int32)
    mask = np.zeros_like(ids)
    for r, l in enumerate(chunk):
      ids[r, :l] = rng.integers(4, vocab, l)
      mask[r, :l] = 1
    out.append((ids, mask))
  return out


def make_folder(shape: dict, folder: Path) -> None:
  import torch
  import transformers
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(**{k: v for k, v in shape.items() if k != 'model_type'},
                                 pad_token_id=0, bos_token_id=1, eos_token_id=2)
  transformers.AutoModel.from_config(cfg).save_pretrained(str(folder))


def gemm_probe(reps: int = 20) -> dict:
  """GFLOP/s of one float32 MLP-sized matmul in jax (jit) and torch, medians of ``reps``."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  rng = np.random.default_rng(0)
  a = rng.random((32 * 96, 768), np.float32)
  b = rng.random((768, 2048), np.float32)
  f = jax.jit(lambda x, y: x @ y)
  ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
  flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
  out = {'shape': [list(a.shape), list(b.shape)]}
  for name, fn in (('jax', lambda: f(ja, jb).block_until_ready()), ('torch', lambda: ta @ tb)):
    fn()
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    out[f'{name}_gflops'] = flops / statistics.median(times) / 1e9
  out['jax_over_torch'] = out['jax_gflops'] / out['torch_gflops']
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--texts', type=int, default=128)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--max-len', type=int, default=256)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--out', default=str(_REPO / 'results' / 'bench_decoder_cpu.json'))
  args = parser.parse_args(argv)
  if args.quick:
    args.runs, args.texts, args.max_len = 1, 16, 48

  from encode_cpu import configure_threads
  threads = configure_threads(args.threads)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from embedjax.io import atomic_write_json
  from embedjax.models.decoder import NAMED_SHAPES, Decoder
  from embedjax.models.hf_decoder import load_decoder_params, read_decoder_config
  from embedjax.provenance import Run

  torch.set_num_threads(args.threads)
  shape = TINY if args.quick else NAMED_SHAPES['decoder-0.1b']
  run = Run(config=vars(args), seeds=0, extra_packages=('torch', 'transformers')).start()
  data = batches(args.texts, 0, shape['vocab_size'], args.batch, args.max_len)
  results: dict = {}
  with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp)
    make_folder(shape, folder)
    import transformers
    hf = transformers.AutoModel.from_pretrained(str(folder)).eval()
    params = None
    param_count = sum(p.numel() for p in hf.parameters())
    for mode in MODES:
      cfg = read_decoder_config(folder, attention=mode)
      params = params if params is not None else jax.device_put(load_decoder_params(folder, cfg))
      fwd = jax.jit(lambda p, i, m, cfg=cfg: Decoder(cfg).apply({'params': p}, i, m))

      def ours():
        out = []
        for ids, mask in data:
          h = fwd(params, jnp.asarray(ids), jnp.asarray(mask))
          out.append(np.asarray(h))
        return out

      def theirs():
        out = []
        with torch.inference_mode():
          for ids, mask in data:
            ti, tm = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
            if mode == 'bidirectional':
              keep = tm.bool()
              full = (keep[:, None, None, :] & keep[:, None, :, None]) | torch.eye(
                  ids.shape[1], dtype=torch.bool)[None, None]
              am = torch.zeros(full.shape).masked_fill(~full, torch.finfo(torch.float32).min)
              out.append(hf(input_ids=ti, attention_mask=am).last_hidden_state.numpy())
            else:
              out.append(hf(input_ids=ti, attention_mask=tm).last_hidden_state.numpy())
        return out

      def pooled(states):
        vecs = []
        for (ids, mask), h in zip(data, states):
          m = mask[..., None].astype(np.float64)
          vecs.append((h * m).sum(1) / m.sum(1))
        v = np.concatenate(vecs)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

      systems = {'embedjax': ours, 'transformers': theirs}
      warm = {name: fn() for name, fn in systems.items()}  # compiles / warms both
      cos = float((pooled(warm['embedjax']) * pooled(warm['transformers'])).sum(1).min())
      times = {name: [] for name in systems}
      for r in range(args.runs):
        order = list(systems) if r % 2 == 0 else list(systems)[::-1]
        for name in order:
          t0 = time.perf_counter()
          systems[name]()
          times[name].append(time.perf_counter() - t0)
      med = {name: statistics.median(t) for name, t in times.items()}
      results[mode] = {
          'seconds': times, 'median_seconds': med,
          'texts_per_second': {n: args.texts / m for n, m in med.items()},
          'ratio_vs_transformers': med['transformers'] / med['embedjax'],
          'min_cosine_pooled': cos}
      print(f'{mode:>13}: embedjax {med["embedjax"]:.2f} s, transformers '
            f'{med["transformers"]:.2f} s, ratio {results[mode]["ratio_vs_transformers"]:.2f}, '
            f'min cosine {cos:.6f}', flush=True)
  probe = gemm_probe()
  print(f'gemm probe: jax {probe["jax_gflops"]:.0f} GFLOP/s, torch {probe["torch_gflops"]:.0f} '
        f'GFLOP/s', flush=True)
  record = {
      'gemm_probe': probe,
      'settings': {'shape': shape, 'param_count': int(param_count), 'texts': args.texts,
                   'batch': args.batch, 'max_len': args.max_len, 'runs': args.runs,
                   'threads': threads, 'dtype': 'float32',
                   'lengths': 'log-uniform 16..max_len, seed 0, sorted, batches right-padded',
                   'transformers_attention': hf.config._attn_implementation},
      'results': results, 'provenance': run.finish().provenance()}
  atomic_write_json(Path(args.out), record)
  print(f'wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
