"""The training loop: config in, checkpoints, logs, evaluations and an exported model out.

Thin on purpose: every computation lives in pure functions (``train.step``, ``losses``,
``models``); this file wires data, mesh, checkpointing and logging around them.

Workdir layout:
  checkpoints/        Orbax (latest N + best by metric), with the data iterator state
  metrics.jsonl       one JSON object per logged step or evaluation (rewritten on resume so that
                      steps after the restored checkpoint are not duplicated)
  tensorboard/        TensorBoard event files
  export/             the final model as a sentence-transformers folder
  summary.json        evaluations before/after, timings, command and versions
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from embedjax import paths
from embedjax.encoding import encode
from embedjax.evals.tasks import run_task
from embedjax.io import atomic_write_json, atomic_write_text
from embedjax.models.bert import BertConfig
from embedjax.models.pretrained import (EmbedderSpec, Pretrained, export_sentence_transformers,
                                        init_params, load_pretrained)
from embedjax.models.tokenizer import TextTokenizer
from embedjax.provenance import provenance
from embedjax.train import data as train_data
from embedjax.train.checkpoint import Checkpointer, abstract_like
from embedjax.train.mesh import global_batch, make_mesh, replicated
from embedjax.train.optim import make_optimizer
from embedjax.train.state import TrainState, create_state
from embedjax.train.step import StepConfig, make_train_step


def build_model(cfg: ml_collections.ConfigDict, key: jax.Array) -> Pretrained:
  """'pretrained:NAME_OR_PATH' loads weights; 'random:NAME_OR_PATH' takes that model's
  architecture and tokenizer with fresh N(0, 0.02) weights (bert overrides in cfg.bert)."""
  kind, _, name = cfg.init.partition(':')
  if kind not in ('pretrained', 'random'):
    raise ValueError(f"model.init must be 'pretrained:NAME' or 'random:NAME', got {cfg.init!r}")
  base = load_pretrained(name, dtype=cfg.get('dtype', 'float32'),
                         max_seq_length=cfg.get('max_seq_length', None))
  if kind == 'pretrained':
    return base
  bert = BertConfig(**{**base.spec.bert.__dict__, **dict(cfg.get('bert', {}))})
  spec = EmbedderSpec(bert=bert, pooling=cfg.get('pooling', base.spec.pooling),
                      normalize=base.spec.normalize, max_seq_length=base.spec.max_seq_length)
  return Pretrained(spec=spec, params=init_params(bert, key), tokenizer=base.tokenizer,
                    source=f'random init ({name} architecture)')


def step_config(cfg: ml_collections.ConfigDict, spec: EmbedderSpec) -> StepConfig:
  loss = cfg.loss
  kwargs = {k: v for k, v in loss.items()
            if k not in ('name', 'scale', 'learnable_scale', 'matryoshka_dims', 'matryoshka_weights')}
  for k, v in kwargs.items():
    if isinstance(v, list):
      kwargs[k] = tuple(v)
  return StepConfig(
      spec=spec, loss=loss.name, loss_kwargs=tuple(sorted(kwargs.items())),
      scale=float(loss.get('scale', 20.0)), learnable_scale=bool(loss.get('learnable_scale', False)),
      matryoshka_dims=tuple(loss.get('matryoshka_dims', ()) or ()),
      matryoshka_weights=tuple(loss.matryoshka_weights) if loss.get('matryoshka_weights') else None,
      chunk_size=int(cfg.train.get('chunk_size', 0)), grad_cache=bool(cfg.train.get('grad_cache', False)),
      dropout=bool(cfg.train.get('dropout', True)))


def evaluate(model: Pretrained, params, evals: dict, data_dir: Path | None, progress: bool) -> dict:
  """Runs each eval block, at each of its ``dims`` (truncate + renormalise); keys 'task_metric@dim'."""
  out = {}
  for task, block in evals.items():
    dims = tuple(block.get('dims', (model.spec.bert.hidden_size,)))
    cache: dict[int, np.ndarray] = {}

    def encode_full(texts):
      key = hash(tuple(texts))
      if key not in cache:
        cache[key] = encode(model, texts, params=params, progress=progress)
      return cache[key]

    for dim in dims:
      def encode_fn(texts, dim=dim):
        x = encode_full(texts)[:, :dim]
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
      r = run_task(task, encode_fn, data_dir)
      for metric in block.get('metrics', (r['main_metric'],)):
        out[f'{task}_{metric}@{dim}'] = r[metric]
  return out


class _Logger:
  """JSONL + TensorBoard on process 0; a no-op on the other processes."""

  def __init__(self, workdir: Path, resume_step: int):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    self.path = workdir / 'metrics.jsonl'
    if self.path.exists():
      # Drop records past the restored step: they will be produced again.
      kept = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line).get('step', 0) <= resume_step]
      atomic_write_text(self.path, ''.join(line + '\n' for line in kept))
    self._file = open(self.path, 'a', encoding='utf-8')
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(workdir / 'tensorboard'))
    except ImportError:  # TensorBoard logging is optional; JSONL always happens
      self._tb = None

  def write(self, step: int, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': step, **{k: float(v) for k, v in record.items()}}
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k != 'step':
          self._tb.add_scalar(k, v, step)

  def close(self):
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def train(cfg: ml_collections.ConfigDict, workdir: str | Path, *, resume: bool = True,
          stop_after: int | None = None, progress: bool = True) -> dict:
  """Trains per ``cfg``; returns the summary written to ``workdir/summary.json``.

  Args:
    resume: continue from the latest checkpoint in ``workdir`` if there is one.
    stop_after: stop (after checkpointing) once this many steps are done in this call — used by
      tests to interrupt a run at a chosen step.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  data_dir = Path(cfg.data.data_dir) if cfg.data.get('data_dir') else paths.shared_data_dir()
  key = jax.random.key(cfg.seed)
  init_key, run_key = jax.random.split(key)

  model = build_model(cfg.model, init_key)
  params = {'encoder': model.params}
  if cfg.loss.get('learnable_scale', False):
    params['logit_scale'] = jnp.log(jnp.float32(cfg.loss.get('scale', 20.0)))
  tx = make_optimizer(cfg.optim, params, cfg.steps)
  mesh = make_mesh()
  repl = replicated(mesh)
  state = jax.device_put(create_state(params, tx), repl)

  rows = train_data.load_rows(cfg.data.train, data_dir, cfg.data.get('cache_dir'))
  loader = train_data.make_loader(
      rows, model.tokenizer, batch_size=cfg.data.batch_size, query_len=cfg.data.query_len,
      doc_len=cfg.data.doc_len, seed=cfg.seed, process_index=jax.process_index(),
      process_count=jax.process_count())

  ckpt = Checkpointer(workdir / 'checkpoints', keep=cfg.get('ckpt_keep', 2),
                      best_metric=cfg.get('best_metric') or None,
                      async_save=cfg.get('async_checkpointing', True))
  start = 0
  if resume and ckpt.latest_step() is not None:
    start = ckpt.latest_step()
    state, data_state = ckpt.restore(start, abstract_like(state, repl))
    loader.set_state(data_state)
  logger = _Logger(workdir, start)

  step_fn = jax.jit(make_train_step(step_config(cfg, model.spec), tx), donate_argnums=0,
                    in_shardings=(repl, None, repl), out_shardings=(repl, repl))
  evals = dict(cfg.get('evals', {}) or {})
  before = None
  before_path = workdir / 'eval_before.json'
  if before_path.exists() and start > 0:
    before = json.loads(before_path.read_text())
  elif evals and cfg.get('eval_before', True):
    before = evaluate(model, state.params['encoder'], evals, data_dir, progress)
    logger.write(0, {f'eval/{k}': v for k, v in before.items()})
    if jax.process_index() == 0:
      atomic_write_json(before_path, before)

  # Throughput counts from the end of the first step (which includes compilation).
  t0, t_first, done, last_eval = time.perf_counter(), None, 0, None
  bar = tqdm(total=cfg.steps, initial=start, desc='train',
              disable=not progress or jax.process_index() != 0, dynamic_ncols=True)
  for step in range(start, cfg.steps):
    batch = global_batch(mesh, next(loader))
    state, metrics = step_fn(state, batch, run_key)
    done += 1
    number = step + 1
    if t_first is None:
      jax.block_until_ready(metrics)
      t_first = time.perf_counter()
    if number % cfg.get('log_every', 10) == 0 or number == cfg.steps:
      m = jax.device_get(metrics)
      rate = (done - 1) * cfg.data.batch_size / max(time.perf_counter() - t_first, 1e-9)
      logger.write(number, {**{f'train/{k}': v for k, v in m.items()}, 'train/pairs_per_s': rate})
      bar.set_postfix(loss=f'{float(m["loss"]):.4f}', pairs_s=f'{rate:.1f}')
    bar.update(1)
    eval_metrics = None
    every = cfg.get('eval_every', 0)
    if evals and ((every and number % every == 0) or number == cfg.steps):
      eval_metrics = evaluate(model, state.params['encoder'], evals, data_dir, progress)
      logger.write(number, {f'eval/{k}': v for k, v in eval_metrics.items()})
      last_eval = eval_metrics
    stop = stop_after is not None and done >= stop_after
    if number % cfg.get('ckpt_every', 100) == 0 or number == cfg.steps or stop:
      ckpt.save(number, state, loader.get_state(), metrics=eval_metrics)
    if stop:
      break
  bar.close()
  ckpt.close()
  logger.close()
  steady = max(done - 1, 0) * cfg.data.batch_size

  train_seconds = time.perf_counter() - t0
  summary = {'steps_done': int(jax.device_get(state.step)), 'steps': cfg.steps,
             'seconds': round(train_seconds, 1),
             'pairs_per_s': round(steady / max(time.perf_counter() - t_first, 1e-9), 2) if t_first else None,
             'train_rows': len(rows), 'before': before, 'after': last_eval,
             'best_step': ckpt.best_step(), 'config': cfg.to_dict(), **provenance()}
  if int(jax.device_get(state.step)) == cfg.steps and cfg.get('export', True) and jax.process_index() == 0:
    export_sentence_transformers(workdir / 'export', model.spec, state.params['encoder'],
                                 model.tokenizer, extra=model.extra)
    summary['export'] = str(workdir / 'export')
  if jax.process_index() == 0:
    atomic_write_json(workdir / 'summary.json', _jsonable(summary))
  summary['state'] = state
  return summary


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  return x
