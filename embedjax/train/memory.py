"""Memory planning for a training step: bytes per device of params, optimizer state, activations.

``plan_memory(spec, batch=..., query_len=..., doc_len=..., mesh=...)`` states what one device
holds during one ``embedjax.train.step`` train step (jitted with the state donated, as the loop
runs it), term by term, so that a reader can see what remat, gradient caching and each mesh axis
buy before compiling anything. Nothing is allocated: parameter shapes come from ``jax.eval_shape``
of the model's init.

Notation: B global rows of a column (queries, positive documents, B x hard_negatives negatives),
L its length, b = ceil(B / (data * fsdp)) rows per device, T = b * L tokens per device, n layers,
H hidden size, h attention heads, K key/value heads (K = h for BERT), D head size, I MLP width,
tp = the tensor axis, c bytes per compute-dtype element (4 float32, 2 bfloat16), p bytes per param.

Per-term formulas (per device):

  params            sum over leaves of size * p, a matrix (ndim >= 2: every dense kernel and
                    embedding table) divided by fsdp * tp, vectors (biases, norm weights)
                    replicated. Assumption: FSDP and tensor parallelism shard every matrix over
                    both axes, the MaxText convention; the sharding rules of a config may differ.
  gradients         = params (same shapes, dtypes and shardings).
  optimizer_state   AdamW: mu and nu, 2 x params (optax keeps them in the params' dtype: float32
                    for float32 params), plus the int32 step count; 'sgd': 0.
  batch             int32 ids and masks of every column plus doc_key: 4 * (2 b Lq + 2 b Ld
                    (1 + hard_negatives) + b).
  activations       what the forward keeps for the backward, for the spec's remat policy. One
                    layer keeps, per column (``_layer_bytes``):

                      S = T * c * (kR H + (kQ h D + kKV K D + kI I) / tp) + b h L^2 / tp * kA

                    kR counts residual-stream (hidden-width) arrays, replicated over tp; kQ
                    query/attention-output-width and kKV key/value-width arrays, and kI
                    MLP-width arrays, sharded over tp with the heads and the MLP; kA bytes per
                    attention-logit element (probabilities in float32 whatever the compute dtype).
                    From the model code:
                      BERT (bert.py Layer): the layer input x, q, k, v, the un-normalised p @ v,
                        the attended output, LayerNorm input and output, the second LayerNorm's
                        input (9 hidden-width arrays), the MLP pre-activation and GELU output (2 of
                        width I), the exp'd logits in float32 (4 bytes) and the max-equality
                        mask of the softmax's max (1 byte): kA = 5. XLA CPU keeps in addition a
                        transposed copy of the inputs of the weight-gradient matmuls (x, the
                        LayerNorm output, the attended output and a q/k/v layout copy; the GELU
                        output of width I), measured: kR = 6, kQ = 7 (q, k, v, p @ v, attended,
                        2 copies), kKV = 0 (k and v are among kQ: K = h), kI = 3.
                      Decoder (decoder.py DecoderLayer): x, the RMSNorm outputs and the residual
                        sum (kR = 4), rotated q and the attention output plus two XLA layout copies
                        (kQ = 4), rotated k and v (kKV = 2), gate, up, silu(gate), their product
                        and one copy (kI = 5), and in ``jax.nn.dot_product_attention`` the float32
                        logits' softmax output, the boolean mask and the masked-logit select
                        (kA = 7).
                    Then, summed over the columns (the plain step embeds them all before the loss):

                      'none'  activations_none = sum_col (n + w_none) S + e T c H
                      'full'  activations_full = sum_col (n T c H + w_full S + e T c H)
                                                 + 2 * layer_params (per device)

                    w_none: the backward working set of a layer beyond what is kept (gradients of
                    the activations, transposes), as a fraction of S; under 'full' only each
                    layer's input (T c H) is kept and one layer at a time is recomputed: w_full S
                    is its kept set plus working set. e T c H: the embedding block's arrays
                    (gathered rows, LayerNorm in/out for BERT; e = 0 for the decoder, whose
                    embedding output is layer 0's input). 2 * layer_params: under remat the
                    layers run as a scan over stacked per-layer params (models/remat.py), so the
                    step holds one stacked copy of the layer weights and the stacked gradient
                    before it is split back per layer (measured: the 0.1B BERT's 'full' step has
                    about 2 x 340 MB of these, more than the activations it saves at batch 8).
                    BERT: w_none = 0.13, w_full = 0.86, e = 4.4; decoder: w_none = 0.29,
                    w_full = 1.03, e = 0 (fitted to XLA CPU's compiled memory analysis of tiny
                    models over layers, widths, heads and batch; the counts above are integers
                    from the code, these three are the measured part).
                      'dots' / 'dots_no_batch': 'full' plus, per layer, every matmul output the
                    policy saves (BERT: 3 q/k/v, attention output and 2 dense outputs of width H
                    and one of width I, plus the float32 logits for 'dots'; decoder: q, k, v,
                    o and down projections, gate and up, plus logits and p @ v for 'dots').
                    These two are derived, not checked against XLA.
  grad_cache_chunk  with grad_cache: the column chunks run one at a time, so the peak is the
                    largest column's activations at chunk rows (the policy's formula with
                    b = ceil(chunk / (data * fsdp))), plus the cached embeddings and their
                    gradients, 2 * 4 * B * D per column (global B: the loss sees the whole batch).
  total             params + optimizer_state + batch + the step's peak of temporaries:
                    gradients + grad_cache_chunk with grad_cache; gradients + activations under a
                    remat scan (the stacked gradient is complete before it is split per layer);
                    with remat 'none' and no grad_cache, max(gradients - layer gradients +
                    activations, gradients): the layers' gradients appear as their activations
                    are freed in the top-down backward, so at the peak only the non-layer
                    (embedding) gradients are live beside the activations.

Checked (tests/train/test_memory.py) against XLA's compiled memory analysis on the CPU backend,
argument + temp + output - alias of the jitted step with the state donated: within 10% for a tiny
BERT, a tiny decoder and a 0.1B BERT-base shape, remat 'none' and 'full', plain and
gradient-cached, without dropout; except remat 'full' + gradient caching at the tiny shapes, where
XLA keeps 20-40% more than planned (an unmodelled term; a strict xfail in the test). Dropout (``dropout=True``, BERT only) adds the random bits XLA
keeps for the backward, uint32 per dropped element: the attention probabilities and three
hidden-width dropouts per layer (two per layer, one after the embeddings); not in the checked cases.
Other backends (GPU, TPU) fuse differently; the counts above are XLA CPU's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from embedjax.models.remat import check_policy
from embedjax.models.spec import EmbedderSpec

MESH_AXES = ('data', 'fsdp', 'tensor')
OPTIMIZERS = ('adamw', 'sgd')


@dataclasses.dataclass(frozen=True)
class _Counts:
  """Arrays one layer keeps per token (module docstring), and the fitted XLA CPU factors."""
  residual: float      # kR, hidden width, replicated over tensor
  heads: float         # kQ, width h * D
  kv: float            # kKV, width K * D
  mlp: float           # kI, width I
  attention: float     # kA, bytes per logit element
  w_none: float
  w_full: float
  embed: float         # e, hidden-width arrays per token of the embedding block


_BERT = _Counts(residual=6, heads=7, kv=0, mlp=3, attention=5, w_none=0.13, w_full=0.86, embed=4.4)
_DECODER = _Counts(residual=4, heads=4, kv=2, mlp=5, attention=7, w_none=0.29, w_full=1.03,
                   embed=0.0)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device of one train step; see the module docstring for each term's formula."""
  params: int
  gradients: int
  optimizer_state: int
  batch: int
  activations: int          # with the spec's remat policy
  activations_none: int     # remat 'none'
  activations_full: int     # remat 'full'
  grad_cache_chunk: int     # 0 unless grad_cache
  total: int
  param_count: int          # whole model, unsharded
  remat: str
  grad_cache: bool
  mesh: tuple               # (('data', n), ('fsdp', n), ('tensor', n))

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out['mesh'] = dict(self.mesh)
    return out

  def table(self) -> str:
    """Markdown: one row per term, in MiB and GiB."""
    rows = ['| term | bytes | MiB |', '|---|---:|---:|']
    for name in ('params', 'gradients', 'optimizer_state', 'batch', 'activations',
                 'activations_none', 'activations_full', 'grad_cache_chunk', 'total'):
      value = getattr(self, name)
      rows.append(f'| {name} | {value:,} | {value / 2**20:,.1f} |')
    return '\n'.join(rows)


def _mesh_sizes(mesh: dict[str, int]) -> dict[str, int]:
  unknown = set(mesh) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'mesh axes {sorted(unknown)} are not among {MESH_AXES}')
  sizes = {axis: int(mesh.get(axis, 1)) for axis in MESH_AXES}
  if min(sizes.values()) < 1:
    raise ValueError(f'mesh sizes must be >= 1, got {sizes}')
  return sizes


def _is_layer(path) -> bool:
  keys = [str(getattr(k, 'key', k)) for k in path]
  return any(k.startswith('layer_') or k.startswith('layers_') for k in keys)


def _param_terms(spec: EmbedderSpec, param_dtype, shard: int) -> tuple[int, int, int]:
  """(param count, bytes per device of all params, bytes per device of the per-layer params)."""
  # Imported here: pretrained pulls in the file-format code, which planning does not otherwise need.
  from embedjax.models.pretrained import init_model_params
  shapes = jax.eval_shape(lambda k: init_model_params(spec, k), jax.random.key(0))
  count = total = layers = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    size = int(np.prod(leaf.shape))
    count += size
    # A matrix is split over fsdp * tensor; vectors (biases, norm weights) stay replicated.
    per_device = math.ceil(size / shard) if len(leaf.shape) >= 2 else size
    nbytes = per_device * jnp.dtype(param_dtype).itemsize
    total += nbytes
    if _is_layer(path):
      layers += nbytes
  return count, total, layers


def _dims(spec: EmbedderSpec) -> dict[str, int]:
  cfg = spec.backbone
  if spec.bert is not None:
    heads = cfg.num_attention_heads
    return dict(H=cfg.hidden_size, h=heads, K=heads, D=cfg.head_size,
                I=cfg.intermediate_size, n=cfg.num_hidden_layers)
  return dict(H=cfg.hidden_size, h=cfg.num_attention_heads, K=cfg.num_key_value_heads,
              D=cfg.head_size, I=cfg.intermediate_size, n=cfg.num_hidden_layers)


def _layer_bytes(counts: _Counts, d: dict[str, int], rows: int, length: int, c: int,
                 tp: int) -> float:
  """S: bytes one layer keeps for the backward, for ``rows`` rows of ``length`` tokens."""
  tokens = rows * length
  sharded = (counts.heads * d['h'] * d['D'] + counts.kv * d['K'] * d['D']
             + counts.mlp * d['I']) / tp
  logits = rows * d['h'] * length * length / tp
  return tokens * c * (counts.residual * d['H'] + sharded) + logits * counts.attention


def _saved_dots(spec: EmbedderSpec, d: dict[str, int], rows: int, length: int, c: int, tp: int,
                batch_dots: bool) -> float:
  """Bytes of the matmul outputs a 'dots' / 'dots_no_batch' policy keeps, one layer."""
  tokens = rows * length
  hd, kd = d['h'] * d['D'], d['K'] * d['D']
  if spec.bert is not None:   # q, k, v, attention output dense, intermediate, output dense
    width = (3 * hd) / tp + 2 * d['H'] + d['I'] / tp
  else:                       # q, k, v, o, gate, up, down
    width = (hd + 2 * kd + 2 * d['I']) / tp + 2 * d['H']
  out = tokens * c * width
  if batch_dots:  # logits (float32) and p @ v
    out += rows * d['h'] * length * length / tp * 4 + tokens * c * hd / tp
  return out


def _dropout_bytes(spec: EmbedderSpec, d: dict[str, int], rows: int, length: int, tp: int) -> float:
  """uint32 random bits XLA keeps for BERT's dropout: attention probabilities and two
  hidden-width dropouts per layer, one after the embeddings."""
  if spec.bert is None:
    return 0.0
  tokens = rows * length
  per_layer = rows * d['h'] * length * length / tp + 2 * tokens * d['H']
  return 4.0 * (d['n'] * per_layer + tokens * d['H'])


def _activation_bytes(spec: EmbedderSpec, columns: Iterable[tuple[int, int]], policy: str,
                      layer_params: int, tp: int, dropout: bool) -> int:
  """Activations of the policy for columns of (rows per device, length), embedded together."""
  counts = _BERT if spec.bert is not None else _DECODER
  d = _dims(spec)
  c = jnp.dtype(spec.backbone.compute_dtype).itemsize
  total = 0.0
  for rows, length in columns:
    s = _layer_bytes(counts, d, rows, length, c, tp)
    embed = counts.embed * rows * length * c * d['H']
    if policy == 'none':
      total += (d['n'] + counts.w_none) * s + embed
    else:
      total += d['n'] * rows * length * c * d['H'] + counts.w_full * s + embed
      if policy in ('dots', 'dots_no_batch'):
        total += d['n'] * _saved_dots(spec, d, rows, length, c, tp, policy == 'dots')
    if dropout:
      total += _dropout_bytes(spec, d, rows, length, tp)
  if policy != 'none':
    total += 2 * layer_params
  return int(round(total))


def plan_memory(spec: EmbedderSpec, *, batch: int, query_len: int, doc_len: int,
                hard_negatives: int = 0, chunk_size: int = 0, grad_cache: bool = False,
                optimizer: str = 'adamw', param_dtype: str | None = None, dropout: bool = False,
                mesh: dict[str, int] | None = None) -> MemoryPlan:
  """Bytes per device of one train step of ``spec`` (formulas in the module docstring).

  Args:
    spec: the model; its backbone's ``remat`` is the policy of ``activations``.
    batch: global rows B; query_len, doc_len: Lq, Ld tokens per row; hard_negatives: negatives
      per row (a (B * hard_negatives, Ld) column).
    chunk_size, grad_cache: as ``StepConfig``; the plain step's chunks run together (vmap), so
      only ``grad_cache`` changes the activation term.
    optimizer: 'adamw' (2 x params of state) or 'sgd' (none).
    param_dtype: 'float32' / 'bfloat16'; None = the backbone's (BERT params are float32).
    dropout: train-mode dropout (StepConfig.dropout; BERT only: decoders train without it).
    mesh: {'data': n, 'fsdp': n, 'tensor': n} sizes (missing axes are 1).
  Returns:
    a MemoryPlan.
  """
  sizes = _mesh_sizes(mesh or {})
  if optimizer not in OPTIMIZERS:
    raise ValueError(f'optimizer {optimizer!r} is not one of {OPTIMIZERS}')
  if min(batch, query_len, doc_len) < 1 or hard_negatives < 0:
    raise ValueError(f'batch, query_len, doc_len must be >= 1 and hard_negatives >= 0, got '
                     f'{batch}, {query_len}, {doc_len}, {hard_negatives}')
  policy = spec.backbone.remat
  check_policy(policy)
  if param_dtype is None:
    param_dtype = getattr(spec.backbone, 'param_dtype', 'float32')
  batch_split = sizes['data'] * sizes['fsdp']
  tp = sizes['tensor']
  count, params, layer_params = _param_terms(spec, jnp.dtype(param_dtype),
                                             sizes['fsdp'] * tp)
  opt_state = 2 * params + 4 if optimizer == 'adamw' else 0
  rows = math.ceil(batch / batch_split)
  neg_rows = math.ceil(batch * hard_negatives / batch_split)
  batch_bytes = 4 * (2 * rows * query_len + 2 * rows * doc_len + 2 * neg_rows * doc_len + rows)
  global_cols = [(batch, query_len), (batch, doc_len)]
  if hard_negatives:
    global_cols.append((batch * hard_negatives, doc_len))
  per_device = [(math.ceil(r / batch_split), length) for r, length in global_cols]
  acts = {p: _activation_bytes(spec, per_device, p, layer_params, tp, dropout)
          for p in {policy, 'none', 'full'}}
  chunk = 0
  if grad_cache:
    chunk_rows = math.ceil((chunk_size or batch) / batch_split)
    # One column's chunk at a time: the largest sets the peak.
    largest = max(_activation_bytes(spec, [(min(chunk_rows, r), length)], policy, layer_params,
                                    tp, dropout) for r, length in per_device)
    cached = sum(2 * 4 * r * spec.embedding_dim for r, _ in global_cols)
    chunk = largest + cached
  if grad_cache or policy != 'none':
    # The accumulator of the gradient-cached scan, or the stacked layer gradient of a remat scan,
    # holds every gradient while activations are live.
    peak = params + (chunk if grad_cache else acts[policy])
  else:
    # Unrolled layers: the backward runs top-down, each layer's gradient appearing as its
    # activations are freed, so at the peak (the start of the backward) only the other gradients
    # (the embedding tables' scatter-add buffers) are live beside the activations.
    peak = max(params - layer_params + acts[policy], params)
  total = params + opt_state + batch_bytes + peak
  return MemoryPlan(params=params, gradients=params, optimizer_state=opt_state, batch=batch_bytes,
                    activations=acts[policy], activations_none=acts['none'],
                    activations_full=acts['full'], grad_cache_chunk=chunk, total=int(total),
                    param_count=count, remat=policy, grad_cache=grad_cache,
                    mesh=tuple(sizes.items()))


def memory_table(rows: Iterable[tuple[str, EmbedderSpec, dict[str, Any]]]) -> str:
  """Markdown table for docs: one line per (name, spec, plan_memory keyword arguments).

  Columns: model, mesh, remat, grad cache, params / optimizer state / activations (with the
  spec's remat, 'none', 'full') / total per device, in GiB.
  """
  gib = lambda x: f'{x / 2**30:.2f}'
  lines = ['| model | mesh (data x fsdp x tensor) | remat | grad cache | params | optimizer | '
           'activations | act. none | act. full | total GiB / device |',
           '|---|---|---|---|---:|---:|---:|---:|---:|---:|']
  for name, spec, kwargs in rows:
    plan = plan_memory(spec, **kwargs)
    mesh = dict(plan.mesh)
    act = plan.grad_cache_chunk if plan.grad_cache else plan.activations
    lines.append(f"| {name} | {mesh['data']} x {mesh['fsdp']} x {mesh['tensor']} | {plan.remat} | "
                 f"{'chunk ' + str(kwargs.get('chunk_size', 0)) if plan.grad_cache else 'no'} | "
                 f'{gib(plan.params)} | {gib(plan.optimizer_state)} | {gib(act)} | '
                 f'{gib(plan.activations_none)} | {gib(plan.activations_full)} | '
                 f'{gib(plan.total)} |')
  return '\n'.join(lines)
