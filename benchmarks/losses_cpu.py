"""The cost of each training loss next to InfoNCE and next to the train step, on CPU.

    .venv/bin/python benchmarks/losses_cpu.py [--batches 32,1024] [--step-batch 32] [--runs 20]
    .venv/bin/python benchmarks/losses_cpu.py --quick     # smoke run: tiny shapes, few runs

For every loss a config can choose (``embedjax.losses.LOSSES``): the loss and its gradient with
respect to the embeddings (``jax.value_and_grad`` over q and d, jitted), on random float32
embeddings of width 384 (MiniLM's), at each batch size of ``--batches``; losses on scored pairs
get random scores, the others in-batch negatives only (no hard negatives, so every loss sees the
same B x B problem). One warm-up call (compilation), then the median of ``--runs`` calls.
``ratio_vs_info_nce`` = this loss's median / InfoNCE's at the same batch.

For scale, one whole train step (``embedjax.train.step``, jitted, state donated) of a random-init
all-MiniLM-L6-v2 shape with InfoNCE at ``--step-batch`` pairs (query 32 / document 128 tokens,
dropout on, AdamW): ``fraction_of_step`` = the loss's median at that batch / the step's median.
The question the issue asks is whether a loss could dominate a step: it should stay a small
fraction.

Writes ``results/bench_losses_cpu.json`` with provenance. Timings: run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))
sys.path.insert(0, str(_REPO / 'benchmarks'))

DIM = 384


def _timed(fn, args, runs: int) -> list[float]:
  import jax
  jax.block_until_ready(fn(*args))  # compile
  out = []
  for _ in range(runs):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out.append(time.perf_counter() - t)
  return out


def loss_program(name: str):
  """jit(value_and_grad) of loss ``name`` over (q, d), called with (q, d, scores). The guide
  losses use the model as its own guide; the teacher-score losses score one negative (the next
  row's document) with the embeddings themselves, held constant."""
  import jax
  import jax.numpy as jnp

  from embedjax.losses import LOSSES, SCORED_LOSSES

  fn = LOSSES[name]

  def value(q, d, scores):
    kw = {'scores': scores} if name in SCORED_LOSSES else {}
    if name in ('gist', 'cached_gist'):
      kw = {'guide_q': q, 'guide_d': d}  # the model as its own guide
    elif name in ('margin_mse', 'distill_kl_div'):
      neg = jnp.roll(d, 1, axis=0)  # one negative: the next row's document
      teacher = jax.lax.stop_gradient(jnp.stack([jnp.sum(q * d, -1), jnp.sum(q * neg, -1)], 1))
      return fn(q, d, neg, teacher if name == 'distill_kl_div' else teacher[:, 0] - teacher[:, 1])[0]
    return fn(q, d, **kw)[0]

  return jax.jit(jax.value_and_grad(value, argnums=(0, 1)))


def step_seconds(batch: int, runs: int, quick: bool) -> list[float]:
  import jax
  import numpy as np

  import train_common as tc
  from embedjax.models.pretrained import init_model_params, load_spec

  spec = load_spec('all-MiniLM-L6-v2')[0]
  if quick:
    import dataclasses
    spec = dataclasses.replace(spec, bert=dataclasses.replace(
        spec.bert, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64))
  params = init_model_params(spec, jax.random.key(0))
  step, state = tc.embedjax_step(spec, params)
  rng = np.random.default_rng(0)
  batch_arrays = tc.random_pairs(rng, batch, 32, 128)
  key = jax.random.key(1)
  state, m = step(state, batch_arrays, key)  # compile
  jax.block_until_ready(m)
  out = []
  for _ in range(runs):
    t = time.perf_counter()
    state, m = step(state, batch_arrays, key)
    jax.block_until_ready(m)
    out.append(time.perf_counter() - t)
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--batches', default='32,1024')
  ap.add_argument('--step-batch', type=int, default=32)
  ap.add_argument('--runs', type=int, default=20)
  ap.add_argument('--step-runs', type=int, default=3)
  ap.add_argument('--quick', action='store_true')
  ap.add_argument('--out', default=str(_REPO / 'results' / 'bench_losses_cpu.json'))
  args = ap.parse_args(argv)
  if args.quick:
    args.batches, args.step_batch, args.runs, args.step_runs = '8', 8, 2, 1

  import jax
  import numpy as np

  from embedjax.io import atomic_write_json
  from embedjax.losses import LOSSES
  from embedjax.provenance import Run

  run = Run(config=vars(args), seeds=0).start()
  batches = [int(b) for b in args.batches.split(',')]
  rng = np.random.default_rng(0)
  results: dict = {}
  for b in batches:
    q = jax.numpy.asarray(rng.standard_normal((b, DIM)), jax.numpy.float32)
    d = jax.numpy.asarray(rng.standard_normal((b, DIM)), jax.numpy.float32)
    scores = jax.numpy.asarray(rng.uniform(0, 5, b), jax.numpy.float32)
    row = {}
    for name in LOSSES:
      secs = _timed(loss_program(name), (q, d, scores), args.runs)
      row[name] = {'median_ms': 1e3 * statistics.median(secs), 'runs': len(secs)}
      print(f'B={b} {name}: {row[name]["median_ms"]:.3f} ms', flush=True)
    base = row['info_nce']['median_ms']
    for r in row.values():
      r['ratio_vs_info_nce'] = r['median_ms'] / base
    results[str(b)] = row
  step = step_seconds(args.step_batch, args.step_runs, args.quick)
  step_ms = 1e3 * statistics.median(step)
  print(f'train step B={args.step_batch}: {step_ms:.1f} ms', flush=True)
  if str(args.step_batch) in results:
    for r in results[str(args.step_batch)].values():
      r['fraction_of_step'] = r['median_ms'] / step_ms
  record = {
      'benchmark': 'losses_cpu',
      'settings': {'dim': DIM, 'batches': batches, 'runs': args.runs, 'hard_negatives': 0,
                   'step': {'model': 'all-MiniLM-L6-v2 shape, random init' +
                            (' (shrunk: --quick)' if args.quick else ''),
                            'batch': args.step_batch, 'query_len': 32, 'doc_len': 128,
                            'loss': 'info_nce', 'runs': args.step_runs},
                   'quick': args.quick},
      'results': results, 'step_median_ms': step_ms,
      'provenance': run.finish().provenance()}
  atomic_write_json(Path(args.out), record)
  print(f'wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
