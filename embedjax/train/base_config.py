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
BATCH_ARGUMENTS = ('hard_negatives', 'doc_ids', 'weights', 'positive_mask', 'scores', 'mask',
                   'guide_hard_negatives')  # the last: a guide's embeddings (GIST)
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


# --- multi-task training (cfg.tasks; embedjax.train.multitask) ----------------------------------
TASK_BLOCK_FIELDS = ('instruction', 'loss', 'loss_fields', 'train', 'weight')


def shared_loss_fields() -> tuple[str, ...]:
  """The fields of the base config's loss block that every task shares: the temperature
  ('scale', 'learnable_scale') and every field that is no loss function's keyword (the step's
  wrappers: Matryoshka dims and weights, elastic layers, negative mixing). The loss functions'
  own keywords are each task's (task_block's loss_fields)."""
  block = base_config().loss
  return ('scale',) + tuple(k for k in block.keys()
                            if k not in _LOSS_FIELDS_OF_BASE and k != 'name')


def task_block(train: str, loss: str = 'info_nce', weight: float = 1.0, instruction: str = '',
               loss_fields: dict | None = None) -> dict:
  """One entry of ``cfg.tasks`` (keyed by task name) for multi-task training.

  Args:
    train: the task's training source(s), as ``data.train`` takes them ('scifact', 'file:...').
    loss: its loss (a key of ``embedjax.losses.LOSSES``).
    weight: its sampling weight: each step trains on this task with probability weight / (sum of
      the weights).
    instruction: a prefix of every query text of the task ('' = none), e.g.
      ``prompts.instruct_query('Given a claim, retrieve documents that support it', '')`` =
      'Instruct: Given a claim, ...\\nQuery: ' (E5 / NV-Embed); documents get none.
    loss_fields: the loss's own keyword fields that differ from its defaults (e.g.
      ``{'gamma': 1.0}``); the base loss block's :func:`shared_loss_fields` apply to every task.
  """
  return dict(train=train, loss=loss, weight=float(weight), instruction=instruction,
              loss_fields=dict(loss_fields or {}))


def task_config(cfg: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The single-task config of task ``name`` of ``cfg.tasks`` (a new, unlocked ConfigDict):
  ``cfg`` with data.train = the task's source, loss = the task's loss (its defaults, then its
  loss_fields, then the base loss block's :func:`shared_loss_fields`) and no tasks. Everything that
  builds or checks a single-task run applies to it unchanged."""
  block = cfg.tasks[name]
  t = ml_collections.ConfigDict(cfg.to_dict())
  t.tasks = ml_collections.ConfigDict()
  t.data.train = block.train
  t.loss = base_config().loss
  use_loss(t, block.loss, **block.loss_fields.to_dict())
  for k in shared_loss_fields():
    t.loss[k] = cfg.loss[k]
  return t


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                     # PRNG seed: init, dropout, data order
  c.steps = 100                  # optimizer steps in the whole run

  c.model = ml_collections.ConfigDict()  # the embedding model
  c.model.init = 'pretrained:all-MiniLM-L6-v2'  # 'pretrained:NAME_OR_PATH' or 'random:NAME_OR_PATH'
  # (random:NAME also takes a named decoder shape: decoder-tiny, decoder-0.1b, qwen3-0.6b,
  # llama-8b, built with model.tokenizer's vocabulary)
  c.model.tokenizer = 'all-MiniLM-L6-v2'  # the tokenizer of a named random shape
  # Two-stage training: a finished (or stopped) run's workdir whose latest checkpoint's encoder
  # params replace model.init's weights (optimizer and step start fresh). model.init still names
  # the architecture and tokenizer: it must equal that run's (checked). '' = off.
  c.model.init_checkpoint = ''   # e.g. 'runs/two_stage/stage1' (embedjax.train.multitask)
  c.model.dtype = 'float32'      # compute dtype ('float32' | 'bfloat16'); params stay float32
  c.model.max_seq_length = 0     # tokens per text (0 = the model's own limit)
  c.model.pooling = ''           # '' = the model's own pooling; else cls|mean|max|weighted_mean|last_token
  c.model.bert = {k: 0 for k in BERT_OVERRIDES}  # random init only: architecture changes (0 = keep)
  c.model.attention = ''         # decoders: '' = causal (as pre-trained) | causal | bidirectional
  c.model.remat = 'none'         # per-layer rematerialisation: none | full | dots | dots_no_batch
  c.model.attention_impl = 'auto'  # attention kernel: auto (cuDNN's fused attention on a GPU in
                                 # bfloat16 where it applies) | xla | cudnn (docs/training.md)
  c.model.attention_dropout = -1.0  # BERT family: dropout on the attention probabilities (-1 =
                                 # the model's own, 0.1 for MiniLM; 0 lets training take cuDNN's
                                 # fused attention, which has none)
  c.model.lora = ml_collections.ConfigDict()  # train a LoRA adapter only (rank 0 = off)
  c.model.lora.rank = 0          # r
  c.model.lora.alpha = 16.0      # the update is (alpha / r) A B
  c.model.lora.target = r'.*(query|value|q_proj|v_proj)'  # regex over module paths (peft's names)
  # Distillation students (embedjax.train.distillation), random init only:
  c.model.projection = 0         # a linear Dense head after pooling to this width (0 = none),
                                 # e.g. the teacher's width for embedding_mse (LEAF)
  c.model.word_embeddings_from = ''  # init the word embeddings by a PCA of this model's table
                                 # ('' = off; the same vocabulary), e.g. 'all-MiniLM-L6-v2'
  # What a text becomes (embedjax.train.step; docs/beyond_single_vector.md):
  c.model.representation = 'single'  # 'single' (one vector) | 'multi_vector' (ColBERT token
                                 # vectors, trained with InfoNCE over MaxSim) | 'sparse' (SPLADE
                                 # vocabulary weights from an MLM head)
  c.model.token_dim = 128        # multi_vector: width of the token vectors (a new projection)
  c.model.query_augment = True   # multi_vector: queries padded to data.query_len with [MASK]
                                 # tokens that count (ColBERT's query augmentation)
  c.model.skip_punctuation = True  # multi_vector: punctuation tokens of documents are encoded
                                 # but left out of MaxSim (ColBERT's skiplist)

  c.loss = ml_collections.ConfigDict()  # the training loss
  c.loss.name = 'info_nce'       # a key of embedjax.losses.LOSSES
  c.loss.update(loss_defaults('info_nce'))  # scale, directions, partition_mode, similarity, ...
  c.loss.learnable_scale = False  # learn log(scale) (capped at 100, as CLIP)
  c.loss.matryoshka_dims = ()    # () = plain loss; e.g. (384, 256, 128, 64, 32)
  c.loss.matryoshka_weights = ()  # () = equal weights; else one per dim
  # Elastic depth (losses.elastic; sentence-transformers' defaults): every layer's embedding is
  # trained too. 'matryoshka_2d' (2DMSE) needs matryoshka_dims; 'adaptive_layer' uses them if set.
  c.loss.layer_elastic = ''      # '' (off) | 'adaptive_layer' | 'matryoshka_2d'
  c.loss.n_layers_per_step = 1   # prior layers sampled per step (-1 = all of them)
  c.loss.n_dims_per_step = 1     # matryoshka_2d: dims sampled per layer (-1 = all of them)
  c.loss.last_layer_weight = 1.0  # weight of the last layer's loss
  c.loss.prior_layers_weight = 1.0  # weight of the sampled prior layers' mean loss
  c.loss.kl_div_weight = 1.0     # weight of the KL(last layer || prior layer) term
  c.loss.kl_temperature = 0.3    # its temperature (0 = no KL term)
  c.loss.layer_weighting = 'uniform'  # prior layer weights: 'uniform' | 'log' | 'linear'
  # Online hard-negative mixing (losses.mixing, KaLM-Embedding-V2 / MoCHi): synthetic negatives
  # per query, mixed from its mix_hardest hardest negatives (needs a loss with hard negatives).
  c.loss.mix_negatives = 0       # mixes of two hard negatives per query (0 = off)
  c.loss.mix_hardest = 8         # how many of the hardest negatives they are mixed from
  c.loss.mix_query = 0           # mixes of the query with one hard negative per query
  # model.representation 'sparse' (SPLADE): FLOPS regulariser weights (constant here; SPLADE
  # raises them quadratically over its first steps)
  c.loss.flops_query = 0.0       # on the query weights
  c.loss.flops_doc = 0.0         # on the document (positive and negative) weights

  c.data = ml_collections.ConfigDict()  # training data and token lengths
  c.data.train = 'synthetic'     # comma-separated training sources (embedjax.train.data.SOURCES)
                                 # or your own file: 'file:/path/pairs.jsonl' (.jsonl/.csv/.tsv)
  c.data.batch_size = 32         # global batch (in-batch negatives = batch_size - 1)
  c.data.query_len = 64          # tokens per query
  c.data.doc_len = 256           # tokens per document (and hard negative)
  c.data.padding = 'bucket'      # 'bucket': each batch padded to the shortest of 64, 128, ...,
                                 # query_len / doc_len tokens holding its longest text (a compile
                                 # per length met); 'max_length': always query_len / doc_len;
                                 # 'pack': texts packed into rows of query_len / doc_len tokens
                                 # (single vectors, not layer_elastic; train.chunk_size then
                                 # counts rows)
  c.data.pack_segments = 16      # 'pack': at most this many texts in one row
  c.data.token_cache_texts = 1_000_000  # keep the token ids of up to this many distinct
                                 # queries (and as many documents) after their first
                                 # tokenization, not tokenizing them again every epoch (same
                                 # batches; ~0.15 KB + 4 bytes a token per text kept, and
                                 # the text for a source read from disk); 0 = off
  c.data.data_dir = ''           # '' = ../shared/data (or $EMBEDJAX_DATA_DIR)
  c.data.cache_dir = ''          # tfds ArrayRecord cache ('' = ~/.cache/embedjax/tfds)
  c.data.file = ml_collections.ConfigDict()  # how to read a 'file:' source (embedjax.data.files)
  c.data.file.kind = 'pairs'     # 'pairs' (anchor, positive[, negatives...]) | 'scored' (text1,
                                 # text2, score) | 'labelled' (text, label)
  c.data.file.format = ''        # 'jsonl', 'csv' or 'tsv' ('' = from the file name)
  c.data.file.columns = ''       # 'role=column,...' e.g. 'anchor=q,positive=a,negatives=n1|n2'
                                 # ('' = columns named anchor, positive, negative_1, ...)
  c.data.file.header = True      # CSV/TSV: the first row names the columns
  c.data.file.encoding = 'utf-8'  # an ASCII-compatible text encoding

  c.train = ml_collections.ConfigDict()  # how the step embeds the batch
  c.train.chunk_size = 0         # rows embedded at a time (0 = the whole batch)
  c.train.grad_cache = False     # gradient caching over chunks (memory of one chunk)
  c.train.dropout = True         # train-mode dropout, as sentence-transformers trains
  c.train.guide = ''             # a frozen guide/teacher for GUIDE_LOSSES (gist, margin_mse, ...),
                                 # 'pretrained:NAME_OR_PATH'; for data.train='distill:...' the
                                 # teacher whose embeddings are the targets ('' = none)

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
  c.optim.keep_zeros = False     # layer matrix weights zero at the start stay zero (pruned models)

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
  # Multi-task training (embedjax.train.multitask): task name -> task_block(train, loss, weight,
  # instruction, loss_fields); each step trains on one task drawn by weight. Empty = one task
  # from data.train and loss; else data.train must be '' and loss gives only shared_loss_fields().
  c.tasks = ml_collections.ConfigDict()  # task name -> task_block(...) ({} = single task)
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
  task_fields = {p for p in got if p.startswith(('evals.', 'tasks.'))}  # free-form blocks
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
  _check_tasks(cfg)


def _check_tasks(cfg: ml_collections.ConfigDict) -> None:
  # Each task block is checked as the single-task config it stands for (task_config), so every
  # rule of a single-task run applies to it; errors name the task's field.
  if not cfg.tasks:
    return
  if cfg.data.train:
    raise ConfigError(f"data.train {cfg.data.train!r}: with tasks, each task names its own data "
                      "(tasks.NAME.train); set data.train to ''")
  base, shared = base_config().loss, shared_loss_fields()
  for k in cfg.loss.keys():
    if k not in shared and (k not in base or cfg.loss[k] != base[k]):
      raise ConfigError(f'loss.{k}: with tasks, each task sets its loss and its fields '
                        f'(tasks.NAME.loss, tasks.NAME.loss_fields); the loss block gives only '
                        f'{list(shared)}')
  for name in cfg.tasks.keys():
    block = cfg.tasks[name]
    if not isinstance(block, ml_collections.ConfigDict):
      raise ConfigError(f'tasks.{name}: expected a task_block(...), got {block!r}')
    fields = tuple(sorted(block.keys()))
    if fields != TASK_BLOCK_FIELDS:
      raise ConfigError(f'tasks.{name} must have exactly the fields {TASK_BLOCK_FIELDS} '
                        f'(embedjax.train.base_config.task_block), got {fields}')
    if not isinstance(block.train, str) or not block.train.strip():
      raise ConfigError(f'tasks.{name}.train {block.train!r}: expected a training source name')
    if block.loss not in LOSSES:
      raise ConfigError(f'tasks.{name}.loss {block.loss!r}: not one of {sorted(LOSSES)}')
    weight = block.weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float('inf'):
      raise ConfigError(f'tasks.{name}.weight {weight!r}: expected a positive finite number')
    if not isinstance(block.instruction, str):
      raise ConfigError(f'tasks.{name}.instruction {block.instruction!r}: expected a string')
    if not isinstance(block.loss_fields, ml_collections.ConfigDict):
      raise ConfigError(f'tasks.{name}.loss_fields {block.loss_fields!r}: expected a dict')
    own = set(loss_defaults(block.loss)) - set(shared)
    for k in block.loss_fields.keys():
      if k in shared:
        raise ConfigError(f'tasks.{name}.loss_fields.{k}: shared by every task; set loss.{k}')
      if k not in own:
        raise ConfigError(f'tasks.{name}.loss_fields.{k}: loss {block.loss!r} takes no {k!r} '
                          f'(its fields: {sorted(own)})')
    try:
      check_config(task_config(cfg, name))
    except ConfigError as e:
      raise ConfigError(f'tasks.{name}: {e}') from None


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
             'model.attention_impl': ('auto', 'xla', 'cudnn'),
             'optim.decay': ('cosine', 'linear', 'constant'),
             'model.representation': ('single', 'multi_vector', 'sparse'),
             'data.padding': ('bucket', 'max_length', 'pack')}
  for path, allowed in choices.items():
    if path in fields and fields[path] not in allowed:
      raise ConfigError(f'{path} {fields[path]!r}: not one of {list(allowed)}')
  directions = fields.get('loss.directions', ('query_to_doc',))
  if 'query_to_doc' not in directions or not set(directions) <= set(DIRECTIONS):
    raise ConfigError(f"loss.directions {directions!r}: must include 'query_to_doc', all among "
                      f'{list(DIRECTIONS)}')
  for path in ('data.batch_size', 'data.query_len', 'data.doc_len', 'data.pack_segments'):
    if fields.get(path, 1) < 1:
      raise ConfigError(f'{path} {fields[path]!r}: must be positive')
  if fields.get('data.token_cache_texts', 0) < 0:
    raise ConfigError(f"data.token_cache_texts {fields['data.token_cache_texts']!r}: must be >= 0 "
                      '(0: no cache)')
  _check_packing(fields)
  dropout = fields.get('model.attention_dropout', -1.0)
  if dropout != -1.0 and not 0.0 <= dropout < 1.0:
    raise ConfigError(f'model.attention_dropout {dropout!r}: -1 (the model\'s own) or in [0, 1)')
  hidden, heads = fields.get('model.bert.hidden_size'), fields.get('model.bert.num_attention_heads')
  if hidden and heads and hidden % heads:
    raise ConfigError(f'model.bert.hidden_size {hidden}: not divisible by '
                      f'model.bert.num_attention_heads {heads}')
  dims = fields.get('loss.matryoshka_dims', ())
  if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
    raise ConfigError(f'loss.matryoshka_dims {dims!r}: expected positive integers, e.g. (384, 64)')
  _check_elastic_and_mixing(fields)
  _check_representation(fields)


def _check_packing(fields: dict) -> None:
  """Packed batches reach the plain single-vector step only (one line otherwise)."""
  if fields.get('data.padding') != 'pack':
    return
  clash = [f'{path} {fields[path]!r}' for path, off in (
      ('loss.layer_elastic', ''), ('model.representation', 'single'))
           if fields.get(path, off) != off]
  if clash:
    raise ConfigError("data.padding 'pack' trains single vectors without layer_elastic so far; "
                      'this config sets '
                      f"{', '.join(clash)} (use data.padding 'bucket')")


def _check_representation(fields: dict) -> None:
  """The fields of a multi-vector or sparse run (one line each)."""
  kind = fields.get('model.representation', 'single')
  if fields.get('model.token_dim', 1) < 1:
    raise ConfigError(f"model.token_dim {fields['model.token_dim']!r}: must be positive")
  if fields.get('loss.flops_query', 0.0) < 0 or fields.get('loss.flops_doc', 0.0) < 0:
    raise ConfigError('loss.flops_query and loss.flops_doc must be >= 0')
  if kind == 'single':
    return
  if any(p.startswith('tasks.') for p in fields):
    raise ConfigError(f'model.representation {kind!r}: multi-task training (tasks) is for single '
                      'vectors only so far')
  if fields.get('loss.name') != 'info_nce':
    raise ConfigError(f"model.representation {kind!r} trains with loss.name 'info_nce' (over "
                      f"{'MaxSim scores' if kind == 'multi_vector' else 'SPLADE weights'}), "
                      f"not {fields.get('loss.name')!r}")
  others = {'loss.matryoshka_dims': (), 'loss.layer_elastic': '', 'loss.mix_negatives': 0,
            'loss.mix_query': 0, 'loss.learnable_scale': False, 'model.lora.rank': 0}
  if kind == 'multi_vector':  # maxsim_info_nce takes the scale only
    others.update({'loss.directions': ('query_to_doc',), 'loss.partition_mode': 'joint',
                   'loss.false_negative_ratio': None})
  for path, default in others.items():
    if path in fields and fields[path] not in (default, list(default) if isinstance(
        default, tuple) else default):
      raise ConfigError(f'{path}: not with model.representation {kind!r} (leave it at '
                        f'{default!r})')


def _check_elastic_and_mixing(fields: dict) -> None:
  """The layer_elastic and mix_* fields of the loss block (one line each)."""
  from embedjax.losses.elastic import LAYER_WEIGHTINGS
  elastic = fields.get('loss.layer_elastic', '')
  if elastic not in ('', 'adaptive_layer', 'matryoshka_2d'):
    raise ConfigError(f"loss.layer_elastic {elastic!r}: not one of ['', 'adaptive_layer', "
                      "'matryoshka_2d']")
  if elastic == 'matryoshka_2d' and not fields.get('loss.matryoshka_dims', ()):
    raise ConfigError("loss.layer_elastic 'matryoshka_2d' needs loss.matryoshka_dims, "
                      'e.g. (384, 256, 128, 64)')
  weighting = fields.get('loss.layer_weighting', 'uniform')
  if weighting not in LAYER_WEIGHTINGS:
    raise ConfigError(f'loss.layer_weighting {weighting!r}: not one of {list(LAYER_WEIGHTINGS)}')
  for path in ('loss.n_layers_per_step', 'loss.n_dims_per_step'):
    v = fields.get(path, 1)
    if isinstance(v, bool) or not isinstance(v, int):
      raise ConfigError(f'{path} {v!r}: expected an int (-1 = all)')
  if fields.get('loss.kl_temperature', 0.3) < 0:
    raise ConfigError(f"loss.kl_temperature {fields['loss.kl_temperature']!r}: must be >= 0 "
                      '(0 = no KL term)')
  for path in ('loss.mix_negatives', 'loss.mix_query', 'loss.mix_hardest'):
    v = fields.get(path, 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise ConfigError(f'{path} {v!r}: expected a non-negative int')
  if (fields.get('loss.mix_negatives', 0) or fields.get('loss.mix_query', 0)) and \
      fields.get('loss.mix_hardest', 8) < 1:
    raise ConfigError('loss.mix_hardest 0: mixing needs at least one hard negative to mix')
