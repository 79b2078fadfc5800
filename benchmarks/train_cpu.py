"""Training steps/s on the CPU: embedjax vs sentence-transformers (torch), and the JAX peer representax.

    .venv/bin/python benchmarks/train_cpu.py [--threads T] [--rounds 5] [--steps-per-round 2] \
        [--representax-python /tmp/rx/bin/python]
    .venv/bin/python benchmarks/train_cpu.py --quick      # smoke run: B=4, short lengths, 1 round

Same model (all-MiniLM-L6-v2 weights), same batch, same loss, same optimizer for every system:
  batch      B=32 SciFact train pairs (claim -> cited abstract, title + " " + text), tokenized once
             by the model's tokenizer and padded / cut to query 32 and doc 128 tokens; the very same
             (B, L) id and mask arrays go to every system (``--inputs random`` for random valid ids).
  loss       in-batch InfoNCE = MultipleNegativesRankingLoss, cosine similarity, scale 20.
  optimizer  AdamW lr 2e-5, weight decay 0.01, no clipping, no schedule. float32, dropout on.
  embedjax   ``make_train_step(StepConfig(...), make_optimizer(...))`` under ``jax.jit`` with the
             state donated, as ``embedjax.train.loop`` builds it (weight decay skips biases and
             LayerNorm there, as the Hugging Face trainer does; the others decay every parameter).
  sentence-transformers
             ``model.train(); loss = MultipleNegativesRankingLoss(model)(features, None);
             loss.backward(); opt.step(); opt.zero_grad()`` with ``torch.optim.AdamW`` - what
             ``SentenceTransformerTrainer`` does per step, without its dataloader, collator and
             logging overhead (so this is the faster side of what an ST user gets).
  representax
             when ``--representax-python`` names a Python with representax installed (its own
             venv): ``benchmarks/peers/representax_train.py`` in a subprocess, driven step by step
             over a pipe so that its steps interleave with the others'.
Timing: each system gets ``--warmup`` untimed steps (jit compilation, allocator and thread-pool
warm-up), then ``--rounds`` rounds in which every system runs ``--steps-per-round`` steps, each step
timed on its own (until the loss is on the host), with the order of systems rotated every round so
drift from other work on a shared machine hits all of them. Reported: per-step seconds, medians,
steps/s = 1 / median, ``ratio_vs_sentence_transformers`` = embedjax steps/s / ST steps/s (and the
same for representax), the deterministic (no-dropout) loss of the batch in every system as a check
that they compute the same objective, load averages.

Threads: T (default os.cpu_count()) for every system. torch: ``torch.set_num_threads(T)``. XLA CPU
has no thread-count flag in jax 0.10 (``--xla_cpu_multi_thread_eigen`` only switches the Eigen pool
on or off; it is set to true and recorded): its pool follows the CPUs the process may run on, so
for T below the machine's CPU count the process is pinned to T CPUs (``os.sched_setaffinity``),
which bounds torch and the representax subprocess (it inherits the affinity) too.
Writes ``results/bench_train_cpu.json`` (atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import train_common as tc  # this folder: python benchmarks/x.py puts it on sys.path

SYSTEMS = ('embedjax', 'sentence_transformers', 'representax')
PEER = Path(__file__).resolve().parent / 'peers' / 'representax_train.py'


def configure_threads(threads: int) -> dict:
  """Thread settings, applied before jax / torch start (hence the late imports below)."""
  flags = os.environ.get('XLA_FLAGS', '')
  if '--xla_cpu_multi_thread_eigen' not in flags:
    os.environ['XLA_FLAGS'] = (flags + ' --xla_cpu_multi_thread_eigen=true').strip()
  os.environ.setdefault('OMP_NUM_THREADS', str(threads))
  os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')  # tokenization happens once, untimed
  allowed = sorted(os.sched_getaffinity(0))
  if threads < len(allowed):
    os.sched_setaffinity(0, allowed[:threads])
  return {'XLA_FLAGS': os.environ['XLA_FLAGS'], 'OMP_NUM_THREADS': os.environ['OMP_NUM_THREADS'],
          'cpu_affinity': sorted(os.sched_getaffinity(0)),
          'jax_imported_before_settings': 'jax' in sys.modules}


def make_inputs(kind: str, tokenizer, batch: int, query_len: int, doc_len: int,
                data_dir: Path | None) -> tuple[dict, dict]:
  """(numpy batch, description). 'scifact': the first B train pairs; 'random': random valid ids."""
  import numpy as np
  if kind == 'random':
    return (tc.random_pairs(np.random.default_rng(0), batch, query_len, doc_len,
                            vocab=tokenizer.vocab_size),
            {'kind': 'random valid ids, full length (no padding)'})
  from embedjax.data.readers import read_beir
  data = read_beir(data_dir / 'scifact', 'train')
  doc_text = dict(zip(data.corpus_ids, data.corpus_texts))
  queries, docs = [], []
  for qid, text in zip(data.query_ids, data.query_texts):
    did = sorted(data.qrels[qid])[0]  # first cited abstract: a fixed, reproducible choice
    queries.append(text)
    docs.append(doc_text[did])
    if len(queries) == batch:
      break
  if len(queries) < batch:
    raise SystemExit(f'SciFact train has only {len(queries)} queries, fewer than B={batch}')
  qt, dt = tokenizer.with_max_length(query_len), tokenizer.with_max_length(doc_len)
  q = qt.pad(qt.encode(queries), query_len)
  d = dt.pad(dt.encode(docs), doc_len)
  out = {'query_ids': q['input_ids'], 'query_mask': q['attention_mask'],
         'doc_ids': d['input_ids'], 'doc_mask': d['attention_mask'],
         'doc_key': np.arange(batch, dtype=np.int32)}
  desc = {'kind': 'SciFact train: first B queries with their first cited abstract',
          'query_tokens_real': int(q['attention_mask'].sum()),
          'doc_tokens_real': int(d['attention_mask'].sum()),
          'docs_cut_at_limit': int((d['attention_mask'].sum(1) == doc_len).sum())}
  return out, desc


class EmbedjaxSystem:
  def __init__(self, model, batch):
    import jax
    self.jax = jax
    self.step, self.state = tc.embedjax_step(model.spec, model.params)
    self.batch = jax.device_put(batch)
    self.rng = jax.random.key(0)
    from embedjax.train.step import StepConfig, loss_and_grads
    cfg = StepConfig(spec=model.spec, scale=20.0, dropout=False)
    loss = jax.jit(lambda p, b: loss_and_grads(cfg, p, b, jax.random.key(0))[0][0])
    self.loss_no_dropout = float(loss({'encoder': model.params}, self.batch))

  def run(self, n: int) -> tuple[list[float], list[float], float]:
    times, cpu, loss = [], [], None
    for _ in range(n):
      c, t = time.process_time(), time.perf_counter()
      self.state, metrics = self.step(self.state, self.batch, self.rng)
      loss = float(metrics['loss'])  # the host read waits for the step
      times.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
    return times, cpu, loss


class SentenceTransformersSystem:
  def __init__(self, source: str, batch, threads: int):
    import torch
    from sentence_transformers import SentenceTransformer
    try:
      from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers < 6
      from sentence_transformers.losses import MultipleNegativesRankingLoss
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.torch = torch
    self.model = SentenceTransformer(source, device='cpu')
    self.loss_fn = MultipleNegativesRankingLoss(self.model, scale=20.0)
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=tc.LR, weight_decay=tc.WEIGHT_DECAY)

    def feats(ids, mask):
      ids, mask = torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(mask, dtype=torch.long)
      return {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': torch.zeros_like(ids)}
    self.columns = [feats(batch['query_ids'], batch['query_mask']),
                    feats(batch['doc_ids'], batch['doc_mask'])]
    self.model.eval()
    with torch.no_grad():
      self.loss_no_dropout = float(self.loss_fn(self._features(), None))
    self.model.train()
    hf = self.model[0].auto_model
    self.info = {'attn_implementation': getattr(hf.config, '_attn_implementation', None),
                 'torch_num_threads': torch.get_num_threads(),
                 'torch_interop_threads': torch.get_num_interop_threads(),
                 'max_seq_length': self.model.max_seq_length}

  def _features(self):
    # Fresh dicts each step: the modules add 'token_embeddings' / 'sentence_embedding' in place.
    return [dict(c) for c in self.columns]

  def run(self, n: int) -> tuple[list[float], list[float], float]:
    times, cpu, loss = [], [], None
    for _ in range(n):
      c, t = time.process_time(), time.perf_counter()
      out = self.loss_fn(self._features(), None)
      out.backward()
      self.opt.step()
      self.opt.zero_grad()
      loss = float(out.detach())
      times.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
    return times, cpu, loss


class RepresentaxSystem:
  """The peer in its own venv, one JSON request/answer per line over a pipe."""

  def __init__(self, python: str, inputs_npz: Path, model_path: str, random_init: bool,
               log_path: Path):
    cmd = [python, str(PEER), '--inputs', str(inputs_npz), '--model-path', model_path]
    if random_init:
      cmd.append('--random-init')
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)  # nothing of embedjax's environment leaks into the peer's
    self.log = open(log_path, 'w')
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.log, text=True, env=env, cwd=tempfile.gettempdir())
    self.cmd = cmd
    first = self._read()
    if 'ready' not in first:
      raise RuntimeError(first.get('error', str(first)) + '\n' + first.get('traceback', ''))
    self.info = first['ready']
    self.loss_no_dropout = self.info['loss_no_dropout']

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      self.log.flush()
      raise RuntimeError(f'representax peer exited (rc={self.proc.poll()}); see {self.log.name}')
    return json.loads(line)

  def _ask(self, cmd: str) -> dict:
    self.proc.stdin.write(cmd + '\n')
    self.proc.stdin.flush()
    out = self._read()
    if 'error' in out:
      raise RuntimeError(out['error'] + '\n' + out.get('traceback', ''))
    return out

  def warmup(self, n: int) -> list[float]:
    return self._ask(f'warmup {n}')['warmup_s']

  def run(self, n: int) -> tuple[list[float], list[float], float]:
    out = self._ask(f'run {n}')
    return out['times'], out['cpu_times'], out['loss']

  def close(self):
    try:
      self._ask('quit')
    except Exception:  # noqa: BLE001 - closing only
      pass
    self.proc.wait(timeout=60)
    self.log.close()


def bench(systems: dict, warmup: int, rounds: int, per_round: int, log=print) -> dict:
  res = {'warmup_s': {}, 'step_s': {n: [] for n in systems}, 'cpu_s': {n: [] for n in systems},
         'order': [], 'last_loss': {}}
  for name, sys_ in systems.items():
    t = time.perf_counter()
    if hasattr(sys_, 'warmup'):
      times = sys_.warmup(warmup)
    else:
      times = []
      for _ in range(warmup):
        times += sys_.run(1)[0]
    res['warmup_s'][name] = [round(x, 3) for x in times]
    log(f'  warm-up {name}: {", ".join(f"{x:.1f}" for x in times)} s '
        f'({time.perf_counter() - t:.0f} s)')
  names = list(systems)
  for r in range(rounds):
    k = r % len(names)
    order = names[k:] + names[:k]  # rotate so that every system follows every other
    res['order'].append(order)
    for name in order:
      times, cpu, loss = systems[name].run(per_round)
      res['step_s'][name] += [round(x, 4) for x in times]
      res['cpu_s'][name] += [round(x, 4) for x in cpu]
      res['last_loss'][name] = loss
      log(f'  round {r + 1}/{rounds} {name}: {", ".join(f"{x:.2f}" for x in times)} s '
          f'(loss {loss:.4f}, load {tc.load_average()[0]})')
  return res


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--threads', type=int, default=os.cpu_count() or 1)
  p.add_argument('--batch', type=int, default=32, help='pairs per step')
  p.add_argument('--query-len', type=int, default=32)
  p.add_argument('--doc-len', type=int, default=128)
  p.add_argument('--inputs', choices=('scifact', 'random'), default='scifact')
  p.add_argument('--data-dir', default=None)
  p.add_argument('--model', default='all-MiniLM-L6-v2')
  p.add_argument('--warmup', type=int, default=3,
                 help='untimed steps per system (representax compiles its step twice: steps 1 and 2)')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--steps-per-round', type=int, default=2)
  p.add_argument('--representax-python', default=None,
                 help="python of a venv with representax installed (e.g. /tmp/rx/bin/python)")
  p.add_argument('--representax-random-init', action='store_true',
                 help='random-init the peer (same shape) instead of loading the weights')
  p.add_argument('--systems', default=','.join(SYSTEMS[:2]) + ',representax',
                 help='comma-separated subset of ' + ','.join(SYSTEMS))
  p.add_argument('--quick', action='store_true', help='smoke run: B=4, L=8/16, 2 warm-up steps, 1 round')
  p.add_argument('--out', default=None,
                 help='default results/bench_train_cpu.json (.quick.json with --quick)')
  p.add_argument('--log-dir', default=str(tc.REPO / 'runs' / 'train_cpu'))
  return p


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  if args.quick:
    args.batch, args.query_len, args.doc_len = 4, 8, 16
    args.warmup, args.rounds, args.steps_per_round = 2, 1, 1  # representax compiles twice
  thread_settings = configure_threads(args.threads)
  load_before = tc.load_average()
  library_state = tc.library_state()  # before the imports: the code this run executes

  import numpy as np
  import jax

  from embedjax import paths
  from embedjax.io import atomic_write_json
  from embedjax.models.pretrained import load_pretrained
  from embedjax.provenance import Run

  wanted = [s.strip() for s in args.systems.split(',') if s.strip()]
  unknown = sorted(set(wanted) - set(SYSTEMS))
  if unknown:
    raise SystemExit(f'unknown system(s) {unknown}; choose from {SYSTEMS}')
  data_dir = Path(args.data_dir) if args.data_dir else paths.shared_data_dir()
  if args.inputs == 'scifact' and data_dir is None:
    raise SystemExit('no shared data folder: pass --data-dir, or --inputs random')
  run = Run(config=dict(vars(args)), seeds={'random_pairs': 0, 'torch': 0},
            inputs=[data_dir / 'scifact'] if args.inputs == 'scifact' else [],
            extra_packages=('torch', 'sentence-transformers', 'transformers')).start()
  model = load_pretrained(args.model)
  batch, inputs_desc = make_inputs(args.inputs, model.tokenizer, args.batch, args.query_len,
                                   args.doc_len, data_dir)
  log_dir = Path(args.log_dir)
  log_dir.mkdir(parents=True, exist_ok=True)
  inputs_npz = log_dir / 'inputs.npz'
  np.savez(inputs_npz, **batch)

  systems: dict = {}
  peer_record: dict = {'requested': 'representax' in wanted}
  if 'embedjax' in wanted:
    systems['embedjax'] = EmbedjaxSystem(model, batch)
  if 'sentence_transformers' in wanted:
    systems['sentence_transformers'] = SentenceTransformersSystem(model.source, batch, args.threads)
  if 'representax' in wanted:
    if not args.representax_python:
      peer_record['outcome'] = 'not run: pass --representax-python PATH (a venv with representax)'
    else:
      try:
        rx = RepresentaxSystem(args.representax_python, inputs_npz, model.source,
                               args.representax_random_init, log_dir / 'representax.stderr.log')
        systems['representax'] = rx
        peer_record.update(outcome='ran', command=' '.join(rx.cmd), **rx.info)
      except Exception as e:  # noqa: BLE001 - recorded exactly, the others still run
        peer_record['outcome'] = f'failed: {type(e).__name__}: {e}'
  print(f'systems: {", ".join(systems)}; B={args.batch} Lq={args.query_len} Ld={args.doc_len} '
        f'threads={args.threads}', flush=True)
  res = bench(systems, args.warmup, args.rounds, args.steps_per_round,
              log=lambda s: print(s, flush=True))
  if 'representax' in systems:
    systems['representax'].close()

  med = {n: tc.median(v) for n, v in res['step_s'].items()}
  sps = {n: round(1.0 / v, 4) for n, v in med.items() if v}
  ratios = {}
  if 'sentence_transformers' in sps:
    for n in sps:
      if n != 'sentence_transformers':
        ratios[n] = round(sps[n] / sps['sentence_transformers'], 4)
  # Paired per round: the systems of one round ran back to back, so their ratio is less exposed to
  # load that drifts over minutes than the ratio of overall medians.
  per_round = {}
  k = args.steps_per_round
  if 'sentence_transformers' in med:
    for n in med:
      if n != 'sentence_transformers':
        per_round[n] = [round(tc.median(res['step_s']['sentence_transformers'][i:i + k]) /
                              tc.median(res['step_s'][n][i:i + k]), 4)
                        for i in range(0, len(res['step_s'][n]), k)]
  cpu_med = {n: tc.median(v) for n, v in res['cpu_s'].items()}
  record = {
      'benchmark': 'train_cpu', 'quick': args.quick,
      'ratio_vs_sentence_transformers': ratios.get('embedjax'),
      'ratios_vs_sentence_transformers': ratios,
      'ratio_embedjax_vs_representax': (round(sps['embedjax'] / sps['representax'], 4)
                                        if {'embedjax', 'representax'} <= set(sps) else None),
      'median_step_s': {n: round(v, 4) for n, v in med.items() if v},
      'paired_round_ratios_vs_sentence_transformers': per_round,
      'median_of_paired_round_ratios': {n: round(tc.median(v), 4) for n, v in per_round.items()},
      'median_cpu_s_per_step': {n: round(v, 4) for n, v in cpu_med.items() if v},
      'cpu_ratio_vs_sentence_transformers': (
          {n: round(cpu_med['sentence_transformers'] / v, 4) for n, v in cpu_med.items()
           if v and n != 'sentence_transformers'} if cpu_med.get('sentence_transformers') else {}),
      'steps_per_s': sps,
      'pairs_per_s': {n: round(v * args.batch, 2) for n, v in sps.items()},
      'step_s': res['step_s'], 'cpu_s': res['cpu_s'], 'warmup_s': res['warmup_s'],
      'round_order': res['order'],
      'loss_no_dropout': {n: round(s.loss_no_dropout, 6) for n, s in systems.items()},
      'last_train_loss': res['last_loss'],
      'representax': peer_record,
      'model': args.model, 'model_source': model.source,
      'batch': {'pairs': args.batch, 'query_len': args.query_len, 'doc_len': args.doc_len,
                **inputs_desc},
      'settings': {
          **thread_settings, 'threads': args.threads,
          'jax_backend': jax.default_backend(),
          'jax_default_matmul_precision': str(jax.config.jax_default_matmul_precision),
          'sentence_transformers': (systems['sentence_transformers'].info
                                    if 'sentence_transformers' in systems else None),
          'loss': 'MultipleNegativesRankingLoss / info_nce, cosine, scale 20, in-batch negatives',
          'optimizer': f'AdamW lr {tc.LR}, weight decay {tc.WEIGHT_DECAY}, no clipping, constant',
          'dtype': 'float32', 'dropout': True,
          'warmup_steps': args.warmup, 'rounds': args.rounds, 'steps_per_round': args.steps_per_round,
          'timing': 'each step timed alone (wall, and CPU seconds of its process: '
                    'time.process_time), until its loss is on the host; order rotated per round',
          'st_step': 'loss_fn(features, None).backward(); opt.step(); opt.zero_grad() under '
                     'model.train() - SentenceTransformerTrainer per step without its dataloader',
          'ratio': 'system steps/s (1 / median step seconds) / sentence-transformers steps/s',
          'load_average_before': load_before, 'load_average_after': tc.load_average(),
      },
      'provenance': run.finish().provenance(),
      'embedjax_code': library_state,
  }
  out = Path(args.out) if args.out else (
      tc.REPO / 'results' / ('bench_train_cpu.quick.json' if args.quick else 'bench_train_cpu.json'))
  atomic_write_json(out, record)
  print(f'{"system":24s} {"median s":>9s} {"steps/s":>8s} {"pairs/s":>8s} {"vs ST":>6s}')
  for n in sps:
    print(f'{n:24s} {med[n]:9.3f} {sps[n]:8.3f} {record["pairs_per_s"][n]:8.1f} '
          f'{ratios.get(n, 1.0 if n == "sentence_transformers" else float("nan")):6.2f}')
  print(f'no-dropout loss: {record["loss_no_dropout"]}')
  print(f'representax: {peer_record.get("outcome")}')
  print(f'wrote {out}')
  return record


if __name__ == '__main__':
  main()
