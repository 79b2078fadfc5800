"""The training loop: config in, checkpoints, logs, evaluations and an exported model out.

Thin on purpose: every computation lives in pure functions (``train.step``, ``losses``,
``models``); this file wires data, mesh, checkpointing and logging around them.

Workdir layout:
  checkpoints/        Orbax (latest N + best by metric), with the data iterator state
  metrics.jsonl       one JSON object per logged step or evaluation (rewritten on resume so that
                      steps after the restored checkpoint are not duplicated)
  tensorboard/        TensorBoard event files
  export/             the final model as a sentence-transformers folder
  config.json         the config the run started (or was last resumed) with: a resume that
                      changes more than ``run_config.RESUMABLE_FIELDS`` is refused
  summary.json        evaluations before/after, timings, command and versions
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm  # plain bars: tqdm.auto warns at import in kernels without ipywidgets

from embedjax import paths
from embedjax.config import ConfigError
from embedjax.encoding import encode
from embedjax.evals.tasks import TASKS, run_task, task_inputs
from embedjax.io import atomic_write_json, atomic_write_text
from embedjax.losses import GUIDE_LOSSES, SCORED_LOSSES, TARGET_LOSSES
from embedjax.models.pretrained import (Pretrained, export_sentence_transformers,
                                        init_model_params, load_pretrained, load_spec)
from embedjax.models.lora import LoraConfig, init_lora
from embedjax.models.spec import DenseSpec, EmbedderSpec
from embedjax.models.tokenizer import TextTokenizer
from embedjax.ops import l2_normalize
from embedjax.provenance import Run
from embedjax.train import batches as train_batches
from embedjax.train import data as train_data
from embedjax.train import representation, run_config
from embedjax.train.base_config import check_config, loss_defaults
from embedjax.train.checkpoint import Checkpointer
from embedjax.train import sharding
from embedjax.train.optim import make_optimizer
from embedjax.train.state import create_state
from embedjax.train.step import StepConfig, encoder_params, make_train_step, model_params


def model_spec(cfg: ml_collections.ConfigDict) -> tuple[EmbedderSpec, TextTokenizer]:
  """The architecture and tokenizer that ``cfg.model`` names, read without weights.

  'pretrained:NAME_OR_PATH' is that model; 'random:NAME_OR_PATH' takes its architecture (changed
  by the non-zero ``cfg.model.bert`` fields) and tokenizer, to be initialised afresh;
  'random:SHAPE' for a named decoder shape (``embedjax.models.decoder.NAMED_SHAPES``) builds it
  with ``cfg.model.tokenizer``'s vocabulary and tokenizer. ``remat`` and (decoders) ``attention``
  apply to every backbone, as does ``attention_impl``; ``attention_dropout`` (BERT family) when
  it is not -1.
  """
  kind, _, name = cfg.init.partition(':')
  if kind not in ('pretrained', 'random'):
    raise ConfigError(f"model.init {cfg.init!r}: must be 'pretrained:NAME' or 'random:NAME'")
  changes = {k: v for k, v in cfg.bert.items() if v}
  named_shapes = {}
  if kind == 'random':  # only then may the name be a decoder shape (loaded lazily: see spec.py)
    from embedjax.models.decoder import NAMED_SHAPES as named_shapes
  if name in named_shapes:
    if changes:
      raise ConfigError(f'model.bert {changes}: a named decoder shape ({name}) takes no BERT '
                        'overrides')
    base, tokenizer, _ = load_spec(cfg.tokenizer, max_seq_length=cfg.max_seq_length or None)
    shape = named_shapes[name]
    # a shape's own vocabulary (its parameter count) unless the tokenizer needs more rows
    vocab = max(shape.get('vocab_size', 0), tokenizer.vocab_size)
    from embedjax.models.decoder import DecoderConfig
    decoder = DecoderConfig(**{**shape, 'vocab_size': vocab, 'pad_token_id': tokenizer.pad_id,
                               'dtype': cfg.dtype})
    max_len = min(cfg.max_seq_length or base.max_seq_length, decoder.max_positions)
    spec = EmbedderSpec(decoder=decoder, pooling='last_token', max_seq_length=max_len)
    tokenizer = tokenizer.with_max_length(max_len)
  else:
    spec, tokenizer, _ = load_spec(name, dtype=cfg.dtype,
                                   max_seq_length=cfg.max_seq_length or None)
    if changes and kind != 'random':
      raise ConfigError(f'model.bert {changes} changes the architecture: only for random:NAME inits')
    if changes and spec.bert is None:
      raise ConfigError(f'model.bert {changes}: {name} is not a BERT-family model')
  if spec.decoder is not None:
    if cfg.attention_dropout != -1.0:
      raise ConfigError(f'model.attention_dropout {cfg.attention_dropout}: only BERT-family '
                        'models have dropout on the attention probabilities')
    spec = dataclasses.replace(spec, decoder=dataclasses.replace(
        spec.decoder, remat=cfg.remat, attention=cfg.attention or spec.decoder.attention,
        attention_impl=cfg.attention_impl))
  else:
    if cfg.attention:
      raise ConfigError(f'model.attention {cfg.attention!r}: only decoders have an attention mode')
    if cfg.attention_dropout != -1.0:
      changes['attention_probs_dropout_prob'] = float(cfg.attention_dropout)
    spec = dataclasses.replace(spec, bert=dataclasses.replace(
        spec.bert, remat=cfg.remat, attention_impl=cfg.attention_impl, **changes))
  if cfg.projection:  # a distillation student's linear head to the teacher's width (LEAF)
    if kind != 'random':
      raise ConfigError(f'model.projection {cfg.projection}: only for random:NAME inits')
    dense = DenseSpec(spec.embedding_dim, int(cfg.projection), activation='identity')
    spec = dataclasses.replace(spec, dense=spec.dense + (dense,))
  return dataclasses.replace(spec, pooling=cfg.pooling or spec.pooling), tokenizer


def lora_config(cfg: ml_collections.ConfigDict) -> LoraConfig | None:
  """The LoRA adapter ``cfg.model.lora`` asks for, or None (rank 0)."""
  block = cfg.model.lora
  if not block.rank:
    return None
  try:
    return LoraConfig(rank=int(block.rank), alpha=float(block.alpha), target=block.target)
  except ValueError as e:
    raise ConfigError(f'model.lora: {e}') from None


def build_model(cfg: ml_collections.ConfigDict, key: jax.Array) -> Pretrained:
  """The model ``cfg.model`` names, with its weights (pretrained) or fresh N(0, 0.02) ones."""
  spec, tokenizer = model_spec(cfg)
  kind, _, name = cfg.init.partition(':')
  if kind == 'pretrained':
    loaded = load_pretrained(name, dtype=cfg.dtype, max_seq_length=cfg.max_seq_length or None)
    return dataclasses.replace(loaded, spec=spec)
  params = init_model_params(spec, key)
  if cfg.word_embeddings_from:
    from embedjax.train import distillation  # it imports this module
    params = distillation.init_word_embeddings(params, cfg.word_embeddings_from)
  return Pretrained(spec=spec, params=params, tokenizer=tokenizer,
                    source=f'random init ({name} architecture)')


def step_config(cfg: ml_collections.ConfigDict, spec: EmbedderSpec) -> StepConfig:
  from embedjax.train.step import ELASTIC_OPTIONS
  loss = cfg.loss
  # The fields the chosen loss takes (the base config's info_nce fields may not all apply).
  takes = set(loss_defaults(loss.name)) - {'scale'}  # the step passes the scale itself
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in loss.items() if k in takes}
  extra = {}
  if representation.kind(cfg) != 'single':  # multi-vector / sparse: the step's own settings
    extra = representation.step_settings(cfg, model_spec(cfg.model)[1])
  fields = dict(
      spec=spec, loss=loss.name, loss_kwargs=tuple(sorted(kwargs.items())),
      scale=float(loss.scale), learnable_scale=bool(loss.learnable_scale),
      matryoshka_dims=tuple(loss.matryoshka_dims),
      matryoshka_weights=tuple(loss.matryoshka_weights) or None,
      chunk_size=int(cfg.train.chunk_size), grad_cache=bool(cfg.train.grad_cache),
      dropout=bool(cfg.train.dropout), lora=lora_config(cfg),
      guide_spec=guide_spec(cfg) if cfg.loss.name in GUIDE_LOSSES else None,
      # elastic depth and hard-negative mixing
      layer_elastic=str(loss.layer_elastic),
      layer_kwargs=tuple((k, loss[k]) for k in ELASTIC_OPTIONS),
      mix_negatives=int(loss.mix_negatives), mix_hardest=int(loss.mix_hardest),
      mix_query=int(loss.mix_query),
      pack_segments=int(cfg.data.pack_segments) if cfg.data.padding == 'pack' else 0)
  return StepConfig(**{**fields, **extra})


def train_params(cfg: ml_collections.ConfigDict, encoder_params, key=None) -> dict:
  """The trained pytree: the encoder's params, plus log(scale) when the temperature is learned,
  plus a fresh LoRA adapter (``key``) under 'lora' when ``cfg.model.lora.rank`` is set (the
  encoder is then frozen: see :func:`optimizer`)."""
  params = {'encoder': encoder_params}
  lora = lora_config(cfg)
  if lora is not None:
    params['lora'] = init_lora(jax.random.key(0) if key is None else key, encoder_params, lora)
  if cfg.loss.learnable_scale:
    params['logit_scale'] = jnp.log(jnp.float32(cfg.loss.scale))
  if representation.kind(cfg) != 'single':  # the token projection or the MLM head
    params['head'] = representation.init_head(
        cfg, model_spec(cfg.model)[0], jax.random.fold_in(
            jax.random.key(0) if key is None else key, 2), encoder_params)
  return params


def optimizer(cfg: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
  """``cfg.optim``'s update rule; with a LoRA adapter the base encoder is frozen as well."""
  optim = cfg.optim
  if lora_config(cfg) is not None:
    optim = ml_collections.ConfigDict(optim.to_dict())
    optim.freeze = '|'.join(p for p in ('^encoder/', cfg.optim.freeze) if p)
  return make_optimizer(optim, params, cfg.steps)


def trained_encoder(cfg: ml_collections.ConfigDict, params):
  """The backbone params a trained state stands for (an adapter merged in, for evals/export)."""
  return encoder_params(model_params(params), lora_config(cfg))


def batch_shapes(cfg: ml_collections.ConfigDict, sources: dict[str, train_data.Source]) -> dict:
  """The global batch as ShapeDtypeStructs (what ``train_batches.tokenize_batch`` makes; under
  ``data.padding='bucket'`` the largest shapes, which batches of shorter texts undercut)."""
  picked = train_data.check_sources(cfg.data.train, sources)
  b, lq, ld = cfg.data.batch_size, cfg.data.query_len, cfg.data.doc_len
  if cfg.data.padding == 'pack':  # the most rows: one text a row
    return _packed_shapes(b, lq, ld, picked[0])
  if picked[0].target_dim:  # distillation: texts and their teacher embeddings
    return {'query_ids': jax.ShapeDtypeStruct((b, lq), jnp.int32),
            'query_mask': jax.ShapeDtypeStruct((b, lq), jnp.int32),
            'target': jax.ShapeDtypeStruct((b, picked[0].target_dim), jnp.float32)}
  shapes = {'query_ids': (b, lq), 'query_mask': (b, lq), 'doc_ids': (b, ld), 'doc_mask': (b, ld),
            'doc_key': (b,)}
  if picked[0].hard_negatives:
    h = picked[0].negatives
    shapes.update(neg_ids=(b, h, ld), neg_mask=(b, h, ld))
  out = {k: jax.ShapeDtypeStruct(v, jnp.int32) for k, v in shapes.items()}
  if picked[0].scored:
    out['score'] = jax.ShapeDtypeStruct((b,), jnp.float32)
  return out


def packed_row_multiple(cfg: ml_collections.ConfigDict) -> int:
  """Packed rows per process come in multiples of this: the devices the process feeds, and the
  chunk (``train.chunk_size`` rows) that embeds them."""
  return math.lcm(jax.local_device_count(), int(cfg.train.chunk_size) or 1)


def _packed_shapes(b: int, lq: int, ld: int, source: train_data.Source) -> dict:
  """``batch_shapes`` of a packed batch (keys: ``train_data``'s docstring) at its most rows."""
  def rows(name: str, n: int, length: int) -> dict:
    return {f'{name}_{k}': jax.ShapeDtypeStruct((n, length), jnp.int32)
            for k in ('ids', 'segments', 'positions')}
  out = {**rows('query', b, lq), 'query_index': jax.ShapeDtypeStruct((b,), jnp.int32)}
  if source.target_dim:
    return {**out, 'target': jax.ShapeDtypeStruct((b, source.target_dim), jnp.float32)}
  h = source.negatives if source.hard_negatives else 0
  out.update(rows('doc', b * (1 + h), ld), doc_index=jax.ShapeDtypeStruct((b,), jnp.int32),
             doc_key=jax.ShapeDtypeStruct((b,), jnp.int32))
  if h:
    out['neg_index'] = jax.ShapeDtypeStruct((b, h), jnp.int32)
  if source.scored:
    out['score'] = jax.ShapeDtypeStruct((b,), jnp.float32)
  return out


def check_loss_and_data(cfg: ml_collections.ConfigDict, sources) -> None:
  """A loss on scored pairs needs scored data, and the others need pairs (one line otherwise)."""
  picked = train_data.check_sources(cfg.data.train, sources)[0]
  _check_guide_and_targets(cfg, picked)
  scored = picked.scored
  if (cfg.loss.name in SCORED_LOSSES) != scored:
    if cfg.loss.name in SCORED_LOSSES:
      raise ConfigError(f'loss.name {cfg.loss.name!r} trains on scored pairs; data.train '
                        f'{cfg.data.train!r} gives unscored pairs (use stsb_scored, or a file '
                        "with data.file.kind 'scored')")
    raise ConfigError(f'data.train {cfg.data.train!r} gives scored pairs; loss.name '
                      f'{cfg.loss.name!r} does not use scores: choose one of '
                      f'{sorted(SCORED_LOSSES)}')


def check_evals(cfg: ml_collections.ConfigDict, width: int) -> None:
  if cfg.evals and representation.kind(cfg) != 'single':
    raise ConfigError(f'evals: the in-run evaluations score single vectors; a '
                      f'{representation.kind(cfg)!r} run has none yet (leave evals empty)')
  for task in cfg.evals.keys():
    if task not in TASKS:
      raise ConfigError(f'evals.{task}: unknown task; choose from {sorted(TASKS)}')
    too_wide = [d for d in cfg.evals[task].dims if not 0 < d <= width]
    if too_wide:
      raise ConfigError(f'evals.{task}.dims {too_wide}: outside 1..{width} (the model width)')


def _with_files(cfg, sources):
  """``sources`` plus the config's ``file:`` sources, each validated and converted (once)."""
  sources = train_data.with_files(cfg.data.train, cfg.data.file, cfg.data.cache_dir or None,
                                  sources)
  from embedjax.train import distillation  # it imports this module
  return distillation.with_distill_sources(cfg, sources)


def dry_build(cfg: ml_collections.ConfigDict,
              sources: dict[str, train_data.Source] = train_data.SOURCES) -> dict:
  """Builds the whole run abstractly (``jax.eval_shape``: no weights read, no arrays made):
  model spec, params, optimizer state, batch and one train step. Checks everything the config
  names, so a config whose model does not fit this machine still builds.

  Returns {'spec', 'param_count', 'state', 'batch', 'metrics'} (the last three abstract); with
  ``cfg.tasks`` also 'tasks': {task: {'batch', 'metrics'}} ('batch', 'metrics': the first task's).
  """
  check_config(cfg)
  if cfg.tasks:  # multi-task: every task is checked and built (embedjax.train.multitask)
    from embedjax.train import multitask  # it imports this module
    sources = multitask.with_task_sources(cfg, sources)
    multitask.check_tasks(cfg, sources)
  else:
    sources = _with_files(cfg, sources)
    check_loss_and_data(cfg, sources)
  spec, _ = model_spec(cfg.model)
  check_evals(cfg, spec.embedding_dim)
  encoder = jax.eval_shape(lambda k: init_model_params(spec, k), jax.random.key(0))
  params = jax.eval_shape(lambda p: train_params(cfg, p), encoder)
  tx = optimizer(cfg, params)
  state = jax.eval_shape(lambda p: create_state(p, tx), params)
  if cfg.tasks:  # 'batch' and 'metrics' of the first task, every task's under 'tasks'
    tasks = multitask.dry_build_tasks(cfg, sources, spec, tx, state)
    first = tasks[multitask.task_names(cfg)[0]]
    return {'spec': spec, 'param_count': sum(x.size for x in jax.tree_util.tree_leaves(encoder)),
            'state': state, 'batch': first['batch'], 'metrics': first['metrics'], 'tasks': tasks}
  batch = batch_shapes(cfg, sources)
  step = make_train_step(step_config(cfg, spec), tx)
  guide = None
  if cfg.loss.name in GUIDE_LOSSES:
    guide = jax.eval_shape(lambda k: init_model_params(guide_spec(cfg), k), jax.random.key(0))
  _, metrics = jax.eval_shape(step, state, batch, jax.random.key(0), guide)
  count = sum(x.size for x in jax.tree_util.tree_leaves(encoder))
  return {'spec': spec, 'param_count': int(count), 'state': state, 'batch': batch,
          'metrics': metrics}


# --- a frozen guide / teacher (train.guide) -------------------------------------------------
# Its params are not in the train state: they are an argument of the step (replicated on every
# device), so they get no gradient and no optimizer state, and checkpoints hold only the student;
# a resumed run reloads the guide from its name.


def _guide_name(cfg: ml_collections.ConfigDict) -> str:
  kind, _, name = cfg.train.guide.partition(':')
  if kind != 'pretrained' or not name:
    raise ConfigError(f"train.guide {cfg.train.guide!r}: must be 'pretrained:NAME_OR_PATH'")
  return name


def guide_spec(cfg: ml_collections.ConfigDict) -> EmbedderSpec:
  """The guide's architecture (no weights read)."""
  return load_spec(_guide_name(cfg), dtype=cfg.model.dtype)[0]


def load_guide(cfg: ml_collections.ConfigDict) -> Pretrained:
  return load_pretrained(_guide_name(cfg), dtype=cfg.model.dtype)


def _check_guide_and_targets(cfg: ml_collections.ConfigDict, source: train_data.Source) -> None:
  """Teacher targets need a target loss (and the reverse); a guide loss needs a guide; a guide
  must be used by something (one line each)."""
  name = cfg.loss.name
  if bool(source.target_dim) != (name in TARGET_LOSSES):
    if source.target_dim:
      raise ConfigError(f'data.train {cfg.data.train!r} gives teacher embeddings; loss.name '
                        f'{name!r} does not train on them: choose one of {sorted(TARGET_LOSSES)}')
    raise ConfigError(f"loss.name {name!r} trains on teacher embeddings: data.train must be a "
                      "'distill:...' source")
  if name in GUIDE_LOSSES and not cfg.train.guide:
    raise ConfigError(f"loss.name {name!r} needs a guide model: set train.guide "
                      "('pretrained:NAME_OR_PATH')")
  if cfg.train.guide and name not in GUIDE_LOSSES and not source.target_dim:
    raise ConfigError(f'train.guide {cfg.train.guide!r} is set, but loss.name {name!r} uses no '
                      f'guide (one of {sorted(GUIDE_LOSSES)}, or distill: data)')


def _check_same_tokens(guide: Pretrained, tokenizer: TextTokenizer) -> None:
  # The guide reads the student's token ids: its vocabulary must be the student's.
  probe = ['A probe sentence, with Punctuation and numbers 12345.']
  if (guide.tokenizer.vocab_size != tokenizer.vocab_size
      or guide.tokenizer.encode(probe) != tokenizer.encode(probe)):
    raise ConfigError('train.guide: the guide tokenizes differently from the model; a guide must '
                      "share the model's tokenizer (it embeds the same token ids)")


def guided_train_step(cfg: ml_collections.ConfigDict, model: Pretrained, tx, state_sh, mesh):
  """The jitted step of a guide loss, ``step(state, batch, rng)``, with the guide's params
  loaded here and passed to every call."""
  guide = load_guide(cfg)
  _check_same_tokens(guide, model.tokenizer)
  repl = sharding.replicated(mesh)
  step = jax.jit(make_train_step(step_config(cfg, model.spec), tx),
                 in_shardings=(state_sh, sharding.batch_sharding(mesh), repl, repl),
                 out_shardings=(state_sh, repl), donate_argnums=0)
  params = jax.device_put(guide.params, repl)
  return lambda state, batch, rng: step(state, batch, rng, params)


def run_evals(model: Pretrained, params, evals: ml_collections.ConfigDict, data_dir: Path | None,
              progress: bool) -> dict:
  """Runs each eval block, at each of its ``dims`` (truncate + renormalise); keys 'task_metric@dim'."""
  out = {}
  for task in evals.keys():
    block = evals[task]
    dims = tuple(block.dims) or (model.spec.embedding_dim,)
    cache: dict[int, np.ndarray] = {}

    def encode_full(texts):
      key = hash(tuple(texts))
      if key not in cache:
        cache[key] = encode(model, texts, params=params, progress=progress)
      return cache[key]

    for dim in dims:
      def encode_fn(texts, dim=dim):
        return l2_normalize(encode_full(texts)[:, :dim])
      r = run_task(task, encode_fn, data_dir)
      for metric in tuple(block.metrics) or (r['main_metric'],):
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


class Interrupted(KeyboardInterrupt):
  """Ctrl-C during :func:`train`, after the in-flight checkpoint was finished and the message
  printed; ``step`` is the latest saved step (None: nothing saved)."""

  def __init__(self, step: int | None):
    super().__init__(step)
    self.step = step


def _say(message: str) -> None:
  """A status line on process 0's stdout, printed between progress-bar redraws."""
  if jax.process_index() == 0:
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def interrupted_message(step: int | None) -> str:
  if step is None:
    return 'interrupted before any checkpoint was saved; run the same command to start again'
  return f'interrupted at step {step}; run the same command to resume'


def _finish_saving(ckpt: Checkpointer) -> int | None:
  """Lets an in-flight async save complete (a second Ctrl-C abandons it: Orbax only renames a
  checkpoint into place once complete), closes the manager; returns the latest saved step."""
  try:
    ckpt.wait()
  except KeyboardInterrupt:
    pass
  step = ckpt.saved_step()
  try:
    ckpt.close()
  except KeyboardInterrupt:
    pass
  return step


def _check_resume_config(cfg: ml_collections.ConfigDict, workdir: Path, allow_change: bool
                         ) -> list[str]:
  """Refuses (ConfigError) a resume whose config changes more than ``RESUMABLE_FIELDS``; returns
  the lines that say what changed."""
  stored = run_config.stored_config(workdir)
  if stored is None:
    return [f'{workdir} has checkpoints but no stored config: config changes cannot be checked']
  free, fixed = run_config.check_resume(stored, cfg, workdir, allow_change=allow_change)
  lines = []
  if free:
    lines.append(f'continuing with {run_config.describe(free)}')
  if fixed:
    lines.append(f'--allow-config-change: continuing with {run_config.describe(fixed)}')
  return lines


def train(cfg: ml_collections.ConfigDict, workdir: str | Path, *,
          sources: dict[str, train_data.Source] = train_data.SOURCES, resume: bool = True,
          allow_config_change: bool = False, stop_after: int | None = None,
          progress: bool = True) -> dict:
  """Trains per ``cfg`` (a config built on ``base_config()``); returns the summary written to
  ``workdir/summary.json``.

  Args:
    sources: the training sources ``cfg.data.train`` may name (studies add theirs).
    resume: continue from the latest checkpoint in ``workdir`` if there is one. The config must
      then equal the one stored in ``workdir/config.json`` at the first start, except for
      ``run_config.RESUMABLE_FIELDS`` (else ConfigError naming each changed field).
    allow_config_change: resume even though other fields changed (they are printed).
    stop_after: stop (after checkpointing) once this many steps are done in this call — used by
      tests to interrupt a run at a chosen step.
    progress: progress bars (status lines are printed either way).

  Raises :class:`Interrupted` on Ctrl-C, once the in-flight checkpoint is complete and
  'interrupted at step N; run the same command to resume' is printed.
  """
  check_config(cfg)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt = Checkpointer(workdir / 'checkpoints', keep=cfg.ckpt_keep,
                      best_metric=cfg.best_metric or None, async_save=cfg.async_checkpointing)
  bars, loggers = [], []  # what _train opened, closed here on an interruption
  try:
    start = ckpt.latest_step() if resume else None
    if start is not None:
      changes = _check_resume_config(cfg, workdir, allow_config_change)
      _say(f'resuming from step {start} (workdir {workdir})')
      for line in changes:
        _say(line)
    summary = _train(cfg, workdir, ckpt, start or 0, sources, stop_after, progress, bars, loggers)
  except KeyboardInterrupt:
    for b in bars:
      b.close()
    for l in loggers:
      l.close()
    step = _finish_saving(ckpt)
    _say(interrupted_message(step))
    raise Interrupted(step) from None
  except BaseException:
    ckpt.close()  # waits for an in-flight save: the latest checkpoint stays usable
    raise
  return summary


def _train(cfg, workdir: Path, ckpt: Checkpointer, start: int, sources, stop_after, progress,
           bars: list, loggers: list) -> dict:
  """The body of :func:`train` from a checked config (``start``: the step to resume from, 0 for a
  fresh run); appends its progress bar and logger to ``bars``/``loggers`` for the caller to close
  on an interruption."""
  data_dir = Path(cfg.data.data_dir) if cfg.data.data_dir else paths.shared_data_dir()
  if cfg.tasks:  # multi-task: one loader and one step per task (embedjax.train.multitask)
    from embedjax.train import multitask  # it imports this module
    sources = multitask.with_task_sources(cfg, sources)
    multitask.check_tasks(cfg, sources)
    train_inputs = multitask.source_inputs(cfg, data_dir, sources)
  else:
    sources = _with_files(cfg, sources)
    check_loss_and_data(cfg, sources)
    train_inputs = train_data.source_inputs(cfg.data.train, data_dir, sources)
  # this call's provenance (a resumed run records the call that finished it); the summary
  # stores the config itself
  run = Run(config=cfg, seeds=cfg.seed, store_config=False,
            inputs=train_inputs
            + task_inputs(list(cfg.evals.keys()) if cfg.evals else [], data_dir)).start()
  key = jax.random.key(cfg.seed)
  init_key, run_key = jax.random.split(key)

  model = build_model(cfg.model, init_key)
  init_from = None
  if cfg.model.init_checkpoint:  # two-stage: another run's params (embedjax.train.multitask)
    from embedjax.train import multitask  # it imports this module
    model, init_from = multitask.checkpoint_start(cfg.model, model, workdir, start)
  check_evals(cfg, model.spec.embedding_dim)
  params = train_params(cfg, model.params, jax.random.fold_in(init_key, 1))
  tx = optimizer(cfg, params)
  mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  state_sh = sharding.state_shardings(jax.eval_shape(lambda: create_state(params, tx)), mesh,
                                      sharding.rules_from_config(cfg.mesh.rules))
  state = sharding.shard_state(create_state(params, tx), state_sh)

  if cfg.tasks:  # next() draws the step's task and gives that task's batch
    loader = rows = multitask.make_task_loader(cfg, data_dir, sources, model.tokenizer, start)
  else:
    rows = train_data.load_rows(cfg.data.train, data_dir, cfg.data.cache_dir or None, sources)
    loader = train_batches.make_loader(
        rows, model.tokenizer, batch_size=cfg.data.batch_size, query_len=cfg.data.query_len,
        doc_len=cfg.data.doc_len, seed=cfg.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), padding=cfg.data.padding,
        pack_segments=cfg.data.pack_segments, token_cache_texts=cfg.data.token_cache_texts,
        row_multiple=packed_row_multiple(cfg))

  if start > 0:
    state, data_state = ckpt.restore(start, sharding.abstract_state(state, state_sh))
    loader.set_state(data_state)
  if jax.process_index() == 0:  # after a successful restore: the config this run now continues
    run_config.store_config(workdir, cfg)
  logger = _Logger(workdir, start)
  loggers.append(logger)

  if cfg.tasks:  # the step of loader.current's task, each compiled on first use
    step_fn = multitask.TaskSteps(cfg, model.spec, tx, state_sh, mesh, loader)
  elif cfg.loss.name in GUIDE_LOSSES:
    step_fn = guided_train_step(cfg, model, tx, state_sh, mesh)
  else:
    step_fn = sharding.sharded_train_step(step_config(cfg, model.spec), tx, state_sh, mesh)
  evals = cfg.evals
  before = None
  before_path = workdir / 'eval_before.json'
  if before_path.exists() and start > 0:
    before = json.loads(before_path.read_text())
  elif evals and cfg.eval_before:
    before = run_evals(model, trained_encoder(cfg, state.params), evals, data_dir, progress)
    logger.write(0, {f'eval/{k}': v for k, v in before.items()})
    if jax.process_index() == 0:
      atomic_write_json(before_path, before)

  # The first step compiles; throughput and the progress bar's ETA count from its end, so the
  # compile time does not inflate the estimate.
  t0, t_first, done, last_eval = time.perf_counter(), None, 0, None
  show_bar = progress and jax.process_index() == 0
  bar = None
  for step in range(start, cfg.steps):
    batch = sharding.global_batch(mesh, next(loader))
    if t_first is None:
      _say('compiling the train step ...')
      t_compile = time.perf_counter()
    state, metrics = step_fn(state, batch, run_key)
    done += 1
    number = step + 1
    if t_first is None:
      jax.block_until_ready(metrics)
      t_first = time.perf_counter()
      _say(f'compiled in {t_first - t_compile:.1f} s (with the first step)')
      bar = tqdm(total=cfg.steps, initial=number, desc='train', disable=not show_bar,
                 dynamic_ncols=True)
      bars.append(bar)
    else:
      bar.update(1)
    if number % cfg.log_every == 0 or number == cfg.steps:
      m = jax.device_get(metrics)
      rate = (done - 1) * cfg.data.batch_size / max(time.perf_counter() - t_first, 1e-9)
      logger.write(number, {**{f'train/{k}': v for k, v in m.items()}, 'train/pairs_per_s': rate,
                            **(step_fn.log_record() if cfg.tasks else {})})  # per-task means
      bar.set_postfix(loss=f'{float(m["loss"]):.4f}', pairs_s=f'{rate:.1f}')
    eval_metrics = None
    every = cfg.eval_every
    if evals and ((every and number % every == 0) or number == cfg.steps):
      eval_metrics = run_evals(model, trained_encoder(cfg, state.params), evals, data_dir,
                               progress)
      logger.write(number, {f'eval/{k}': v for k, v in eval_metrics.items()})
      last_eval = eval_metrics
    stop = stop_after is not None and done >= stop_after
    if number % cfg.ckpt_every == 0 or number == cfg.steps or stop:
      ckpt.save(number, state, loader.get_state(), metrics=eval_metrics)
    if stop:
      break
  if bar is not None:
    bar.close()
  ckpt.close()
  logger.close()
  steady = max(done - 1, 0) * cfg.data.batch_size

  train_seconds = time.perf_counter() - t0
  summary = {'steps_done': int(jax.device_get(state.step)), 'steps': cfg.steps,
             'seconds': round(train_seconds, 1),
             'pairs_per_s': round(steady / max(time.perf_counter() - t_first, 1e-9), 2) if t_first else None,
             'train_rows': len(rows), 'before': before, 'after': last_eval,
             'best_step': ckpt.best_step(), 'config': cfg.to_dict(), **run.finish().provenance()}
  if cfg.tasks:  # each task's source, loss, weight, rows and step count
    summary.update(multitask.run_summary(cfg, loader, int(jax.device_get(state.step))))
  if init_from is not None:  # two-stage: the first run's workdir, checkpoint step, config hash
    summary['init_from'] = init_from
  if int(jax.device_get(state.step)) == cfg.steps and cfg.export and jax.process_index() == 0:
    export_sentence_transformers(workdir / 'export', model.spec, trained_encoder(cfg, state.params),
                                 model.tokenizer, extra=model.extra)
    if 'head' in state.params:  # multi-vector / sparse: the head and its settings beside it
      representation.export(workdir / 'export', cfg, model.tokenizer, state.params['head'])
    summary['export'] = str(workdir / 'export')
  if jax.process_index() == 0:
    atomic_write_json(workdir / 'summary.json', _jsonable(summary))
  summary['state'] = state
  return summary


def format_evals(before: dict[str, float] | None, after: dict[str, float] | None, *,
                 configured: bool = False) -> str:
  """What the run evaluated, one clause: each metric (keys 'task_metric@dim') before -> after.

  Without results it says whether evals are configured at all; a side that was not evaluated
  (no eval before, or a run stopped before its end) shows as '-'.
  """
  if not before and not after:
    if configured:
      return 'evaluated: nothing yet (evals run before the first step and at the end of the run)'
    return ('evaluated: none configured (add tasks to config.evals with '
            'embedjax.train.base_config.eval_block)')
  before, after = before or {}, after or {}
  show = lambda d, k: f'{d[k]:.4f}' if k in d else '-'
  keys = list(before) + [k for k in after if k not in before]
  return 'before -> after: ' + ', '.join(f'{k} {show(before, k)} -> {show(after, k)}' for k in keys)


def format_summary(summary: dict) -> str:
  """The last line of ``embedjax train``: steps, time, throughput and what was evaluated."""
  rate = f"{summary['pairs_per_s']} pairs/s" if summary['pairs_per_s'] is not None else 'no steps'
  evals = format_evals(summary['before'], summary['after'],
                       configured=bool(summary.get('config', {}).get('evals')))
  return (f"trained {summary['steps_done']}/{summary['steps']} steps in {summary['seconds']} s "
          f"({rate}); {evals}")


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  return x
