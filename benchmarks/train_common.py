"""Pieces shared by the training benchmarks (train_cpu, train_gpu, gradcache_cpu).

Imported by the scripts in this folder (``python benchmarks/x.py`` puts the folder on sys.path).
Nothing here imports jax or torch at module level: the scripts set thread / XLA options first.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLS_ID, SEP_ID, PAD_ID = 101, 102, 0  # BERT uncased vocabulary (all-MiniLM-L6-v2)

# The optimizer every system gets: AdamW, lr 2e-5, constant (no warm-up: a schedule would make the
# timed steps depend on the step number in no system, but keeps the comparison obviously equal),
# weight decay 0.01 (torch.optim.AdamW's default), no gradient clipping (the plain torch step the
# brief names has none).
LR = 2e-5
WEIGHT_DECAY = 0.01


def random_pairs(rng, batch: int, query_len: int, doc_len: int, vocab: int = 30522,
                 full: bool = True) -> dict:
  """A batch of valid-looking token ids: [CLS] random word-piece ids [SEP] then padding.

  full=True fills every row to its length (no padding): the work is then the same whatever a
  system does with padding. Ids are drawn from [1000, vocab) to skip BERT's special/unused ids.
  """
  import numpy as np

  def column(length):
    ids = rng.integers(1000, vocab, size=(batch, length)).astype(np.int32)
    if full:
      lengths = np.full(batch, length)
    else:
      lengths = rng.integers(max(2, length // 4), length + 1, size=batch)
    pos = np.arange(length)[None, :]
    mask = (pos < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, PAD_ID).astype(np.int32)
    ids[:, 0] = CLS_ID
    ids[np.arange(batch), lengths - 1] = SEP_ID
    return ids, mask

  q_ids, q_mask = column(query_len)
  d_ids, d_mask = column(doc_len)
  return {'query_ids': q_ids, 'query_mask': q_mask, 'doc_ids': d_ids, 'doc_mask': d_mask,
          'doc_key': np.arange(batch, dtype=np.int32)}


def optim_config():
  from embedjax.train.base_config import base_config
  cfg = base_config().optim
  cfg.update(lr=LR, warmup_steps=0, decay='constant', end_lr_ratio=1.0, weight_decay=WEIGHT_DECAY,
             clip_norm=0.0)
  return cfg


def embedjax_program(spec, params, *, chunk_size: int = 0, grad_cache: bool = False,
                     donate: bool = True):
  """(jitted train_step, optax transformation) for the embedjax step as the trainer builds it
  (``embedjax.train.loop``: make_optimizer + make_train_step under one jit, state donated)."""
  import jax

  from embedjax.train.optim import make_optimizer
  from embedjax.train.step import StepConfig, make_train_step

  tx = make_optimizer(optim_config(), {'encoder': params}, total_steps=1_000_000)
  cfg = StepConfig(spec=spec, loss='info_nce', scale=20.0, chunk_size=chunk_size,
                   grad_cache=grad_cache, dropout=True)
  return jax.jit(make_train_step(cfg, tx), donate_argnums=0 if donate else ()), tx


def embedjax_step(spec, params, **kw):
  """(jitted train_step, initial TrainState); see ``embedjax_program``."""
  from embedjax.train.state import create_state
  step, tx = embedjax_program(spec, params, **kw)
  return step, create_state({'encoder': params}, tx)


def library_state() -> dict:
  """What embedjax code a run used: HEAD, the library files modified in the working tree, and
  hashes of the files the train step runs through (other people edit the tree concurrently)."""
  import hashlib
  import subprocess
  out: dict = {}
  try:
    run = lambda *a: subprocess.run(['git', *a], capture_output=True, text=True, cwd=REPO,
                                    check=True).stdout
    out['head'] = run('rev-parse', '--short', 'HEAD').strip()
    out['modified_library_files'] = sorted(
        line[3:] for line in run('status', '--porcelain', '--', 'embedjax').splitlines())
  except (OSError, subprocess.CalledProcessError):
    pass
  files = ('embedjax/models/bert.py', 'embedjax/models/embedder.py', 'embedjax/train/step.py',
           'embedjax/losses/contrastive.py')
  out['sha1'] = {f: hashlib.sha1((REPO / f).read_bytes()).hexdigest()[:12]
                 for f in files if (REPO / f).exists()}
  return out


def median(xs):
  return statistics.median(xs) if xs else None


def load_average() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def xla_flags() -> str:
  return os.environ.get('XLA_FLAGS', '')


def python_of(venv: str | os.PathLike) -> str:
  return str(Path(venv) / 'bin' / 'python')


def log(msg: str) -> None:
  print(msg, flush=True, file=sys.stdout)
