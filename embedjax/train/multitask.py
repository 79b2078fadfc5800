"""Multi-task training (one task per step, drawn by weight) and two-stage training.

Multi-task (issue 18; NV-Embed, QZhou-Embedding, CoDiEmb's single-task batches): ``cfg.tasks``
names several tasks, each a training source with its own loss, loss fields and query instruction
(``base_config.task_block``). Every step trains on ONE task, so every batch is task-homogeneous:
a batch that mixed tasks would mix losses (scored STS pairs with retrieval pairs) and would give
each query in-batch negatives from other tasks, which are trivially easy.

* The task of step ``s`` is drawn with probability weight / sum(weights) by :func:`task_for_step`
  from a generator seeded by (seed, s): a pure function of the step, so a resumed run draws the
  same tasks with no sampler state to save.
* Each task has its own grain loader (``train_batches.make_loader``), seeded by the run's seed and
  the task's name (:func:`loader_seed`: adding a task changes no other task's order); a
  checkpoint holds ``{task: loader state}``.
* Each task has its own jitted step (the StepConfig differs by loss; batch shapes differ by hard
  negatives and scores), compiled on the task's first step.
* One model is trained: params, optimizer state, step counter and the dropout key stream are
  shared, and the base loss block's ``shared_loss_fields()`` (one temperature, one Matryoshka
  setting, ...) apply to every task. A task is checked and built as the single-task config it stands
  for (``base_config.task_config``), so every single-task rule applies to it.
* Logs: at a logged step, 'train/TASK/METRIC' is the mean of TASK's metrics over its steps since
  the previous log and 'train/TASK/steps' their count; 'train/task' is the index (in
  :func:`task_names` order) of the logged step's own task, whose metrics are 'train/METRIC'.
  The summary records each task's step count.

Two-stage (``model.init_checkpoint=WORKDIR``): a run starts from the encoder params of the latest
checkpoint of the run in WORKDIR (e.g. a weakly supervised stage 1 on title -> text pairs),
with a fresh optimizer, step counter and learning-rate schedule (:func:`init_from_checkpoint`).
``model.init`` still names the architecture and tokenizer, and must equal the first run's; the
params' shapes are checked too. The summary records where the params came from
(``init_from``: workdir, step, the first run's config hash).
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from embedjax.config import ConfigError
from embedjax.io import atomic_write_json
from embedjax.models.lora import LoraConfig
from embedjax.models.pretrained import Pretrained
from embedjax.models.spec import EmbedderSpec
from embedjax.models.tokenizer import TextTokenizer
from embedjax.provenance import config_hash
from embedjax.train import checkpoint, loop, run_config, sharding
from embedjax.train import batches as train_batches
from embedjax.train import data as train_data
from embedjax.train.base_config import task_config
from embedjax.train.step import encoder_params, make_train_step

# Mixed into the sampler's seed so that its stream differs from any other use of (seed, step).
_SAMPLER_TAG = 0x6D7431  # 'mt1'
_MASK64 = (1 << 64) - 1  # SeedSequence takes non-negative integers


# ------------------------------------------------------------------------------------------------
# Tasks and the sampler


def task_names(cfg: ml_collections.ConfigDict) -> list[str]:
  """The tasks of ``cfg.tasks``, sorted: the order of the weights, indices and logs."""
  return sorted(cfg.tasks.keys())


def task_weights(cfg: ml_collections.ConfigDict) -> np.ndarray:
  """(T,) float64 sampling weights in :func:`task_names` order (not normalised)."""
  return np.asarray([float(cfg.tasks[n].weight) for n in task_names(cfg)], np.float64)


def task_for_step(weights, seed: int, step: int) -> int:
  """The index of the task that step ``step`` trains on: i with probability
  weights[i] / sum(weights), from a generator seeded by (seed, step) alone.

  Args:
    weights: (T,) positive sampling weights.
    seed: the run's seed.
    step: the 0-based optimizer step.
  Returns:
    an int in [0, T).
  """
  w = np.asarray(weights, np.float64)
  if w.ndim != 1 or not len(w) or not np.all(w > 0):
    raise ValueError(f'weights {weights!r}: expected a 1-D array of positive numbers')
  cdf = np.cumsum(w)
  u = np.random.default_rng([_SAMPLER_TAG, int(seed) & _MASK64, int(step)]).random()
  # u * total < total (u in [0, 1)), so the index stays below T whatever the rounding of cdf.
  return int(np.searchsorted(cdf, u * cdf[-1], side='right'))


def task_steps(cfg: ml_collections.ConfigDict, steps: int) -> dict[str, int]:
  """{task: number of the steps 0..steps-1 that train on it} (the sampler is a function of the
  step, so this is exact for a resumed run too)."""
  names, weights = task_names(cfg), task_weights(cfg)
  counts = np.bincount([task_for_step(weights, cfg.seed, s) for s in range(steps)],
                       minlength=len(names))
  return {n: int(c) for n, c in zip(names, counts)}


def loader_seed(seed: int, name: str) -> int:
  """The shuffle seed of task ``name``'s loader: from the run's seed and the task's name only."""
  ss = np.random.SeedSequence([int(seed) & _MASK64, zlib.crc32(name.encode('utf-8'))])
  return int(ss.generate_state(1)[0])


def task_configs(cfg: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """{task: its single-task config} (``base_config.task_config``), in :func:`task_names` order."""
  return {n: task_config(cfg, n) for n in task_names(cfg)}


def _prefixed(name: str, fn, *args):
  """fn(*args), its ConfigError prefixed with 'tasks.NAME: '."""
  try:
    return fn(*args)
  except ConfigError as e:
    raise ConfigError(f'tasks.{name}: {e}') from None


def with_task_sources(cfg: ml_collections.ConfigDict,
                      sources: dict[str, train_data.Source]) -> dict[str, train_data.Source]:
  """``sources`` plus every task's ``file:`` (and other derived) sources, each prepared once.
  Every file task reads with the shared ``data.file`` options."""
  for name, tcfg in task_configs(cfg).items():
    sources = _prefixed(name, loop._with_files, tcfg, sources)
  return sources


def check_tasks(cfg: ml_collections.ConfigDict, sources: dict[str, train_data.Source]) -> None:
  """Every task's sources exist and its loss fits its data (scored or not, hard negatives);
  one-line ConfigError naming the task."""
  if cfg.train.guide:
    # The guide's step takes the guide's params as an argument; one guide shared by tasks of
    # guide and non-guide losses is not wired here yet.
    raise ConfigError(f'train.guide {cfg.train.guide!r}: not supported with tasks yet')
  for name, tcfg in task_configs(cfg).items():
    _prefixed(name, loop.check_loss_and_data, tcfg, sources)


def source_inputs(cfg: ml_collections.ConfigDict, data_dir: Path | None,
                  sources: dict[str, train_data.Source]) -> list[Path]:
  """The shared-data folders and files every task reads (provenance inputs), each once."""
  out = []
  for tcfg in task_configs(cfg).values():
    out += train_data.source_inputs(tcfg.data.train, data_dir, sources)
  return list(dict.fromkeys(out))


def dry_build_tasks(cfg: ml_collections.ConfigDict, sources: dict[str, train_data.Source],
                    spec: EmbedderSpec, tx, state) -> dict[str, dict]:
  """{task: {'batch', 'metrics'}}: every task's batch shapes and its step, built abstractly on
  the (abstract) ``state``."""
  out = {}
  for name, tcfg in task_configs(cfg).items():
    batch = _prefixed(name, loop.batch_shapes, tcfg, sources)
    step = make_train_step(loop.step_config(tcfg, spec), tx)
    _, metrics = jax.eval_shape(step, state, batch, jax.random.key(0))
    out[name] = {'batch': batch, 'metrics': metrics}
  return out


# ------------------------------------------------------------------------------------------------
# Data: one loader per task


class _Instructed:
  """Random access over ``rows`` with ``prefix`` prepended to each row's query text ('query', or
  'text1' of a scored file's rows); documents are left as they are."""

  def __init__(self, rows, prefix: str):
    self._rows = rows
    self._prefix = prefix

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, index: int) -> dict:
    row = dict(self._rows[index])
    key = 'text1' if 'text1' in row else 'query'
    row[key] = self._prefix + str(row[key])
    return row


class TaskLoader:
  """The multi-task batch stream: ``next()`` draws step ``step``'s task (:func:`task_for_step`),
  sets ``current`` to its name and returns the next batch of that task's own loader.

  ``get_state()``/``set_state()`` carry ``{task: loader state}`` (the step needs no saving: the
  loop resumes at the checkpoint's step, given here as ``start``).
  """

  def __init__(self, cfg: ml_collections.ConfigDict, rows: dict[str, Any],
               tokenizer: TextTokenizer, start: int, *, process_index: int = 0,
               process_count: int = 1, row_multiple: int = 1):
    self.names = task_names(cfg)
    self.weights = task_weights(cfg)
    self.seed = int(cfg.seed)
    self.step = int(start)
    self.current: str | None = None
    self.rows = {n: len(rows[n]) for n in self.names}
    self._loaders = {}
    for n in self.names:
      instruction = cfg.tasks[n].instruction
      task_rows = _Instructed(rows[n], instruction) if instruction else rows[n]
      self._loaders[n] = train_batches.make_loader(
          task_rows, tokenizer, batch_size=cfg.data.batch_size, query_len=cfg.data.query_len,
          doc_len=cfg.data.doc_len, seed=loader_seed(cfg.seed, n), process_index=process_index,
          process_count=process_count, padding=cfg.data.padding,
          pack_segments=cfg.data.pack_segments, token_cache_texts=cfg.data.token_cache_texts,
          row_multiple=row_multiple)

  def __len__(self) -> int:
    """Rows over all tasks."""
    return sum(self.rows.values())

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    self.current = self.names[task_for_step(self.weights, self.seed, self.step)]
    self.step += 1
    return next(self._loaders[self.current])

  def get_state(self) -> dict:
    return {n: loader.get_state() for n, loader in self._loaders.items()}

  def set_state(self, state: dict) -> None:
    # A task the checkpoint does not know (added under --allow-config-change) starts afresh.
    for n, loader in self._loaders.items():
      if n in state:
        loader.set_state(state[n])


def make_task_loader(cfg: ml_collections.ConfigDict, data_dir: Path | None,
                     sources: dict[str, train_data.Source], tokenizer: TextTokenizer,
                     start: int) -> TaskLoader:
  """The :class:`TaskLoader` of ``cfg.tasks``, each task's rows read as ``data.train`` would be."""
  cache = cfg.data.cache_dir or None
  rows = {n: train_data.load_rows(t.data.train, data_dir, cache, sources)
          for n, t in task_configs(cfg).items()}
  return TaskLoader(cfg, rows, tokenizer, start, process_index=jax.process_index(),
                    process_count=jax.process_count(),
                    row_multiple=loop.packed_row_multiple(cfg))


# ------------------------------------------------------------------------------------------------
# Steps: one jitted step per task, and the per-task metrics for the logs


class TaskSteps:
  """``step(state, batch, rng) -> (state, metrics)`` of the task ``loader.current`` names: each
  task's sharded step is built (and compiled) on its first use. Keeps every step's metrics by
  task until :meth:`log_record` averages them."""

  def __init__(self, cfg: ml_collections.ConfigDict, spec: EmbedderSpec, tx, state_sh, mesh,
               loader: TaskLoader):
    self._configs = task_configs(cfg)
    self._spec, self._tx, self._state_sh, self._mesh = spec, tx, state_sh, mesh
    self._loader = loader
    self._steps: dict[str, Any] = {}
    self._pending: dict[str, list] = {n: [] for n in loader.names}

  def __call__(self, state, batch, rng):
    name = self._loader.current
    if name not in self._steps:
      if self._steps:  # the loop announces the first compile itself
        loop._say(f'compiling the step of task {name!r} ...')
      self._steps[name] = sharding.sharded_train_step(
          loop.step_config(self._configs[name], self._spec), self._tx, self._state_sh,
          self._mesh)
    state, metrics = self._steps[name](state, batch, rng)
    self._pending[name].append(metrics)
    return state, metrics

  def log_record(self) -> dict[str, float]:
    """{'train/task': the last step's task index, 'train/TASK/METRIC': TASK's mean since the
    last record, 'train/TASK/steps': their count} for the tasks that ran; then forgets them."""
    out = {'train/task': float(self._loader.names.index(self._loader.current))}
    for name, records in self._pending.items():
      if not records:
        continue
      host = jax.device_get(records)
      for k in host[0]:
        out[f'train/{name}/{k}'] = float(np.mean([np.asarray(r[k], np.float64) for r in host]))
      out[f'train/{name}/steps'] = float(len(records))
      self._pending[name] = []
    return out


def run_summary(cfg: ml_collections.ConfigDict, loader: TaskLoader, steps_done: int) -> dict:
  """The summary's 'tasks': {task: {train, loss, weight, instruction, rows, steps}} (steps over
  the whole run, 0..steps_done-1)."""
  counts = task_steps(cfg, steps_done)
  out = {}
  for n in task_names(cfg):
    block = cfg.tasks[n]
    out[n] = {'train': block.train, 'loss': block.loss, 'weight': float(block.weight),
              'instruction': block.instruction, 'loss_fields': block.loss_fields.to_dict(),
              'rows': loader.rows[n], 'steps': counts[n]}
  return {'tasks': out}


# ------------------------------------------------------------------------------------------------
# Two-stage training: start from another run's checkpoint

# The model fields that fix the architecture and tokenizer: a run started from another run's
# checkpoint must name the same ones.
_ARCHITECTURE_FIELDS = ('init', 'tokenizer', 'bert')
INIT_FROM_FILE = 'init_from.json'  # in the second run's workdir: where its params came from


def _shapes(tree) -> dict[str, tuple]:
  return {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _flat(value) -> Any:
  return json.loads(json.dumps(value.to_dict() if hasattr(value, 'to_dict') else value,
                               default=str))


def init_from_checkpoint(model_cfg: ml_collections.ConfigDict,
                         model: Pretrained) -> tuple[Pretrained, dict]:
  """``model`` (built from ``model.init``) with the encoder params of the latest checkpoint of
  the run in ``model_cfg.init_checkpoint``, and where they came from.

  A LoRA adapter the first run trained is merged into its encoder. The first run's learned
  temperature, optimizer state and step are not carried over.

  Returns:
    (the model, {'workdir', 'step', 'config_hash'}): the first run's workdir (absolute), its
    checkpoint's step and the hash of its config (``provenance.config_hash``, as its summary's
    'config_hash').
  Raises ConfigError (one line) when there is no run there, it has no checkpoint, or its model
  differs in architecture or tokenizer.
  """
  workdir = Path(model_cfg.init_checkpoint).expanduser().resolve()
  stored = run_config.stored_config(workdir)
  if stored is None:
    raise ConfigError(f'model.init_checkpoint {model_cfg.init_checkpoint!r}: no training run '
                      f'there ({workdir / run_config.CONFIG_FILE} missing): train the first '
                      'stage first')
  theirs = stored['model']
  for field in _ARCHITECTURE_FIELDS:
    if _flat(theirs[field]) != _flat(model_cfg[field]):
      raise ConfigError(f'model.{field} {_flat(model_cfg[field])!r}: the run in {workdir} '
                        f'trained {_flat(theirs[field])!r}; model.init_checkpoint needs the same '
                        'architecture and tokenizer')
  step, params = checkpoint.restore_params(workdir / 'checkpoints')
  lora = theirs['lora']
  adapter = (LoraConfig(rank=int(lora['rank']), alpha=float(lora['alpha']), target=lora['target'])
             if lora['rank'] else None)
  encoder = jax.device_get(encoder_params(params, adapter))
  want, got = _shapes(model.params), _shapes(encoder)
  if got != want:
    first = next((f'{k} is {got.get(k)}, here {v}' for k, v in want.items() if got.get(k) != v),
                 'a different parameter tree')
    raise ConfigError(f'model.init_checkpoint {str(workdir)!r}: its params do not fit this model '
                      f'({first})')
  origin = {'workdir': str(workdir), 'step': step, 'config_hash': config_hash(stored)}
  source = f'checkpoint {workdir}/checkpoints/{step}'
  return dataclasses.replace(model, params=encoder, source=source), origin


def checkpoint_start(model_cfg: ml_collections.ConfigDict, model: Pretrained, workdir: Path,
                     start: int) -> tuple[Pretrained, dict]:
  """What ``train`` starts a run with ``model.init_checkpoint`` from: (model, origin).

  A fresh run (``start`` 0) takes :func:`init_from_checkpoint`'s params and records their origin
  in ``workdir/init_from.json``; a resumed run gets its params from its own checkpoint, so the
  first run is not read again (it may have moved on) and the recorded origin is returned.
  """
  path = Path(workdir) / INIT_FROM_FILE
  if start > 0 and path.exists():
    return model, json.loads(path.read_text())
  model, origin = init_from_checkpoint(model_cfg, model)
  if jax.process_index() == 0:
    atomic_write_json(path, origin)
  return model, origin
