"""Training throughput on an NVIDIA GPU: embedjax vs a PyTorch in-batch-InfoNCE step (eager and
torch.compile), MiniLM-L6 and BERT-base shapes, bf16 compute, random init.

    .venv/bin/python benchmarks/train_gpu.py                 # on an H100 / H200
    .venv/bin/python benchmarks/train_gpu.py --smoke         # CPU smoke: tiny shapes, 2 steps

Setup (the one of DESIGN.md's performance notes):
  models   minilm_l6: 6 layers, hidden 384, 12 heads, intermediate 1536;
           bert_base: 12 layers, hidden 768, 12 heads, intermediate 3072; vocab 30522; random init.
  batch    B=256 pairs, queries and docs both L=128 tokens, random valid ids, no padding; the same
           device-resident batch every step (host input is not part of what is measured).
  step     one optimizer update on in-batch InfoNCE (MNRL: mean pooling, L2 normalisation, cosine
           logits x 20, cross-entropy against the diagonal), AdamW lr 2e-5 wd 0.01, dropout on.
  embedjax ``BertConfig(dtype='bfloat16')`` (bf16 matmuls, float32 params, LayerNorm and softmax
           statistics in float32), ``make_train_step`` + ``make_optimizer`` under ``jax.jit`` with
           the state donated, as ``embedjax.train.loop`` builds it.
  torch    transformers ``BertModel`` (``attn_implementation='sdpa'``, no pooler), float32 params,
           ``torch.autocast(bfloat16)``, the same loss, ``torch.optim.AdamW`` (fused on CUDA);
           torch_eager as is, torch_compile with ``torch.compile`` of the forward + loss (the
           backward is compiled with it by AOTAutograd; the optimizer step stays eager, fused).
Each (model, system) runs in its own subprocess, so each has the whole GPU and its own allocator
(``--in-process`` runs them in one process; ``--smoke`` does that). Per run: ``--warmup`` untimed
steps (compilation), then ``--blocks`` blocks of ``--steps`` steps, each block timed from the first
dispatch to the device having finished the last step; reported is the median block, as pairs/s and
ms/step, plus the peak device memory.

FLOPs per step (forward + backward, the usual 3x forward), counted for MFU:
  6 * N * T  +  12 * layers * hidden * sum over sequences of L^2
where N = layers * (4 hidden^2 + 2 hidden intermediate) is the parameter count of the matmuls
(Q, K, V, output projection, FFN up and down; embeddings are lookups, not matmuls), T = B * (Lq + Ld)
tokens, and the second term is QK^T and PV (2 * 2 * L^2 * hidden per layer per sequence forward).
MFU = FLOPs/step * steps/s / peak, with the dense bf16 peak 989 TFLOP/s for H100 SXM and H200
(``--peak-tflops`` for another device; null when unknown). ``mfu_all_params`` also reports the
6 * (all parameters, embeddings included) * T convention some papers use, for comparison.
Writes ``results/bench_train_gpu.json`` with ``ratio_vs_torch_compile`` (embedjax pairs/s /
torch.compile pairs/s per model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import train_common as tc  # this folder: python benchmarks/x.py puts it on sys.path
from gpu_common import run_child, set_backends, top_kernels, with_setup_time  # this folder

_T0 = time.perf_counter()  # --time-budget counts from here (the caller's limit covers imports)
RESERVE_S, MIN_RUN_S = 15.0, 20.0  # --time-budget: kept for writing the file; least worth a start

# embedjax: BERT's attention_impl 'auto' (cuDNN's fused attention on a GPU where it applies);
# embedjax_xla: the einsum path everywhere, to measure what the fused path gives; representax: the
# JAX peer's own compiled step (benchmarks/peers/representax_train.py) at its fastest settings.
SYSTEMS = ('embedjax', 'torch_eager', 'torch_compile', 'representax', 'embedjax_xla')
RATIO_SYSTEMS = ('embedjax', 'torch_compile')  # run first: the ratio's two sides
# embedjax's step with one setting changed, each against plain embedjax in the same run (suite R:
# the remat policy and XLA GPU flags chosen by measurement, not by default). A variant's XLA flags
# join XLA_FLAGS in its child process before JAX starts (an in-process run cannot apply them and
# records so).
VARIANTS = {
    'embedjax_remat_dots': {'remat': 'dots'},   # matmul outputs kept, the rest recomputed
    'embedjax_remat_full': {'remat': 'full'},   # each layer recomputed in the backward pass
    'embedjax_cublas': {'xla_flags': '--xla_gpu_enable_triton_gemm=false'},  # cuBLAS GEMMs only
    'embedjax_command_buffers': {  # CUDA graphs over more op kinds: fewer kernel launches
        'xla_flags': '--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL'},
    'embedjax_latency_hiding': {'xla_flags': '--xla_gpu_enable_latency_hiding_scheduler=true'},
}
ALL_SYSTEMS = SYSTEMS + tuple(VARIANTS)
MODELS = {
    'minilm_l6': dict(hidden=384, layers=6, heads=12, intermediate=1536),
    'bert_base': dict(hidden=768, layers=12, heads=12, intermediate=3072),
}
# Tiny stand-ins with the same names, for --smoke on a CPU.
# The same tiny shape for both: the smoke run then compiles each system once (the programs are
# cached by shape in this process) and stays well under a minute of CPU time.
SMOKE_MODELS = {
    'minilm_l6': dict(hidden=32, layers=1, heads=2, intermediate=64),
    'bert_base': dict(hidden=32, layers=1, heads=2, intermediate=64),
}
VOCAB, SMOKE_VOCAB = 30522, 2000
PEAK_TFLOPS = {'H100': 989.0, 'H200': 989.0}  # dense bf16, SXM


def flops_per_step(shape: dict, batch: int, query_len: int, doc_len: int, vocab: int) -> dict:
  h, layers, inter = shape['hidden'], shape['layers'], shape['intermediate']
  n_matmul = layers * (4 * h * h + 2 * h * inter)
  tokens = batch * (query_len + doc_len)
  attention = 12 * layers * h * batch * (query_len ** 2 + doc_len ** 2)
  n_embed = (vocab + 512 + 2) * h
  return {'matmul_params': n_matmul, 'tokens': tokens, 'dense': 6 * n_matmul * tokens,
          'attention': attention, 'total': 6 * n_matmul * tokens + attention,
          'all_params_convention': 6 * (n_matmul + n_embed) * tokens}


def peak_flops(device: str, override: float | None) -> float | None:
  if override:
    return override * 1e12
  for key, tflops in PEAK_TFLOPS.items():
    if key in device:
      return tflops * 1e12
  return None


def timed_blocks(run, args) -> list[float]:
  """Seconds of each of ``args.blocks`` timed blocks of ``run(args.steps)`` (``run`` waits for
  the device before it returns)."""
  blocks = []
  for _ in range(args.blocks):
    t = time.perf_counter()
    run(args.steps)
    blocks.append(time.perf_counter() - t)
  return blocks


def random_batch(batch: int, query_len: int, doc_len: int, vocab: int):
  import numpy as np
  return tc.random_pairs(np.random.default_rng(0), batch, query_len, doc_len, vocab=vocab)


# ---------------------------------------------------------------------------------------------
# embedjax
_EMBEDJAX_PROGRAMS: dict = {}  # spec -> (jitted init, jitted step, tx), reused within a process
def run_embedjax(shape: dict, args, vocab: int, attention_impl: str = 'auto',
                 remat: str = 'none') -> dict:
  import jax
  from embedjax.models.bert import BertConfig, attention_path
  from embedjax.models.pretrained import init_params
  from embedjax.models.spec import EmbedderSpec
  from embedjax.train.state import create_state

  bert = BertConfig(vocab_size=vocab, hidden_size=shape['hidden'],
                    num_hidden_layers=shape['layers'], num_attention_heads=shape['heads'],
                    intermediate_size=shape['intermediate'], max_position_embeddings=512,
                    dtype=args.dtype, attention_probs_dropout_prob=args.attention_dropout,
                    attention_impl=attention_impl, remat=remat)
  spec = EmbedderSpec(bert=bert, pooling='mean', normalize=True,
                      max_seq_length=max(args.query_len, args.doc_len))
  if spec not in _EMBEDJAX_PROGRAMS:
    # Under jit: one compiled init instead of op-by-op dispatch (seconds on a CPU, and on the GPU
    # the weights are created where they are used).
    init = jax.jit(init_params, static_argnums=0)
    _EMBEDJAX_PROGRAMS[spec] = (init,) + tc.embedjax_program(spec, init(bert, jax.random.key(0)))
  init, step, tx = _EMBEDJAX_PROGRAMS[spec]
  state = create_state({'encoder': init(bert, jax.random.key(0))}, tx)
  batch = jax.device_put(random_batch(args.batch, args.query_len, args.doc_len, vocab))
  rng = jax.random.key(1)
  metrics = None

  def run(n):
    nonlocal state, metrics
    for _ in range(n):
      state, metrics = step(state, batch, rng)
    jax.block_until_ready((state, metrics))

  t = time.perf_counter()
  run(args.warmup)
  warm = time.perf_counter() - t
  blocks = timed_blocks(run, args)
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  profile = top_kernels(run, args.profile_steps, 'steps')
  try:  # whether the step calls cuDNN's fused attention (lowered only: no second compile)
    fmha = '__cudnn$fmha' in step.lower(state, batch, rng).as_text()
  except Exception:  # noqa: BLE001 - a diagnostic only
    fmha = None
  return {'warmup_s': round(warm, 3), 'block_s': blocks, 'loss': float(metrics['loss']),
          'profile': profile, 'attention_impl': attention_impl, 'remat': remat,
          'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'attention_path': attention_path(bert, packed=False, blocked=False,
                                           dropout=args.attention_dropout > 0),
          'hlo_calls_cudnn_fmha': fmha,
          'peak_device_bytes': stats.get('peak_bytes_in_use'),
          'device': dev.device_kind, 'backend': jax.default_backend(),
          'versions': {'jax': jax.__version__}}


# ---------------------------------------------------------------------------------------------
# torch
_TORCH_PROGRAMS: dict = {}  # (shape, vocab, compiled) -> (model, loss function)


def _torch_device():
  import torch
  return 'cuda' if torch.cuda.is_available() else 'cpu'


def run_torch(shape: dict, args, vocab: int, compiled: bool) -> dict:
  import torch
  import torch.nn.functional as F
  import transformers
  from transformers import BertConfig, BertModel

  device = _torch_device()
  torch.manual_seed(0)
  if device == 'cpu':
    torch.set_num_threads(args.threads)
  key = (tuple(sorted(shape.items())), vocab, compiled)
  cached = _TORCH_PROGRAMS.get(key)
  cfg = BertConfig(vocab_size=vocab, hidden_size=shape['hidden'],
                   num_hidden_layers=shape['layers'], num_attention_heads=shape['heads'],
                   intermediate_size=shape['intermediate'], max_position_embeddings=512,
                   attention_probs_dropout_prob=args.attention_dropout,
                   attn_implementation='sdpa')
  # Within one process (--in-process, --smoke) a second run of the same shape reuses the model
  # and so the compiled function (a new module would make torch.compile trace again).
  model = cached[0] if cached else BertModel(cfg, add_pooling_layer=False).to(device).train()
  opt = torch.optim.AdamW(model.parameters(), lr=tc.LR, weight_decay=tc.WEIGHT_DECAY,
                          fused=device == 'cuda')
  b = random_batch(args.batch, args.query_len, args.doc_len, vocab)
  t = {k: torch.as_tensor(v, dtype=torch.long, device=device) for k, v in b.items()}
  labels = torch.arange(args.batch, device=device)
  amp_dtype = torch.bfloat16 if args.dtype == 'bfloat16' else torch.float32

  def embed(ids, mask):
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    m = mask.unsqueeze(-1).float()
    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    return F.normalize(pooled, dim=-1)

  def loss_fn(q_ids, q_mask, d_ids, d_mask):
    with torch.autocast(device_type=device, dtype=amp_dtype, enabled=args.dtype == 'bfloat16'):
      q = embed(q_ids, q_mask)
      d = embed(d_ids, d_mask)
    return F.cross_entropy(20.0 * q @ d.T, labels)

  if cached:
    fn = cached[1]
  else:
    fn = torch.compile(loss_fn, backend=args.compile_backend, mode=args.compile_mode) \
        if compiled else loss_fn
    _TORCH_PROGRAMS[key] = (model, fn)
  loss = None

  def sync():
    if device == 'cuda':
      torch.cuda.synchronize()

  def run(n):
    nonlocal loss
    for _ in range(n):
      loss = fn(t['query_ids'], t['query_mask'], t['doc_ids'], t['doc_mask'])
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
    sync()

  start = time.perf_counter()
  run(args.warmup)
  warm = time.perf_counter() - start
  if device == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  blocks = timed_blocks(run, args)
  return {'warmup_s': round(warm, 3), 'block_s': blocks, 'loss': float(loss.detach()),
          'peak_device_bytes': torch.cuda.max_memory_allocated() if device == 'cuda' else None,
          'device': torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
          'attn_implementation': model.config._attn_implementation,
          'compile': {'backend': args.compile_backend, 'mode': args.compile_mode} if compiled else None,
          'versions': {'torch': torch.__version__, 'transformers': transformers.__version__}}


# ---------------------------------------------------------------------------------------------
# representax
def run_representax(shape: dict, args, vocab: int) -> dict:
  """representax's step on the same batch: its random-init ``BertEncoder`` of ``shape`` (float32
  parameters), its ``bfloat16_mixed`` precision policy for bf16, its cuDNN attention on a GPU
  ('xla' elsewhere), no rematerialisation, ``MNRTask(scale=20)`` (mean pooling, L2 normalisation,
  in-batch cross-entropy), AdamW without clipping, the state donated."""
  if args.representax_site:  # carried wheels fill what the image lacks; never shadow its own
    sys.path.append(args.representax_site)
  sys.path.insert(0, str(Path(__file__).resolve().parent / 'peers'))
  import jax
  import representax_train as rx

  bf16 = args.dtype == 'bfloat16'
  data = random_batch(args.batch, args.query_len, args.doc_len, vocab)
  rng = jax.random.key(1)
  # Its cuDNN attention on a GPU; should that fail to build or run there, its XLA attention, so
  # that the one window still gets the peer's number (the failure is recorded).
  attentions = (tuple(args.representax_attention.split(',')) if args.representax_attention
                else ('cudnn', 'xla') if jax.default_backend() == 'gpu' else ('xla',))
  step = state = batch = info = loss = None

  def run(n):  # the step of the attention being tried (or the one that worked)
    nonlocal state, loss
    for _ in range(n):
      result = step(state, batch, rng)
      state, loss = result.state, result.metrics.loss
    jax.block_until_ready((state, loss))

  failed = {}
  for attention in attentions:
    try:
      encoder = rx.random_encoder(shape, vocab, jax.random.key(0), attention=attention,
                                  attention_dropout=args.attention_dropout)
      step, state, batch, info = rx.build_step(encoder, data, lr=tc.LR,
                                               weight_decay=tc.WEIGHT_DECAY, bfloat16=bf16)
      t = time.perf_counter()
      run(args.warmup)
      warm = time.perf_counter() - t
      break
    except Exception as e:  # noqa: BLE001 - the last one's error reaches the parent
      if attention == attentions[-1]:
        raise
      failed[attention] = f'{type(e).__name__}: {str(e)[:500]}'
  blocks = timed_blocks(run, args)
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  return {'warmup_s': round(warm, 3), 'block_s': blocks, 'loss': float(loss),
          'attention_implementation': attention, 'attention_failed': failed or None,
          'step': info['step'],
          'loss_no_dropout_at_init': info['loss_no_dropout'],
          'peak_device_bytes': stats.get('peak_bytes_in_use'),
          'device': dev.device_kind, 'backend': jax.default_backend(),
          'versions': info['versions']}


def run_one(model_name: str, system: str, args) -> dict:
  shapes, vocab = (SMOKE_MODELS, SMOKE_VOCAB) if args.smoke else (MODELS, VOCAB)
  shape = shapes[model_name]
  t = time.perf_counter()
  if system in VARIANTS:
    variant = VARIANTS[system]
    flags = variant.get('xla_flags')
    raw = run_embedjax(shape, args, vocab, remat=variant.get('remat', 'none'))
    raw['variant'] = {**variant, 'xla_flags_applied': flags in raw['xla_flags'] if flags else None}
  elif system.startswith('embedjax'):
    raw = run_embedjax(shape, args, vocab, 'xla' if system == 'embedjax_xla' else 'auto')
  elif system == 'representax':
    raw = run_representax(shape, args, vocab)
  else:
    raw = run_torch(shape, args, vocab, compiled=system == 'torch_compile')
  return with_setup_time(raw, t)


def _child_cmd(args, model_name: str, system: str, out: Path) -> list[str]:
  cmd = [sys.executable, str(Path(__file__).resolve()), '--child', '--models', model_name,
         '--systems', system, '--child-out', str(out)]
  for flag in ('batch', 'query_len', 'doc_len', 'warmup', 'steps', 'blocks', 'dtype', 'threads',
               'compile_backend', 'compile_mode', 'profile_steps', 'attention_dropout',
               'representax_site', 'representax_attention'):
    value = getattr(args, flag)
    if value is not None:  # str(None) would reach torch.compile as mode='None'
      cmd += [f'--{flag.replace("_", "-")}', str(value)]
  if args.smoke:
    cmd.append('--smoke')
  return cmd


def summarize(raw: dict, shape: dict, args, vocab: int, peak: float | None) -> dict:
  block = tc.median(raw['block_s'])
  step_s = block / args.steps
  flops = flops_per_step(shape, args.batch, args.query_len, args.doc_len, vocab)
  out = {'pairs_per_s': round(args.batch / step_s, 2), 'step_ms': round(1e3 * step_s, 3),
         'achieved_tflops': float(f"{flops['total'] / step_s / 1e12:.4g}"),
         'mfu': round(flops['total'] / step_s / peak, 4) if peak else None,
         'mfu_all_params': round(flops['all_params_convention'] / step_s / peak, 4) if peak else None,
         **raw}
  out['block_s'] = [round(x, 5) for x in raw['block_s']]
  return out


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--models', default=','.join(MODELS))
  p.add_argument('--systems', default=','.join(SYSTEMS),
                 help=f'comma-separated, among {list(ALL_SYSTEMS)} (the variants: suite R)')
  p.add_argument('--batch', type=int, default=256, help='pairs per step')
  p.add_argument('--query-len', type=int, default=128)
  p.add_argument('--doc-len', type=int, default=128)
  p.add_argument('--warmup', type=int, default=5, help='untimed steps (compilation) per run')
  p.add_argument('--steps', type=int, default=10, help='steps per timed block')
  p.add_argument('--blocks', type=int, default=5, help='timed blocks per run (median reported)')
  p.add_argument('--dtype', choices=('bfloat16', 'float32'), default='bfloat16')
  p.add_argument('--attention-dropout', type=float, default=0.1,
                 help="dropout on the attention probabilities in both systems (BERT's 0.1; at 0 "
                      "embedjax can take cuDNN's fused attention, which has none)")
  p.add_argument('--threads', type=int, default=os.cpu_count() or 1, help='torch CPU threads')
  p.add_argument('--compile-backend', default=None,
                 help="torch.compile backend (default inductor; aot_eager with --smoke)")
  p.add_argument('--compile-mode', default=None, help='torch.compile mode (default: its default)')
  p.add_argument('--representax-site', default=None,
                 help='a folder of carried packages (representax and what the image lacks for '
                      'it), put at the end of sys.path in the representax run')
  p.add_argument('--representax-attention', default=None,
                 help="representax's attention implementations to try in turn, e.g. 'cudnn,xla' "
                      "(default: that on a GPU, 'xla' elsewhere)")
  p.add_argument('--peak-tflops', type=float, default=None, help='device peak for MFU (TFLOP/s)')
  p.add_argument('--profile-steps', type=int, default=3,
                 help="embedjax's steps traced after the timed blocks, summed by kernel into the "
                      "result's profile (0 = none)")
  p.add_argument('--in-process', action='store_true', help='all runs in this process')
  p.add_argument('--time-budget', type=float, default=0.0,
                 help='seconds for the whole run (0 = none): a run is not started with less than '
                      f'{MIN_RUN_S:.0f} s left before the budget minus {RESERVE_S:.0f} s, and a '
                      'child is killed at it; the file is rewritten after every run')
  p.add_argument('--smoke', action='store_true',
                 help='CPU smoke test: tiny shapes, B=4, L=8/16, 1 warm-up + 1 timed step, in-process')
  p.add_argument('--out', default=None, help='default results/bench_train_gpu.json '
                                             '(.smoke.json with --smoke)')
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--child-out', default=None, help=argparse.SUPPRESS)
  return p


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  if args.smoke:
    args.batch, args.query_len, args.doc_len = 4, 8, 16
    args.warmup, args.steps, args.blocks = 1, 1, 1
    args.in_process = True
  set_backends(args, tc.xla_flags())
  models = [m.strip() for m in args.models.split(',') if m.strip()]
  systems = [s.strip() for s in args.systems.split(',') if s.strip()]
  bad = sorted(set(models) - set(MODELS)) + sorted(set(systems) - set(ALL_SYSTEMS))
  if bad:
    raise SystemExit(f'unknown model/system {bad}; models {list(MODELS)}, '
                     f'systems {list(ALL_SYSTEMS)}')

  if args.child:
    flags = VARIANTS.get(systems[0], {}).get('xla_flags')
    if flags and 'jax' not in sys.modules:  # before JAX reads them (at its first use)
      os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    raw = run_one(models[0], systems[0], args)
    Path(args.child_out).write_text(json.dumps(raw))
    return raw

  from embedjax.io import atomic_write_json
  from embedjax.provenance import Run

  # inputs are random token ids (no data files)
  run = Run(config=dict(vars(args)), seeds={'random_pairs': 0, 'torch': 0},
            extra_packages=('torch', 'transformers')).start()
  shapes, vocab = (SMOKE_MODELS, SMOKE_VOCAB) if args.smoke else (MODELS, VOCAB)
  out = Path(args.out) if args.out else (
      tc.REPO / 'results' / ('bench_train_gpu.smoke.json' if args.smoke else 'bench_train_gpu.json'))
  results: dict = {m: {} for m in models}
  errors: dict = {}
  deadline = _T0 + args.time_budget - RESERVE_S if args.time_budget > 0 else float('inf')
  # The ratio's two sides first, for every model, so that a run cut short by the time budget
  # loses the least: embedjax and torch.compile, then torch eager.
  order = [(m, s) for first in (True, False) for m in models for s in systems
           if (s in RATIO_SYSTEMS) == first]
  for done, (m, s) in enumerate(order):
    left = deadline - time.perf_counter()
    if left < MIN_RUN_S:
      errors[f'{m}/{s}'] = f'skipped: time budget ({args.time_budget:.0f} s) spent'
      print(f'[{m}] {s}: {errors[f"{m}/{s}"]}', flush=True)
      continue
    print(f'[{m}] {s} ...', flush=True)
    t0 = time.perf_counter()
    try:
      if args.in_process:
        raw = run_one(m, s, args)
      else:
        child_out = out.with_name(f'.{out.stem}.{m}.{s}.json')
        rc, stderr = run_child(_child_cmd(args, m, s, child_out), min(left, 1e6))
        if rc != 0:
          raise RuntimeError(f'rc={rc}: {stderr[-3000:]}')
        raw = json.loads(child_out.read_text())
        child_out.unlink()
    except Exception as e:  # noqa: BLE001 - recorded; the other runs still happen
      errors[f'{m}/{s}'] = f'{type(e).__name__}: {e}'
      print(f'  failed: {errors[f"{m}/{s}"][:500]}', flush=True)
      continue
    peak = peak_flops(raw['device'], args.peak_tflops)
    results[m][s] = summarize(raw, shapes[m], args, vocab, peak)
    results[m][s]['run_wall_s'] = round(time.perf_counter() - t0, 2)  # compile + all steps
    r = results[m][s]
    print(f'  {r["pairs_per_s"]:.1f} pairs/s, {r["step_ms"]:.2f} ms/step, MFU {r["mfu"]}, '
          f'loss {r["loss"]:.4f}', flush=True)
    if done + 1 < len(order):  # a file after every run: a suite killed later keeps these
      atomic_write_json(out, _record(args, models, shapes, vocab, results, errors, run,
                                     finished=False))
  record = _record(args, models, shapes, vocab, results, errors, run.finish(), finished=True)
  atomic_write_json(out, record)
  print(f'ratio vs torch.compile: {record["ratio_vs_torch_compile"]}  (device: {record["device"]})')
  print(f'wrote {out}')
  return record


def _record(args, models, shapes, vocab, results, errors, run, finished: bool) -> dict:
  """The result file's contents from the runs so far."""

  def ratio(m, other):
    a, b = results[m].get('embedjax'), results[m].get(other)
    return round(a['pairs_per_s'] / b['pairs_per_s'], 4) if a and b else None

  devices = sorted({r['device'] for per in results.values() for r in per.values()})
  return {
      'benchmark': 'train_gpu', 'smoke': args.smoke, 'finished': finished,
      'ratio_vs_torch_compile': {m: ratio(m, 'torch_compile') for m in models},
      'ratio_vs_torch_eager': {m: ratio(m, 'torch_eager') for m in models},
      # what embedjax's attention path gives: 'auto' over the einsum path
      'ratio_vs_embedjax_xla': {m: ratio(m, 'embedjax_xla') for m in models},
      'ratio_vs_representax': {m: ratio(m, 'representax') for m in models},
      # each variant's pairs/s over plain embedjax's (above 1: the setting helps)
      'variant_vs_embedjax': {m: {v: round(results[m][v]['pairs_per_s']
                                           / results[m]['embedjax']['pairs_per_s'], 4)
                                  for v in VARIANTS if v in results[m] and 'embedjax' in results[m]}
                              for m in models},
      'device': ', '.join(devices),
      'results': results, 'errors': errors,
      'flops_per_step': {m: flops_per_step(shapes[m], args.batch, args.query_len, args.doc_len, vocab)
                         for m in models},
      'shapes': {m: shapes[m] for m in models},
      'settings': {
          'batch_pairs': args.batch, 'query_len': args.query_len, 'doc_len': args.doc_len,
          'dtype': args.dtype, 'params_dtype': 'float32', 'init': 'random (N(0, 0.02))',
          'vocab': vocab, 'inputs': 'random valid ids, full length, same device-resident batch',
          'loss': 'in-batch InfoNCE (MNRL), mean pooling, cosine, scale 20',
          'optimizer': f'AdamW lr {tc.LR} wd {tc.WEIGHT_DECAY} (torch: fused on CUDA)',
          'dropout': True, 'attention_dropout': args.attention_dropout,
          'warmup_steps': args.warmup, 'steps_per_block': args.steps,
          'blocks': args.blocks, 'isolation': 'one process' if args.in_process else
          'one subprocess per (model, system)',
          'torch_compile': {'backend': args.compile_backend, 'mode': args.compile_mode},
          'flops_formula': '6 * layers * (4 h^2 + 2 h i) * B * (Lq + Ld) + '
                           '12 * layers * h * B * (Lq^2 + Ld^2)',
          'peak_tflops': {d: (peak_flops(d, args.peak_tflops) or 0) / 1e12 or None
                          for d in devices},
          'XLA_FLAGS': tc.xla_flags(),
          'XLA_PYTHON_CLIENT_PREALLOCATE': os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE'),
          'load_average': tc.load_average(),
      },
      'provenance': run.provenance(),
      'embedjax_code': tc.library_state(),
  }


if __name__ == '__main__':
  main()
