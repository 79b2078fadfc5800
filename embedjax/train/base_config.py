"""The base config of a training run: every field ``embedjax train`` reads, with its default.

Every training config starts from :func:`base_config` and changes what it needs (big_vision's
``configs/common.py`` habit), so a researcher who copies one sees every knob; the library reads the
fields directly, never ``cfg.get(key, default)``. The loss block's defaults are the loss function's
own keyword defaults (``embedjax.losses``), so they are written once, in the loss.

Conventions: '' or 0 means "the model's own value" or "off" where a comment says so; tuples stay
tuples. :func:`check_config` reports a missing or unknown field in one line.
"""

from __future__ import annotations

import inspect
import typing

import ml_collections
from ml_collections import config_dict

from embedjax.config import ConfigError, closest, leaf_paths
from embedjax.losses import LOSSES
from embedjax.train.sharding import DEFAULT_RULES

# Keyword arguments of a loss that come from the batch, not from the config.
BATCH_ARGUMENTS = ('hard_negatives', 'doc_ids', 'weights', 'positive_mask', 'scores', 'mask')
# BERT fields a 'random:NAME' model may change (0 = keep NAME's value).
BERT_OVERRIDES = ('hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size')
EVAL_BLOCK_FIELDS = ('dims', 'metrics')


def loss_defaults(name: str) -> dict:
  """The config-settable keyword defaults of loss ``name`` (None becomes a typed placeholder)."""
  fn = LOSSES[name]
  hints = typing.get_type_hints(fn)
  out = {}
  for p in inspect.signature(fn).parameters.values():
    if p.kind is not p.KEYWORD_ONLY or p.name in BATCH_ARGUMENTS:
      continue
    if p.default is None:
      kinds = [t for t in typing.get_args(hints[p.name]) if t is not type(None)]
      out[p.name] = config_dict.placeholder(kinds[0] if kinds else object)
    else:
      out[p.name] = p.default
  return out


def use_loss(c: ml_collections.ConfigDict, name: str, **fields) -> ml_collections.ConfigDict:
  """Chooses loss ``name`` in config ``c``: adds the loss's own fields (with their defaults)
  that the base config lacks, then sets ``fields``; returns ``c``. E.g.
  ``use_loss(c, 'focal_info_nce', gamma=1.0)``."""
  if name not in LOSSES:
    raise ConfigError(f'loss.name {name!r}: not one of {sorted(LOSSES)}')
  c.loss.name = name  # the chosen loss (a key of LOSSES)
  c.loss.update({k: v for k, v in loss_defaults(name).items() if k not in c.loss})
  c.loss.update(fields)
  return c


# Loss fields of every config (info_nce's keyword defaults); see check_config.
_LOSS_FIELDS_OF_BASE = frozenset(loss_defaults('info_nce'))


def eval_block(dims: tuple[int, ...] = (), metrics: tuple[str, ...] = ()) -> dict:
  """One entry of ``cfg.evals`` (keyed by task name): dims () = the model's full width (else
  truncate + renormalise to each); metrics () = the task's main metric."""
  return dict(dims=tuple(dims), metrics=tuple(metrics))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                     # PRNG seed: init, dropout, data order
  c.steps = 100                  # optimizer steps in the whole run

  c.model = ml_collections.ConfigDict()  # the embedding model
  c.model.init = 'pretrained:all-MiniLM-L6-v2'  # 'pretrained:NAME_OR_PATH' or 'random:NAME_OR_PATH'
  # (random:NAME also takes a named decoder shape: decoder-tiny, decoder-0.1b, qwen3-0.6b,
  # llama-8b, built with model.tokenizer's vocabulary)
  c.model.tokenizer = 'all-MiniLM-L6-v2'  # the tokenizer of a named random shape
  c.model.dtype = 'float32'      # compute dtype ('float32' | 'bfloat16'); params stay float32
  c.model.max_seq_length = 0     # tokens per text (0 = the model's own limit)
  c.model.pooling = ''           # '' = the model's own pooling; else cls|mean|max|weighted_mean|last_token
  c.model.bert = {k: 0 for k in BERT_OVERRIDES}  # random init only: architecture changes (0 = keep)
  c.model.attention = ''         # decoders: '' = causal (as pre-trained) | causal | bidirectional
  c.model.remat = 'none'         # per-layer rematerialisation: none | full | dots | dots_no_batch
  c.model.lora = ml_collections.ConfigDict()  # train a LoRA adapter only (rank 0 = off)
  c.model.lora.rank = 0          # r
  c.model.lora.alpha = 16.0      # the update is (alpha / r) A B
  c.model.lora.target = r'.*(query|value|q_proj|v_proj)'  # regex over module paths (peft's names)

  c.loss = ml_collections.ConfigDict()  # the training loss
  c.loss.name = 'info_nce'       # a key of embedjax.losses.LOSSES
  c.loss.update(loss_defaults('info_nce'))  # scale, directions, partition_mode, similarity, ...
  c.loss.learnable_scale = False  # learn log(scale) (capped at 100, as CLIP)
  c.loss.matryoshka_dims = ()    # () = plain loss; e.g. (384, 256, 128, 64, 32)
  c.loss.matryoshka_weights = ()  # () = equal weights; else one per dim

  c.data = ml_collections.ConfigDict()  # training data and token lengths
  c.data.train = 'synthetic'     # comma-separated training sources (embedjax.train.data.SOURCES)
                                 # or your own file: 'file:/path/pairs.jsonl' (.jsonl/.csv/.tsv)
  c.data.batch_size = 32         # global batch (in-batch negatives = batch_size - 1)
  c.data.query_len = 64          # tokens per query
  c.data.doc_len = 256           # tokens per document (and hard negative)
  c.data.data_dir = ''           # '' = ../shared/data (or $EMBEDJAX_DATA_DIR)
  c.data.cache_dir = ''          # tfds ArrayRecord cache ('' = ~/.cache/embedjax/tfds)
  c.data.file = ml_collections.ConfigDict()  # how to read a 'file:' source (embedjax.data.files)
  c.data.file.kind = 'pairs'     # rows of (anchor, positive[, negatives...])
  c.data.file.format = ''        # 'jsonl', 'csv' or 'tsv' ('' = from the file name)
  c.data.file.columns = ''       # 'role=column,...' e.g. 'anchor=q,positive=a,negatives=n1|n2'
                                 # ('' = columns named anchor, positive, negative_1, ...)
  c.data.file.header = True      # CSV/TSV: the first row names the columns
  c.data.file.encoding = 'utf-8'  # an ASCII-compatible text encoding

  c.train = ml_collections.ConfigDict()  # how the step embeds the batch
  c.train.chunk_size = 0         # rows embedded at a time (0 = the whole batch)
  c.train.grad_cache = False     # gradient caching over chunks (memory of one chunk)
  c.train.dropout = True         # train-mode dropout, as sentence-transformers trains

  c.optim = ml_collections.ConfigDict()  # AdamW, schedule, clipping, freezing
  c.optim.lr = 2e-5              # peak learning rate (AdamW)
  c.optim.warmup_steps = 0       # linear warmup from 0
  c.optim.decay = 'linear'       # after warmup: 'linear' | 'cosine' | 'constant'
  c.optim.end_lr_ratio = 0.0     # final lr = lr * end_lr_ratio
  c.optim.weight_decay = 0.01    # decoupled; not on biases, LayerNorm, the temperature
  c.optim.b1 = 0.9               # Adam beta1
  c.optim.b2 = 0.999             # Adam beta2
  c.optim.eps = 1e-6             # Adam epsilon (the Hugging Face trainer's)
  c.optim.clip_norm = 1.0        # global gradient-norm clip (0 = off)
  c.optim.freeze = ''            # regex over '/'-joined param paths: no update for matches

  c.mesh = ml_collections.ConfigDict()  # the ('data', 'fsdp', 'tensor') device mesh
  c.mesh.data = -1               # data-parallel ways (-1 = the devices the others leave)
  c.mesh.fsdp = 1                # params and optimizer state split this many ways (FSDP)
  c.mesh.tensor = 1              # heads / MLP / vocab split this many ways (tensor parallelism)
  c.mesh.rules = DEFAULT_RULES   # (logical axis, mesh axes) pairs: embedjax.train.sharding

  c.log_every = 10               # steps between train-metric records
  c.eval_every = 0               # steps between evaluations (0 = only before and after)
  c.eval_before = True           # evaluate the starting model (skip to reuse another run's)
  c.ckpt_every = 100             # steps between checkpoints (and at the end)
  c.ckpt_keep = 2                # latest checkpoints kept (plus the best, if best_metric)
  c.best_metric = ''             # an eval key to keep the best checkpoint by ('' = none)
  c.async_checkpointing = True   # save in the background (waited on before exit)
  c.export = True                # write a sentence-transformers folder at the end
  c.evals = ml_collections.ConfigDict()  # task name -> eval_block(dims, metrics)
  return c


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line) for a field missing from, or unknown to, the base config."""
  base = leaf_paths(base_config())
  if cfg.loss.name not in LOSSES:
    raise ConfigError(f'loss.name {cfg.loss.name!r}: not one of {sorted(LOSSES)}')
  # The chosen loss's own keyword arguments are fields too (a config sets them after
  # c.loss.update(loss_defaults(name))); the base's loss fields it does not take must keep their
  # defaults, since the step passes a loss only the arguments it takes.
  own = loss_defaults(cfg.loss.name)
  want = {**base, **{f'loss.{k}': v for k, v in own.items()}}
  got = leaf_paths(cfg)
  for k in sorted(_LOSS_FIELDS_OF_BASE - set(own)):
    if k in cfg.loss and got.get(f'loss.{k}') != base.get(f'loss.{k}'):
      raise ConfigError(f'loss.{k}: loss {cfg.loss.name!r} takes no {k!r} (leave it at '
                        f'{base.get(f"loss.{k}")!r})')
  task_fields = {p for p in got if p.startswith('evals.')}
  missing = [p for p in want if p not in got]
  unknown = [p for p in got if p not in want and p not in task_fields]
  if missing:
    raise ConfigError(f'config lacks field {missing[0]!r}: start it from '
                      'embedjax.train.base_config.base_config()')
  if unknown:
    raise ConfigError(f'unknown config field {unknown[0]!r}{closest(unknown[0], want)}')
  for task in cfg.evals.keys():
    fields = tuple(sorted(cfg.evals[task].keys()))
    if fields != EVAL_BLOCK_FIELDS:
      raise ConfigError(f'evals.{task} must have exactly the fields {EVAL_BLOCK_FIELDS} '
                        f'(embedjax.train.base_config.eval_block), got {fields}')
  _check_values(leaf_paths(cfg))


def _check_values(fields: dict) -> None:
  # Values the builders would reject only deep inside a traceback (a similarity as a bare KeyError,
  # a zero batch as a ZeroDivisionError): checked here so that a bad --config.x is one line.
  from embedjax.losses.contrastive import DIRECTIONS, SIMILARITIES
  from embedjax.models.pooling import POOLING_MODES
  choices = {'loss.similarity': tuple(SIMILARITIES), 'loss.partition_mode': ('joint', 'per_direction'),
             'model.pooling': ('', *POOLING_MODES, 'latent_attention'),
             'model.dtype': ('float32', 'bfloat16'),
             'model.attention': ('', 'causal', 'bidirectional'),
             'model.remat': ('none', 'full', 'dots', 'dots_no_batch'),
             'optim.decay': ('cosine', 'linear', 'constant')}
  for path, allowed in choices.items():
    if path in fields and fields[path] not in allowed:
      raise ConfigError(f'{path} {fields[path]!r}: not one of {list(allowed)}')
  directions = fields.get('loss.directions', ('query_to_doc',))
  if 'query_to_doc' not in directions or not set(directions) <= set(DIRECTIONS):
    raise ConfigError(f"loss.directions {directions!r}: must include 'query_to_doc', all among "
                      f'{list(DIRECTIONS)}')
  for path in ('data.batch_size', 'data.query_len', 'data.doc_len'):
    if fields[path] < 1:
      raise ConfigError(f'{path} {fields[path]!r}: must be positive')
  hidden, heads = fields.get('model.bert.hidden_size'), fields.get('model.bert.num_attention_heads')
  if hidden and heads and hidden % heads:
    raise ConfigError(f'model.bert.hidden_size {hidden}: not divisible by '
                      f'model.bert.num_attention_heads {heads}')
  dims = fields.get('loss.matryoshka_dims', ())
  if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
    raise ConfigError(f'loss.matryoshka_dims {dims!r}: expected positive integers, e.g. (384, 64)')
