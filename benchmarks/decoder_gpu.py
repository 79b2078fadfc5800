"""Training throughput of a ~0.6B decoder embedder on an NVIDIA GPU (the GPU suite's suite B):
embedjax vs transformers (eager and torch.compile), full fine-tuning and LoRA, L=512, bf16 compute.

    .venv/bin/python benchmarks/decoder_gpu.py                # on an H100 / H200 (gpu_suite run B)
    .venv/bin/python benchmarks/decoder_gpu.py --smoke        # CPU smoke: tiny decoder, in-process
    .venv/bin/python benchmarks/decoder_gpu.py --kinds lora --systems embedjax,torch_compile

Setup:
  model    Qwen3-0.6B's shape, ``embedjax.models.decoder.NAMED_SHAPES['qwen3-0.6b']`` (the shape
           of configs/decoder_qwen3_0p6b.py): 28 layers, hidden 1024, 16 query / 8 key-value heads
           of head_dim 128 (q/k RMSNorm), SwiGLU 3072, vocabulary 151,669, rope theta 1e6; random
           init (N(0, 0.02) matrices and embeddings, unit norms), float32 params, no LM head.
  batch    B=32 (query, document) pairs (``--batch``), queries and documents both L=512 tokens
           (``--query-len``, ``--doc-len``), random ids in [4, vocab), no padding; the same
           device-resident batch every step (host input is not part of what is measured).
  step     one optimizer update on in-batch InfoNCE: causal attention, last-token pooling, L2
           normalisation, cosine logits x 20, cross-entropy against the diagonal (as
           configs/decoder_qwen3_0p6b.py trains, without its gradient caching); AdamW lr 2e-5
           wd 0.01, constant, no clipping; no dropout (decoders train without); every layer
           rematerialised in both systems (``--remat full``, the default, as that config does:
           embedjax ``remat='full'``, transformers ``gradient_checkpointing_enable`` non-reentrant;
           ``--remat none`` keeps all activations, for smaller batches).
  kinds    full: every parameter trained (embeddings included).
           lora: rank 16, alpha 16 (``--lora-rank``, ``--lora-alpha``) on the attention
           projections q_proj, k_proj, v_proj, o_proj of every layer (``--lora-targets``), no
           LoRA dropout, A ~ U(+-1/sqrt(in)), B = 0; the base (embeddings included) frozen and
           given no optimizer state.
  embedjax ``EmbedderSpec(decoder=DecoderConfig(**shape, dtype='bfloat16', attention='causal'),
           pooling='last_token')`` (bf16 matmuls, float32 params, RMSNorm and softmax statistics
           in float32), ``make_train_step`` + ``make_optimizer`` under ``jax.jit`` with the state
           donated, as ``embedjax.train.loop`` builds them (LoRA: ``StepConfig(lora=...)``, the
           adapter under params['lora'], the optimizer freezing '^encoder/'; its merged path,
           ``embedjax.models.lora.apply_lora``). Variants by attention kernel:
             embedjax       attention_impl 'auto', the default: cuDNN fused attention on a GPU in
                            bf16 (padding as per-row lengths), XLA elsewhere (``attention_path``
                            is recorded, and whether the compiled program calls cuDNN's fmha);
             embedjax_xla   attention_impl 'xla': XLA's own attention (materialised scores).
  torch    transformers ``Qwen3Model`` (``AutoModel.from_config`` of a ``Qwen3Config`` of the
           same shape, ``attn_implementation='sdpa'``, ``use_cache=False``), float32 params,
           ``torch.autocast(bfloat16)``, the same loss on ``last_hidden_state``,
           ``torch.optim.AdamW`` (fused on CUDA) over the trainable params; LoRA through peft
           (``get_peft_model`` with ``LoraConfig(r, lora_alpha, target_modules,
           lora_dropout=0)``: unmerged adapters, the base frozen by requires_grad=False).
           torch_eager as is; torch_compile with ``torch.compile`` of the forward + loss (the
           backward compiled with it by AOTAutograd; the optimizer step stays eager, fused).
           The attention mask is passed, as a training loop with padded batches must: eager
           transformers then sees that nothing is padded and runs sdpa causal without a mask;
           under torch.compile (torch < 2.14) it cannot read the mask's values and gives sdpa a
           materialised mask, which rules out the flash kernel. ``--torch-mask omit`` passes
           none (these full-length batches allow it).
Each (kind, system) runs in its own subprocess (``HF_HUB_OFFLINE=1``; JAX may use
``XLA_PYTHON_CLIENT_MEM_FRACTION`` = 0.92 of the device, torch's allocator the whole device), so
each has the device and a clean allocator; ``--in-process`` runs them in one process, ``--smoke``
does that. Per run: ``--warmup`` untimed steps (embedjax: compiled ahead of time first, its
compile time recorded apart), then ``--blocks`` blocks of ``--steps`` steps, each block timed from
the first dispatch to the device having finished the last step; reported is the median block, as
tokens/s (query + document tokens), pairs/s and ms/step, plus the peak device memory (JAX: the
allocator's peak since the process started; torch: ``max_memory_allocated`` after the warm-up,
and ``peak_device_bytes_warmup`` including it).
The runs go in order of importance (embedjax and torch_compile of both kinds first, then
torch_eager, then embedjax_xla; a kind's embedjax_xla comes next when its embedjax failed), each
under what is left of ``--budget-s`` (default 440 s, inside the suite's 470 s). A run that would
start with less than ``--min-run-s`` left (or with less than its system's run of the other kind
took) is recorded under ``skipped``, a failed or timed-out one under ``errors``. The result file
is rewritten after every run, so a suite killed at its limit still leaves the runs that finished
(``finished``: false).

FLOPs per step, counted for MFU (the same count for every system of a kind):
  matmul params  N = layers * (h*nh*d [q] + 2*h*nkv*d [k, v] + nh*d*h [o] + 3*h*i [gate, up, down])
                 (GQA: k and v have nkv*d outputs; embeddings are lookups, not matmuls)
  tokens         T = B * (Lq + Ld)
  attention      A = 12 * layers * nh * d * B * (Lq^2 + Ld^2)  (QK^T and PV, 2 * 2 * L^2 * nh * d
                 per layer per text forward, x3 with the backward; causal masking not discounted,
                 as PaLM's and train_gpu.py's count: a causal kernel skips about half of it)
  full           6 * N * T + A  (forward 2NT, backward 4NT: input and weight gradients)
  lora           4 * N * T + 6 * P * T + A, P = layers * sum over targets of r * (in + out): the
                 frozen base's forward (2NT) and backward through activations only (2NT; no weight
                 gradients for frozen weights), the adapters' forward and both their gradients
                 (6PT). embedjax's merged path does more than this count: it forms dL/dW' of each
                 adapted kernel (``merged_path_extra`` = 2 * N_targets * T), counted for no one.
MFU = FLOPs/step * steps/s / peak, with the dense bf16 peak 989 TFLOP/s for H100 SXM and H200
(756 H100 PCIe, 835 H100 NVL; ``--peak-tflops`` for another device; null when unknown); the
recomputation of ``--remat full`` is not counted (model FLOPs, not hardware FLOPs).
``mfu_all_params`` (full only) also reports the 6 * (all parameters, embeddings included) * T
convention.
Writes ``results/bench_decoder_gpu.json`` (``results/bench_decoder_gpu.smoke.json`` with
``--smoke``; ``--out``): results[kind][system], ``ratio_vs_torch_compile`` (embedjax tokens/s /
torch_compile tokens/s per kind), ``ratio_vs_torch_eager``, ``ratios_vs_torch_compile`` (every
embedjax variant), ``flops_per_step``, settings, device, provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):  # runnable as a script, or through runpy
  if _p not in sys.path:
    sys.path.insert(0, _p)

import train_common as tc  # noqa: E402  (this folder, put on sys.path above)
from gpu_common import run_child, set_backends, top_kernels  # noqa: E402  (this folder)

KINDS = ('full', 'lora')
SYSTEMS = ('embedjax', 'embedjax_xla', 'torch_eager', 'torch_compile')
EMBEDJAX_ATTENTION = {'embedjax': 'auto', 'embedjax_xla': 'xla'}
# The order runs take when time is short: the comparison the suite exists for first.
PRIORITY = (('embedjax', 'torch_compile'), ('torch_eager',), ('embedjax_xla',))
SHAPE = 'qwen3-0.6b'  # embedjax.models.decoder.NAMED_SHAPES
# The smoke stand-in: Qwen3's structure (GQA, q/k norm, head_dim apart from hidden / heads).
SMOKE_SHAPE = dict(model_type='qwen3', vocab_size=1000, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                   qk_norm=True, max_position_embeddings=512, rope_theta=1e6)
LORA_TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj')
PROJECTIONS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')
# As train_gpu.py: XLA's cheapest CPU code generation for the smoke run.
# Dense bf16 peaks, TFLOP/s; the first key found in the device name wins.
PEAK_TFLOPS = (('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H100', 989.0), ('H200', 989.0))
JAX_MEM_FRACTION = '0.92'
# Files the embedjax step runs through (hashed into the record: the tree is edited concurrently).
CODE_FILES = ('embedjax/models/decoder.py', 'embedjax/models/lora.py', 'embedjax/models/remat.py',
              'embedjax/models/rope.py', 'embedjax/models/embedder.py',
              'embedjax/models/pooling.py', 'embedjax/train/step.py', 'embedjax/train/optim.py',
              'embedjax/losses/contrastive.py')


def model_shape(smoke: bool) -> dict:
  """The decoder's HF-style fields (``DecoderConfig`` keyword arguments)."""
  if smoke:
    return dict(SMOKE_SHAPE)
  from embedjax.models.decoder import NAMED_SHAPES  # imports jax; no backend is started
  return dict(NAMED_SHAPES[SHAPE])


def head_dim(shape: dict) -> int:
  return shape.get('head_dim') or shape['hidden_size'] // shape['num_attention_heads']


def projection_shapes(shape: dict) -> dict[str, tuple[int, int]]:
  """(in, out) of every matmul of one layer."""
  h, i, d = shape['hidden_size'], shape['intermediate_size'], head_dim(shape)
  nh, nkv = shape['num_attention_heads'], shape['num_key_value_heads']
  return {'q_proj': (h, nh * d), 'k_proj': (h, nkv * d), 'v_proj': (h, nkv * d),
          'o_proj': (nh * d, h), 'gate_proj': (h, i), 'up_proj': (h, i), 'down_proj': (i, h)}


def flops_per_step(shape: dict, kind: str, batch: int, query_len: int, doc_len: int,
                   lora_rank: int = 16, lora_targets: Sequence[str] = LORA_TARGETS) -> dict:
  """The FLOP count of one step (module docstring), with its parts."""
  layers = shape['num_hidden_layers']
  proj = projection_shapes(shape)
  n_matmul = layers * sum(a * b for a, b in proj.values())
  tokens = batch * (query_len + doc_len)
  attention = (12 * layers * shape['num_attention_heads'] * head_dim(shape) * batch
               * (query_len ** 2 + doc_len ** 2))
  n_embed = shape['vocab_size'] * shape['hidden_size']
  out = {'matmul_params': n_matmul, 'embedding_params': n_embed, 'tokens': tokens,
         'attention': attention}
  if kind == 'full':
    out.update(dense=6 * n_matmul * tokens, adapter=0, lora_params=0,
               all_params_convention=6 * (n_matmul + n_embed) * tokens)
  elif kind == 'lora':
    n_lora = layers * sum(lora_rank * sum(proj[t]) for t in lora_targets)
    n_targets = layers * sum(proj[t][0] * proj[t][1] for t in lora_targets)
    out.update(dense=4 * n_matmul * tokens, adapter=6 * n_lora * tokens, lora_params=n_lora,
               all_params_convention=None, merged_path_extra=2 * n_targets * tokens)
  else:
    raise ValueError(f'kind {kind!r} is not one of {KINDS}')
  out['total'] = out['dense'] + out['adapter'] + attention
  return out


def peak_flops(device: str, override: float | None) -> float | None:
  if override:
    return override * 1e12
  for key, tflops in PEAK_TFLOPS:
    if key in device:
      return tflops * 1e12
  return None


def random_batch(batch: int, query_len: int, doc_len: int, vocab: int) -> dict:
  """Full-length rows of random ids in [4, vocab) (no padding), seed 0; ``doc_key`` = row."""
  import numpy as np
  rng = np.random.default_rng(0)
  out = {}
  for name, length in (('query', query_len), ('doc', doc_len)):
    out[f'{name}_ids'] = rng.integers(4, vocab, size=(batch, length)).astype(np.int32)
    out[f'{name}_mask'] = np.ones((batch, length), np.int32)
  out['doc_key'] = np.arange(batch, dtype=np.int32)
  return out


def _timed(run, args) -> tuple[float, list[float]]:
  """(warm-up seconds, [seconds per timed block]) of ``run(n)`` (which waits for the device)."""
  t = time.perf_counter()
  run(args.warmup)
  warm = time.perf_counter() - t
  blocks = []
  for _ in range(args.blocks):
    t = time.perf_counter()
    run(args.steps)
    blocks.append(time.perf_counter() - t)
  return warm, blocks


# ---------------------------------------------------------------------------------------------
# embedjax
def embedjax_spec(shape: dict, args, attention_impl: str):
  from embedjax.models.decoder import DecoderConfig
  from embedjax.models.spec import EmbedderSpec
  decoder = DecoderConfig(**shape, dtype=args.dtype, attention='causal',
                          attention_impl=attention_impl, remat=args.remat)
  return EmbedderSpec(decoder=decoder, pooling='last_token', normalize=True,
                      max_seq_length=max(args.query_len, args.doc_len))


def embedjax_lora_config(args):
  from embedjax.models.lora import LoraConfig
  return LoraConfig.for_modules(tuple(args.lora_targets.split(',')), rank=args.lora_rank,
                                alpha=args.lora_alpha)


def run_embedjax(kind: str, system: str, shape: dict, args) -> dict:
  import jax
  import numpy as np

  from embedjax.models.decoder import attention_path, init_decoder_params
  from embedjax.models.lora import init_lora
  from embedjax.train.optim import make_optimizer
  from embedjax.train.state import create_state
  from embedjax.train.step import StepConfig, make_train_step

  spec = embedjax_spec(shape, args, EMBEDJAX_ATTENTION[system])
  lora = embedjax_lora_config(args) if kind == 'lora' else None
  t0 = time.perf_counter()
  # Under jit: one compiled init, the weights created on the device.
  encoder = jax.jit(init_decoder_params, static_argnums=0)(spec.decoder, jax.random.key(0))
  params = {'encoder': encoder}
  optim = tc.optim_config()
  if lora is not None:  # as embedjax.train.loop: train_params + optimizer
    params['lora'] = init_lora(jax.random.key(0), encoder, lora)
    optim.freeze = '^encoder/'
  tx = make_optimizer(optim, params, total_steps=1_000_000)
  state = create_state(params, tx)
  trainable = params['lora'] if lora is not None else params['encoder']
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
  n_params, n_trainable = count(params['encoder']), count(trainable)
  del params, encoder, trainable
  cfg = StepConfig(spec=spec, loss='info_nce', scale=20.0, dropout=False, lora=lora)
  batch = jax.device_put(random_batch(args.batch, args.query_len, args.doc_len,
                                      shape['vocab_size']))
  rng = jax.random.key(1)
  jax.block_until_ready((state, batch))
  init_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  lowered = jax.jit(make_train_step(cfg, tx), donate_argnums=0).lower(state, batch, rng)
  step = lowered.compile()
  compile_s = time.perf_counter() - t0
  analysis = step.memory_analysis()
  memory = {k: getattr(analysis, k, None) for k in (
      'temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes',
      'alias_size_in_bytes', 'generated_code_size_in_bytes')} if analysis is not None else None
  try:  # diagnostics: cuDNN's fused attention in the program, and left in it by XLA
    fmha = '__cudnn$fmha' in lowered.as_text()
    fmha_compiled = '__cudnn$fmha' in step.as_text()
  except Exception:  # noqa: BLE001
    fmha = fmha_compiled = None
  del lowered
  metrics = None

  def run(n):
    nonlocal state, metrics
    for _ in range(n):
      state, metrics = step(state, batch, rng)
    jax.block_until_ready((state, metrics))

  warm, blocks = _timed(run, args)
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  profile = top_kernels(run, args.profile_steps, 'steps')
  return {'init_s': round(init_s, 3), 'compile_s': round(compile_s, 3), 'warmup_s': round(warm, 3),
          'block_s': blocks, 'loss': float(metrics['loss']), 'profile': profile,
          'peak_device_bytes': stats.get('peak_bytes_in_use'),
          'device_bytes_limit': stats.get('bytes_limit'),
          'compiled_memory': memory, 'param_count': n_params, 'trainable_params': n_trainable,
          'attention_impl': spec.decoder.attention_impl,
          'attention_path': attention_path(spec.decoder, packed=False, left_padded=False),
          'hlo_calls_cudnn_fmha': fmha, 'compiled_calls_cudnn_fmha': fmha_compiled,
          'lora': {'rank': lora.rank, 'alpha': lora.alpha, 'target': lora.target,
                   'path': 'merged'} if lora else None,
          'device': dev.device_kind, 'backend': jax.default_backend(),
          'versions': {'jax': jax.__version__}}


# ---------------------------------------------------------------------------------------------
# transformers / torch
def torch_model(shape: dict, kind: str, args, device: str):
  """(model, trainable params): a random-init Qwen3Model of the shape, with peft LoRA for 'lora'."""
  import torch
  from transformers import AutoModel, Qwen3Config
  cfg = Qwen3Config(
      vocab_size=shape['vocab_size'], hidden_size=shape['hidden_size'],
      intermediate_size=shape['intermediate_size'],
      num_hidden_layers=shape['num_hidden_layers'],
      num_attention_heads=shape['num_attention_heads'],
      num_key_value_heads=shape['num_key_value_heads'], head_dim=head_dim(shape),
      max_position_embeddings=shape['max_position_embeddings'],
      rope_theta=float(shape['rope_theta']), rms_norm_eps=shape.get('rms_norm_eps', 1e-6),
      attention_bias=False, tie_word_embeddings=False, use_cache=False)
  with torch.device(device):  # initialised where it runs
    model = AutoModel.from_config(cfg, attn_implementation='sdpa')
  if args.remat == 'full':
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
  elif args.remat != 'none':
    raise ValueError(f'remat {args.remat!r}: the torch side has none and full only')
  if kind == 'lora':
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(
        r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.0, bias='none',
        target_modules=args.lora_targets.split(',')))
  model.train()
  return model, [p for p in model.parameters() if p.requires_grad]


def run_torch(kind: str, shape: dict, args, compiled: bool) -> dict:
  import torch
  import torch.nn.functional as F
  import transformers

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.manual_seed(0)
  if device == 'cpu':
    torch.set_num_threads(args.threads)
  t0 = time.perf_counter()
  model, trainable = torch_model(shape, kind, args, device)
  n_params = sum(p.numel() for n, p in model.named_parameters() if 'lora_' not in n)
  opt = torch.optim.AdamW(trainable, lr=tc.LR, weight_decay=tc.WEIGHT_DECAY,
                          fused=device == 'cuda')
  b = random_batch(args.batch, args.query_len, args.doc_len, shape['vocab_size'])
  t = {k: torch.as_tensor(v, dtype=torch.long, device=device) for k, v in b.items()}
  labels = torch.arange(args.batch, device=device)
  amp = args.dtype == 'bfloat16'
  if device == 'cuda':
    torch.cuda.synchronize()
  init_s = time.perf_counter() - t0

  def embed(ids, mask):
    attention_mask = mask if args.torch_mask == 'pass' else None
    hidden = model(input_ids=ids, attention_mask=attention_mask).last_hidden_state.float()
    last = mask.sum(1) - 1  # right padding: each text's last real token
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return F.normalize(pooled, dim=-1)

  def loss_fn(q_ids, q_mask, d_ids, d_mask):
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
      q = embed(q_ids, q_mask)
      d = embed(d_ids, d_mask)
    return F.cross_entropy(20.0 * q @ d.T, labels)

  fn = torch.compile(loss_fn, backend=args.compile_backend, mode=args.compile_mode) \
      if compiled else loss_fn
  loss = None

  def run(n):
    nonlocal loss
    for _ in range(n):
      loss = fn(t['query_ids'], t['query_mask'], t['doc_ids'], t['doc_mask'])
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
    if device == 'cuda':
      torch.cuda.synchronize()

  start = time.perf_counter()
  run(args.warmup)
  warm = time.perf_counter() - start
  peak_warmup = torch.cuda.max_memory_allocated() if device == 'cuda' else None
  if device == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  blocks = []
  for _ in range(args.blocks):
    start = time.perf_counter()
    run(args.steps)
    blocks.append(time.perf_counter() - start)
  base = model.get_base_model() if kind == 'lora' else model
  versions = {'torch': torch.__version__, 'transformers': transformers.__version__}
  if kind == 'lora':
    import peft
    versions['peft'] = peft.__version__
  return {'init_s': round(init_s, 3), 'warmup_s': round(warm, 3), 'block_s': blocks,
          'loss': float(loss.detach()),
          'peak_device_bytes': torch.cuda.max_memory_allocated() if device == 'cuda' else None,
          'peak_device_bytes_warmup': peak_warmup,
          'param_count': int(n_params), 'trainable_params': int(sum(p.numel() for p in trainable)),
          'model_class': type(base).__name__,
          'attn_implementation': base.config._attn_implementation,
          'attention_mask': args.torch_mask,
          'lora': {'rank': args.lora_rank, 'alpha': args.lora_alpha,
                   'target_modules': args.lora_targets.split(','), 'path': 'peft (unmerged)'}
          if kind == 'lora' else None,
          'compile': {'backend': args.compile_backend, 'mode': args.compile_mode}
          if compiled else None,
          'device': torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
          'versions': versions}


def run_one(kind: str, system: str, args) -> dict:
  shape = model_shape(args.smoke)
  if system in EMBEDJAX_ATTENTION:
    return run_embedjax(kind, system, shape, args)
  return run_torch(kind, shape, args, compiled=system == 'torch_compile')


# ---------------------------------------------------------------------------------------------
# driver
_CHILD_FLAGS = ('batch', 'query_len', 'doc_len', 'warmup', 'steps', 'blocks', 'dtype', 'threads',
                'remat', 'lora_rank', 'lora_alpha', 'lora_targets', 'torch_mask',
                'compile_backend', 'compile_mode', 'profile_steps')


def _child_cmd(args, kind: str, system: str, out: Path) -> list[str]:
  cmd = [sys.executable, str(Path(__file__).resolve()), '--child', '--kinds', kind,
         '--systems', system, '--child-out', str(out)]
  for flag in _CHILD_FLAGS:
    value = getattr(args, flag)
    if value is not None:
      cmd += [f'--{flag.replace("_", "-")}', str(value)]
  if args.smoke:
    cmd.append('--smoke')
  return cmd


def _child_env() -> dict:
  env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', PYTHONUNBUFFERED='1')
  env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', JAX_MEM_FRACTION)
  return env


def run_order(kinds: Sequence[str], systems: Sequence[str]) -> list[tuple[str, str]]:
  """(kind, system) pairs, most important first (PRIORITY)."""
  return [(k, s) for tier in PRIORITY for k in kinds for s in tier if s in systems]


def summarize(raw: dict, flops: dict, args, peak: float | None) -> dict:
  block = tc.median(raw['block_s'])
  step_s = block / args.steps
  tokens = args.batch * (args.query_len + args.doc_len)
  all_params = flops.get('all_params_convention')
  out = {'tokens_per_s': round(tokens / step_s, 1), 'pairs_per_s': round(args.batch / step_s, 2),
         'step_ms': round(1e3 * step_s, 3),
         'achieved_tflops': float(f"{flops['total'] / step_s / 1e12:.4g}"),
         'mfu': round(flops['total'] / step_s / peak, 4) if peak else None,
         'mfu_all_params': round(all_params / step_s / peak, 4) if peak and all_params else None,
         **raw}
  out['block_s'] = [round(x, 5) for x in raw['block_s']]
  return out


def library_state() -> dict:
  import hashlib
  out = tc.library_state()
  out['sha1'] = {f: hashlib.sha1((tc.REPO / f).read_bytes()).hexdigest()[:12]
                 for f in CODE_FILES if (tc.REPO / f).exists()}
  return out


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--kinds', default=','.join(KINDS), help='full, lora')
  p.add_argument('--systems', default=','.join(SYSTEMS))
  # 32 pairs = 64 texts x 512 = 32,768 tokens a step
  p.add_argument('--batch', type=int, default=32, help='pairs per step')
  p.add_argument('--query-len', type=int, default=512)
  p.add_argument('--doc-len', type=int, default=512)
  p.add_argument('--warmup', type=int, default=2, help='untimed steps per run')
  p.add_argument('--steps', type=int, default=5, help='steps per timed block')
  p.add_argument('--blocks', type=int, default=3, help='timed blocks per run (median reported)')
  p.add_argument('--profile-steps', type=int, default=2,
                 help="embedjax's steps traced after the timed blocks, summed by kernel into the "
                      "result's profile (0 = none)")
  p.add_argument('--dtype', choices=('bfloat16', 'float32'), default='bfloat16')
  # Without remat, 32 pairs at L=512 do not fit in 80 GB for embedjax (about 90 KB of residuals
  # per token and layer, plus 90 MB per text pair and layer of materialised scores with XLA
  # attention) and leave torch (about 60 KB per token and layer) little room; with per-layer remat
  # each system keeps the layer inputs (2-4 KB per token and layer) and one layer's activations.
  p.add_argument('--remat', choices=('none', 'full'), default='full',
                 help='per-layer activation checkpointing in both systems')
  p.add_argument('--lora-rank', type=int, default=16)
  p.add_argument('--lora-alpha', type=float, default=16.0)
  p.add_argument('--lora-targets', default=','.join(LORA_TARGETS),
                 help='module names, comma-separated (peft target_modules)')
  p.add_argument('--torch-mask', choices=('pass', 'omit'), default='pass',
                 help="transformers' attention_mask: pass it (any batch), or omit it (full-length "
                      'batches only: sdpa then runs causal without a mask under torch.compile too)')
  p.add_argument('--threads', type=int, default=os.cpu_count() or 1, help='torch CPU threads')
  p.add_argument('--compile-backend', default=None,
                 help='torch.compile backend (default inductor; aot_eager with --smoke)')
  p.add_argument('--compile-mode', default=None, help='torch.compile mode (default: its default)')
  p.add_argument('--peak-tflops', type=float, default=None, help='device peak for MFU (TFLOP/s)')
  p.add_argument('--budget-s', type=float, default=440.0,
                 help='seconds for all runs (subprocess mode): later runs are skipped')
  p.add_argument('--min-run-s', type=float, default=45.0,
                 help='do not start a run with less than this left of the budget (nor with less '
                      'than the same system took for the other kind)')
  p.add_argument('--in-process', action='store_true', help='all runs in this process')
  p.add_argument('--subprocess', action='store_true',
                 help='with --smoke: still one subprocess per run (to test that path)')
  p.add_argument('--smoke', action='store_true',
                 help='CPU smoke test: tiny decoder, B=2, L=16, 1 warm-up + 1 timed step, '
                      'in-process')
  p.add_argument('--out', default=None, help='default results/bench_decoder_gpu.json '
                                             '(.smoke.json with --smoke)')
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--child-out', default=None, help=argparse.SUPPRESS)
  return p


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  if args.smoke:
    args.batch, args.query_len, args.doc_len = 2, 16, 16
    args.warmup, args.steps, args.blocks = 1, 1, 1
    args.in_process = not args.subprocess or args.child
  set_backends(args, tc.xla_flags())
  if args.in_process:
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
  kinds = [k.strip() for k in args.kinds.split(',') if k.strip()]
  systems = [s.strip() for s in args.systems.split(',') if s.strip()]
  bad = sorted(set(kinds) - set(KINDS)) + sorted(set(systems) - set(SYSTEMS))
  if bad:
    raise SystemExit(f'unknown kind/system {bad}; kinds {list(KINDS)}, systems {list(SYSTEMS)}')
  targets = args.lora_targets.split(',')
  if set(targets) - set(PROJECTIONS):
    raise SystemExit(f'--lora-targets {targets}: not among {list(PROJECTIONS)}')

  if args.child:
    raw = run_one(kinds[0], systems[0], args)
    Path(args.child_out).write_text(json.dumps(raw))
    return raw

  from embedjax.io import atomic_write_json
  from embedjax.provenance import Run, versions

  started = time.perf_counter()
  # inputs are random token ids (no data files)
  run = Run(config=dict(vars(args)), seeds={'random_batch': 0, 'init': 0, 'torch': 0},
            extra_packages=('torch', 'transformers', 'peft')).start()
  shape = model_shape(args.smoke)
  out = Path(args.out) if args.out else (
      tc.REPO / 'results' / ('bench_decoder_gpu.smoke.json' if args.smoke else
                             'bench_decoder_gpu.json'))
  flops = {k: flops_per_step(shape, k, args.batch, args.query_len, args.doc_len, args.lora_rank,
                             targets) for k in kinds}
  run_env = dict(os.environ) if args.in_process else _child_env()
  results: dict = {k: {} for k in kinds}
  errors: dict = {}
  skipped: dict = {}

  def ratio(kind, system, other):
    a, b = results[kind].get(system), results[kind].get(other)
    return round(a['tokens_per_s'] / b['tokens_per_s'], 4) if a and b else None

  def record(finished: bool) -> dict:
    devices = sorted({r['device'] for per in results.values() for r in per.values()})
    counts = {r['param_count'] for per in results.values() for r in per.values()}
    if finished:
      # Only now may this process start a JAX backend (machine info): the runs are over. The
      # modules the runs went through are imported here too, so that the record's code_files
      # name them (the runs were other processes).
      os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
      import embedjax.train.base_config  # noqa: F401
      import embedjax.train.step  # noqa: F401
      import embedjax.train.optim  # noqa: F401
      import embedjax.train.state  # noqa: F401
      provenance = run.finish().provenance()
    else:  # no device info: starting a backend here would take the device from the next run
      provenance = {'command': run.command, 'started_at': run.started_at, 'git': run.git,
                    'git_commit': run.git['commit'][:7] if run.git and run.git['commit'] else None,
                    'versions': versions(run.extra_packages), 'partial': True}
    return {
        'benchmark': 'decoder_gpu', 'smoke': args.smoke, 'finished': finished,
        'ratio_vs_torch_compile': {k: ratio(k, 'embedjax', 'torch_compile') for k in kinds},
        'ratio_vs_torch_eager': {k: ratio(k, 'embedjax', 'torch_eager') for k in kinds},
        'ratios_vs_torch_compile': {k: {s: ratio(k, s, 'torch_compile') for s in systems
                                        if s in EMBEDJAX_ATTENTION} for k in kinds},
        'device': ', '.join(devices),
        'results': results, 'errors': errors, 'skipped': skipped,
        'flops_per_step': flops,
        'shape': {'name': 'smoke' if args.smoke else SHAPE, **shape, 'head_dim': head_dim(shape)},
        'param_counts_agree': len(counts) == 1 if counts else None,
        'settings': {
            'batch_pairs': args.batch, 'query_len': args.query_len, 'doc_len': args.doc_len,
            'tokens_per_step': args.batch * (args.query_len + args.doc_len),
            'dtype': args.dtype, 'params_dtype': 'float32', 'init': 'random (N(0, 0.02))',
            'inputs': 'random ids in [4, vocab), full length, same device-resident batch',
            'attention': 'causal', 'pooling': 'last_token',
            'loss': 'in-batch InfoNCE, last-token pooling, cosine, scale 20',
            'optimizer': f'AdamW lr {tc.LR} wd {tc.WEIGHT_DECAY} constant, no clipping '
                         '(torch: fused on CUDA, trainable params only)',
            'dropout': False, 'remat': args.remat, 'torch_attention_mask': args.torch_mask,
            'lora': {'rank': args.lora_rank, 'alpha': args.lora_alpha, 'targets': targets,
                     'dropout': 0.0, 'embedjax_path': 'merged (apply_lora)',
                     'torch_path': 'peft, unmerged'},
            'warmup_steps': args.warmup, 'steps_per_block': args.steps, 'blocks': args.blocks,
            'isolation': 'one process' if args.in_process else
                         'one subprocess per (kind, system)',
            'budget_s': None if args.in_process else args.budget_s,
            'torch_compile': {'backend': args.compile_backend, 'mode': args.compile_mode},
            'flops_formula': {
                'full': '6 N T + A', 'lora': '4 N T + 6 P T + A',
                'N': 'layers * (h nh d + 2 h nkv d + nh d h + 3 h i)', 'T': 'B (Lq + Ld)',
                'A': '12 layers nh d B (Lq^2 + Ld^2)',
                'P': 'layers * sum over LoRA targets of r (in + out)'},
            'peak_tflops': {d: (peak_flops(d, args.peak_tflops) or 0) / 1e12 or None
                            for d in devices},
            # the environment the runs had (this process's own, or the subprocesses')
            **{k: run_env.get(k) for k in ('XLA_FLAGS', 'XLA_PYTHON_CLIENT_MEM_FRACTION',
                                           'XLA_PYTHON_CLIENT_PREALLOCATE')},
            'load_average': tc.load_average(),
            'wall_s': round(time.perf_counter() - started, 1),
        },
        'provenance': provenance,
        'embedjax_code': library_state(),
    }

  queue = run_order(kinds, systems)
  took: dict = {}  # system -> seconds its last finished run took
  while queue:
    kind, system = queue.pop(0)
    name = f'{kind}/{system}'
    left = args.budget_s - (time.perf_counter() - started)
    need = max(args.min_run_s, 0.9 * took.get(system, 0.0))
    if not args.in_process and left < need:
      skipped[name] = (f'not started: {left:.0f} s of the {args.budget_s:.0f} s budget left, '
                       f'{need:.0f} s needed')
      print(f'[{name}] skipped ({skipped[name]})', flush=True)
      continue
    print(f'[{name}] ...', flush=True)
    t0 = time.perf_counter()
    try:
      if args.in_process:
        raw = run_one(kind, system, args)
      else:
        child_out = out.with_name(f'.{out.stem}.{kind}.{system}.json')
        child_out.unlink(missing_ok=True)
        # the child's whole process group (inductor's compile workers too) goes at the budget
        rc, stderr = run_child(_child_cmd(args, kind, system, child_out), left - 10.0,
                               env=run_env)
        if rc != 0:
          raise RuntimeError(f'rc={rc}: {stderr[-3000:]}')
        raw = json.loads(child_out.read_text())
        child_out.unlink()
    except Exception as e:  # noqa: BLE001 - recorded; the other runs still happen
      errors[name] = f'{type(e).__name__}: {e}'
      print(f'  failed: {errors[name][:1500]}', flush=True)
      if system == 'embedjax' and (kind, 'embedjax_xla') in queue:
        # the default attention kernel failed: measure the other one while there is time
        queue.remove((kind, 'embedjax_xla'))
        queue.insert(0, (kind, 'embedjax_xla'))
    else:
      peak = peak_flops(raw['device'], args.peak_tflops)
      results[kind][system] = summarize(raw, flops[kind], args, peak)
      results[kind][system]['run_wall_s'] = round(time.perf_counter() - t0, 2)
      took[system] = time.perf_counter() - t0
      r = results[kind][system]
      print(f'  {r["tokens_per_s"]:.0f} tokens/s, {r["step_ms"]:.2f} ms/step, MFU {r["mfu"]}, '
            f'peak {(r["peak_device_bytes"] or 0) / 2**30:.1f} GiB, loss {r["loss"]:.4f}, '
            f'{r["run_wall_s"]:.0f} s', flush=True)
    if not args.in_process:  # what has finished survives a kill at the suite's limit
      atomic_write_json(out, record(finished=False))

  final = record(finished=True)
  atomic_write_json(out, final)
  print(f'ratio vs torch.compile: {final["ratio_vs_torch_compile"]}  (device: {final["device"]})')
  print(f'wrote {out}')
  return final


if __name__ == '__main__':
  main()
