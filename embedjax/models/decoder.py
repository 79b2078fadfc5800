"""A decoder-LLM backbone (Llama, Mistral, Qwen2, Qwen3) as a Flax (linen) module, for embedders.

One implementation covers the four families; they differ only in switches of
:class:`DecoderConfig`: Qwen2 puts biases on the q/k/v projections, Qwen3 RMS-normalises each
head's queries and keys before the rotation (and may set ``head_dim`` apart from
hidden / heads), Mistral may restrict causal attention to a sliding window, Llama may carry
biases (``attention_bias``, ``mlp_bias``). Rotary scaling for longer inputs (linear, dynamic NTK,
YaRN, Llama 3) is read from ``rope_scaling``: :mod:`embedjax.models.rope`; so is CLEX's learned
continuous scaling (``rope_type`` 'clex', :mod:`embedjax.models.clex`, parameters under
``rope_clex``): see :func:`clex_rotary`. ``position_encoding='seqpe'`` replaces the rotation by
SeqPE's learned digit encoder (:mod:`embedjax.models.seqpe`, parameters under ``seqpe``): its
vector for each token's position is added to the token embedding, and training adds its two
regularisers (:func:`auxiliary_loss`).

Each layer is pre-norm: ``x + attn(rms(x))`` then ``x + mlp(rms(x))`` with grouped-query attention
(``num_key_value_heads`` divides ``num_attention_heads``), rotary positions and a SwiGLU MLP
``down(silu(gate(x)) * up(x))``; a final RMSNorm gives the hidden states. No language-model head:
an embedder pools hidden states.

Attention modes (``attention``): 'causal' (as the model was pre-trained; last-token pooling
embedders such as Qwen3-Embedding) or 'bidirectional' (every token sees every token of its text:
NV-Embed, KaLM-Embedding-V2, LLM2Vec). Rows may be right-padded, left-padded, or packed with
several texts (``segment_ids`` 1..S, 0 = padding, ``position_ids`` restarting at 0 per text);
attention never crosses texts. Positions default to each token's index among its row's real
tokens, so a left-padded text gets the positions it would have unpadded (rotary attention depends
only on position differences, so this equals transformers' arange positions up to rounding).

Long inputs in bounded memory (``attention_block`` > 0): attention runs over blocks of that many
queries against every key, each block building its own (B, 1, block, L) mask, so no (L, L) array
exists and memory grows linearly with L (the XLA path; SelfExtend keeps its full logits).

Attention runs through ``jax.nn.dot_product_attention``. Which kernel a GPU gets
(``attention_impl``): 'xla' always works; 'cudnn' (bfloat16/float16 on NVIDIA GPUs) is used for
right-padded rows only, where the padding is expressed as per-row lengths (``is_causal`` plus
``key_value_seq_lengths``, and the sliding window as cuDNN's left window); left padding and packed
segments need an explicit (B, 1, L, L) mask, which cuDNN would take as a materialised bias, so they
fall back to XLA; 'auto' picks cuDNN exactly when it applies. See :func:`attention_path`.

Parameter names follow transformers' ``LlamaModel`` (``embed_tokens``, ``layers_{i}/self_attn/
q_proj`` ...), so import and export are a rename plus a transpose of kernels.

Shapes: ``input_ids``, ``segment_ids``, ``position_ids`` are (B, L) ints; the output is (B, L, H).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from embedjax.models.clex import clex_frequencies, init_clex
from embedjax.models.remat import apply_layers, check_policy
from embedjax.models import seqpe as seqpe_lib
from embedjax.models.rope import ROPE_TYPES, apply_rope, dynamic_frequencies
from embedjax.models.rope import rope_frequencies as _rope_table
from embedjax.models.self_extend import self_extend_attention

# HF model_type values this module implements.
DECODER_MODEL_TYPES = ('llama', 'mistral', 'qwen2', 'qwen3')
ATTENTION_MODES = ('causal', 'bidirectional')
ATTENTION_IMPLS = ('auto', 'xla', 'cudnn')
POSITION_ENCODINGS = ('rope', 'seqpe')
# SeqPE's settings (``seqpe`` overrides them): the encoder's width / heads / layers / digits and
# output temperature; the longest position it is trained for (max_factor x
# max_position_embeddings) and its regularisers' weights and sample sizes per step.
SEQPE_DEFAULTS = {'width': 64, 'heads': 4, 'layers': 2, 'max_digits': 5, 'temperature': 1.0,
                  'max_factor': 16, 'contrastive_weight': 0.1, 'contrastive_pivots': 32,
                  'contrastive_candidates': 16, 'transfer_weight': 0.1, 'transfer_groups': 8,
                  'transfer_size': 8}
# CLEX's rope_scaling fields (the reference's config.json names) and their defaults
CLEX_DEFAULTS = {'param_factor': 1, 'time_dt': 0.01, 'act': 'tanh'}
_ARCHITECTURES = {'llama': 'LlamaModel', 'mistral': 'MistralModel', 'qwen2': 'Qwen2Model',
                  'qwen3': 'Qwen3Model'}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture of a decoder backbone (field names follow HF ``config.json``)."""
  model_type: str = 'llama'
  vocab_size: int = 32000
  hidden_size: int = 512
  intermediate_size: int = 1376
  num_hidden_layers: int = 4
  num_attention_heads: int = 8
  num_key_value_heads: int = 8
  head_dim: int = 0                 # 0 = hidden_size // num_attention_heads
  max_position_embeddings: int = 2048
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  # HF rope_scaling / rope_parameters without rope_theta, as sorted (key, value) pairs (hashable);
  # () = plain rotary positions.
  rope_scaling: tuple = ()
  hidden_act: str = 'silu'
  attention_bias: bool = False      # biases on q/k/v/o (Llama option); Qwen2: q/k/v only
  mlp_bias: bool = False
  qk_norm: bool = False             # Qwen3: RMSNorm over head_dim on q and k
  sliding_window: int = 0           # Mistral: causal attention to the last N tokens; 0 = none
  tie_word_embeddings: bool = False
  pad_token_id: int = 0
  bos_token_id: int | None = None
  eos_token_id: int | None = None
  # embedjax's own fields (not in HF configs):
  attention: str = 'causal'         # one of ATTENTION_MODES
  attention_impl: str = 'auto'      # one of ATTENTION_IMPLS
  dtype: str = 'float32'            # compute dtype; params follow param_dtype
  param_dtype: str = 'float32'
  remat: str = 'none'               # per-layer rematerialisation (embedjax.models.remat)
  # SelfExtend (training-free, embedjax.models.self_extend): tokens farther apart than the window
  # attend with positions grouped by self_extend_group; 0 = off.
  self_extend_group: int = 0
  self_extend_window: int = 0
  # Blocked attention: queries per block (0 = off); memory linear in the input's length.
  attention_block: int = 0
  # 'rope' (rotary positions) or 'seqpe' (SeqPE vectors added to the token embeddings instead);
  # seqpe: sorted (key, value) overrides of SEQPE_DEFAULTS.
  position_encoding: str = 'rope'
  seqpe: tuple = ()

  def __post_init__(self):
    if self.model_type not in DECODER_MODEL_TYPES:
      raise ValueError(f'model_type {self.model_type!r} is not one of {DECODER_MODEL_TYPES}')
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f'num_attention_heads {self.num_attention_heads} is not a multiple of '
                       f'num_key_value_heads {self.num_key_value_heads}')
    if not self.head_dim and self.hidden_size % self.num_attention_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not divisible by num_attention_heads '
                       f'{self.num_attention_heads} (and head_dim is not set)')
    if self.head_size % 2:
      raise ValueError(f'head_dim {self.head_size} must be even for rotary positions')
    if self.hidden_act != 'silu':
      raise ValueError(f'hidden_act {self.hidden_act!r} is not supported (only silu)')
    for name, value, allowed in (('attention', self.attention, ATTENTION_MODES),
                                 ('attention_impl', self.attention_impl, ATTENTION_IMPLS),
                                 ('dtype', self.dtype, ('float32', 'bfloat16')),
                                 ('param_dtype', self.param_dtype, ('float32', 'bfloat16'))):
      if value not in allowed:
        raise ValueError(f'{name} must be one of {allowed}, got {value!r}')
    rope = dict(self.rope_scaling)
    rope_type = rope.get('rope_type', 'default')
    if rope_type not in (*ROPE_TYPES, 'clex'):
      raise ValueError(f'rope_scaling type {rope_type!r} is not supported (supported: '
                       f'{", ".join((*ROPE_TYPES, "clex"))})')
    if rope_type == 'clex':
      _check_clex(rope)
    if self.position_encoding not in POSITION_ENCODINGS:
      raise ValueError(f'position_encoding must be one of {POSITION_ENCODINGS}, got '
                       f'{self.position_encoding!r}')
    unknown = sorted(set(dict(self.seqpe)) - set(SEQPE_DEFAULTS))
    if unknown:
      raise ValueError(f'seqpe: unknown settings {unknown} (known: {", ".join(SEQPE_DEFAULTS)})')
    if self.position_encoding == 'seqpe' and (self.rope_scaling or self.self_extend_group):
      raise ValueError('position_encoding seqpe has no rotation: rope_scaling and SelfExtend do '
                       'not apply')
    if self.attention_block < 0 or (self.attention_block and self.self_extend_group):
      raise ValueError(f'attention_block {self.attention_block}: a non-negative block size, and '
                       'not with SelfExtend (which builds its full (L, L) logits)')
    check_policy(self.remat)
    if bool(self.self_extend_group) != bool(self.self_extend_window) or (
        self.self_extend_group and (self.self_extend_group < 2
                                    or self.self_extend_window < self.self_extend_group)):
      raise ValueError(f'self_extend_group {self.self_extend_group} and self_extend_window '
                       f'{self.self_extend_window}: set both (group >= 2, window >= group) or '
                       'neither')
    if self.sliding_window and self.attention == 'bidirectional':
      raise ValueError(f'sliding_window {self.sliding_window} is defined for causal attention '
                       'only; bidirectional mode attends to the whole text (set sliding_window=0 '
                       'or keep texts shorter than the window)')

  @property
  def head_size(self) -> int:
    return self.head_dim or self.hidden_size // self.num_attention_heads

  @property
  def max_positions(self) -> int:
    """The longest input: max_position_embeddings, or for dynamic NTK (where that is the length
    scaling starts from) ``factor`` times it."""
    rope = dict(self.rope_scaling)
    if rope.get('rope_type') == 'dynamic':
      return int(self.max_position_embeddings * float(rope['factor']))
    if rope.get('rope_type') == 'clex':
      return int(self.max_position_embeddings * int(rope['max_factor']))
    if self.position_encoding == 'seqpe':  # any position with max_digits digits has a vector
      return 10 ** int(self.seqpe_settings['max_digits'])
    return self.max_position_embeddings

  @property
  def seqpe_settings(self) -> dict:
    return {**SEQPE_DEFAULTS, **dict(self.seqpe)}

  @property
  def clex_settings(self) -> dict:
    """CLEX's rope_scaling over CLEX_DEFAULTS (only for rope_type 'clex')."""
    return {**CLEX_DEFAULTS, **dict(self.rope_scaling)}

  @property
  def compute_dtype(self):
    return jnp.bfloat16 if self.dtype == 'bfloat16' else jnp.float32

  @property
  def params_dtype(self):
    return jnp.bfloat16 if self.param_dtype == 'bfloat16' else jnp.float32

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> 'DecoderConfig':
    """Builds a config from a HF ``config.json`` dict of a Llama / Mistral / Qwen2 / Qwen3 model.

    Reads rotary settings from ``rope_theta`` + ``rope_scaling`` (transformers 4) or
    ``rope_parameters`` (transformers 5). Unsupported features fail with the field's name.
    """
    model_type = hf.get('model_type')
    if model_type not in DECODER_MODEL_TYPES:
      raise ValueError(f'model_type {model_type!r} is not a supported decoder '
                       f'(supported: {", ".join(DECODER_MODEL_TYPES)})')
    rope = dict(hf.get('rope_parameters') or hf.get('rope_scaling') or {})
    theta = rope.pop('rope_theta', hf.get('rope_theta', 10000.0))
    if 'type' in rope and 'rope_type' not in rope:  # transformers' older key
      rope['rope_type'] = rope.pop('type')
    if rope.get('rope_type', 'default') == 'default':
      rope = {}
    if model_type in ('qwen2', 'qwen3') and hf.get('use_sliding_window'):
      raise ValueError(f'use_sliding_window: {model_type} sliding-window layers are not supported')
    layer_types = hf.get('layer_types') or []
    if any(t != 'full_attention' for t in layer_types):
      raise ValueError(f'layer_types: only full_attention layers are supported, got '
                       f'{sorted(set(layer_types))}')
    eos = hf.get('eos_token_id')
    kwargs = dict(
        model_type=model_type, vocab_size=hf['vocab_size'], hidden_size=hf['hidden_size'],
        intermediate_size=hf['intermediate_size'], num_hidden_layers=hf['num_hidden_layers'],
        num_attention_heads=hf['num_attention_heads'],
        num_key_value_heads=hf.get('num_key_value_heads') or hf['num_attention_heads'],
        head_dim=int(hf.get('head_dim') or 0),
        max_position_embeddings=hf.get('max_position_embeddings', 2048),
        rms_norm_eps=hf.get('rms_norm_eps', 1e-6), rope_theta=float(theta),
        rope_scaling=tuple(sorted((k, v) for k, v in rope.items() if v is not None)),
        hidden_act=hf.get('hidden_act', 'silu'),
        attention_bias=bool(hf.get('attention_bias', False)),
        mlp_bias=bool(hf.get('mlp_bias', False)), qk_norm=model_type == 'qwen3',
        sliding_window=int((hf.get('sliding_window') or 0) if model_type == 'mistral' else 0),
        tie_word_embeddings=bool(hf.get('tie_word_embeddings', False)),
        pad_token_id=hf.get('pad_token_id') if hf.get('pad_token_id') is not None else 0,
        bos_token_id=hf.get('bos_token_id'),
        eos_token_id=eos[0] if isinstance(eos, list) and eos else eos)
    if kwargs['head_dim'] == kwargs['hidden_size'] // kwargs['num_attention_heads']:
      kwargs['head_dim'] = 0
    if hf.get('attention', 'causal') != 'causal':  # embedjax's own field (see to_hf)
      kwargs['attention'] = hf['attention']
    if hf.get('position_encoding', 'rope') != 'rope':
      kwargs.update(position_encoding=hf['position_encoding'],
                    seqpe=tuple(sorted((hf.get('seqpe') or {}).items())))
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    """The HF ``config.json`` dict (transformers 4 and 5 both read it)."""
    hf = dict(model_type=self.model_type, architectures=[_ARCHITECTURES[self.model_type]],
              vocab_size=self.vocab_size, hidden_size=self.hidden_size,
              intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
              num_attention_heads=self.num_attention_heads,
              num_key_value_heads=self.num_key_value_heads, head_dim=self.head_size,
              max_position_embeddings=self.max_position_embeddings,
              rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta,
              rope_scaling=dict(self.rope_scaling) or None, hidden_act=self.hidden_act,
              tie_word_embeddings=self.tie_word_embeddings, pad_token_id=self.pad_token_id,
              bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
              initializer_range=0.02, use_cache=False, torch_dtype='float32')
    # embedjax's own fields. A bidirectional embedder keeps its attention when embedjax reads the
    # folder again; transformers' classes of these model types ignore the field and run causal.
    if self.attention != 'causal':
      hf['attention'] = self.attention
    if self.position_encoding == 'seqpe':  # transformers has no SeqPE
      hf.update(position_encoding='seqpe', seqpe=dict(self.seqpe))  # overrides of SEQPE_DEFAULTS
    if self.model_type == 'llama':
      hf.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
    if self.model_type == 'mistral':
      hf['sliding_window'] = self.sliding_window or None
    if self.model_type in ('qwen2', 'qwen3'):
      hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=0)
    if self.model_type == 'qwen3':
      hf['attention_bias'] = self.attention_bias
    return hf


def _check_clex(rope: dict) -> None:
  """CLEX's rope_scaling: ``max_factor`` (an integer >= 2: the largest scale, in multiples of
  max_position_embeddings), and optionally param_factor, time_dt, act (CLEX_DEFAULTS)."""
  factor = rope.get('max_factor')
  if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
    raise ValueError(f'rope_scaling clex: max_factor must be an integer >= 2, got {factor!r}')
  unknown = sorted(set(rope) - {'rope_type', 'max_factor', *CLEX_DEFAULTS})
  if unknown:
    raise ValueError(f'rope_scaling clex: unknown fields {unknown} (known: max_factor, '
                     f'{", ".join(CLEX_DEFAULTS)})')
  settings = {**CLEX_DEFAULTS, **rope}
  if settings['act'] not in ('tanh', 'silu') or float(settings['time_dt']) <= 0 or int(
      settings['param_factor']) < 1:
    raise ValueError(f'rope_scaling clex: act tanh or silu, time_dt > 0, param_factor >= 1; got '
                     f'{settings}')


# Random-init shapes by name (``model.init='random:NAME'``), after public configs of their class:
# a tiny one that trains in minutes on a CPU, a 0.1B one for benchmarks, Qwen3-0.6B and
# Llama-3-8B. A run builds them with its tokenizer (at least that tokenizer's vocabulary).
NAMED_SHAPES = {
    'decoder-tiny': dict(model_type='qwen3', hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         qk_norm=True, max_position_embeddings=512, rope_theta=1e6),
    # a distillation student of a third of all-MiniLM-L6-v2's parameters with MiniLM's
    # vocabulary (5.9M of its 7.2M are the word embeddings), rotary positions to 512 tokens
    'decoder-leaf': dict(model_type='qwen3', hidden_size=192, intermediate_size=512,
                         num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=1,
                         head_dim=64, qk_norm=True, max_position_embeddings=512, rope_theta=1e4),
    'decoder-0.1b': dict(model_type='llama', vocab_size=32000, hidden_size=768,
                         intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                         num_key_value_heads=4, max_position_embeddings=2048, rope_theta=5e5),
    'qwen3-0.6b': dict(model_type='qwen3', vocab_size=151669, hidden_size=1024,
                       intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, qk_norm=True,
                       max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True),
    'llama-8b': dict(model_type='llama', vocab_size=128256, hidden_size=4096,
                     intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, max_position_embeddings=8192, rope_theta=5e5,
                     rms_norm_eps=1e-5),
}


def rope_frequencies(cfg: DecoderConfig) -> tuple[np.ndarray, float]:
  """(inverse frequencies (head_dim / 2,) float64, cos / sin scaling) of cfg's rotary table
  (:func:`embedjax.models.rope.rope_frequencies`; for 'dynamic', the table up to
  max_position_embeddings)."""
  return _rope_table(cfg.rope_theta, cfg.head_size, cfg.rope_scaling, cfg.max_position_embeddings)


def rotary_table(cfg: DecoderConfig, positions: jax.Array) -> tuple[Any, float]:
  """(inverse frequencies, scaling) for a batch at ``positions`` (B, L): dynamic NTK depends on the
  batch's longest text (its largest position + 1), every other type is static (CLEX's learned
  table is :func:`clex_rotary`)."""
  rope = dict(cfg.rope_scaling)
  if rope.get('rope_type') == 'dynamic':
    return dynamic_frequencies(cfg.rope_theta, cfg.head_size, float(rope['factor']),
                               cfg.max_position_embeddings, jnp.max(positions) + 1), 1.0
  return rope_frequencies(cfg)


class RMSNorm(nn.Module):
  """x / rms(x) * weight over the last axis, computed in float32 (as transformers does)."""
  eps: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    weight = self.param('weight', nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    dtype = x.dtype
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return weight.astype(dtype) * x.astype(dtype)


def _dense(features: int, cfg: DecoderConfig, name: str, bias: bool) -> nn.Dense:
  return nn.Dense(features, use_bias=bias, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                  kernel_init=nn.initializers.normal(0.02), name=name)


def attention_path(cfg: DecoderConfig, *, packed: bool, left_padded: bool) -> str:
  """'cudnn' or 'xla': the kernel ``jax.nn.dot_product_attention`` gets for these rows.

  cuDNN applies to right-padded unpacked rows in bfloat16 on a GPU (padding as per-row lengths);
  left padding, packed segments and blocked attention need a general mask and take XLA.
  """
  if cfg.attention_impl == 'xla' or packed or left_padded or cfg.attention_block:
    return 'xla'
  if cfg.attention_impl == 'cudnn':
    return 'cudnn'
  on_gpu = jax.default_backend() == 'gpu'
  return 'cudnn' if on_gpu and cfg.compute_dtype == jnp.bfloat16 else 'xla'


def clex_rotary(cfg: DecoderConfig, params: dict, positions: jax.Array,
                key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """CLEX's (inverse frequencies (D/2,), rotary positions (B, L)) for a batch.

  Inference (``key`` None), as the reference: the scale t = ceil(n / L_train) for the batch's
  longest text of n tokens (its largest position + 1), clipped to [1, max_factor]; positions
  unchanged. Training (a step's key): t drawn uniformly from the integers 1..max_factor and each
  text's positions spread over t times its length, as if it were a t-times longer text: position
  p > 0 becomes p t + u with u uniform in 0..t-1 (so they stay distinct and increasing; the
  reference draws a uniform sorted subset of the long range instead), position 0 stays 0.
  """
  rope = cfg.clex_settings
  max_t, trained = int(rope['max_factor']), cfg.max_position_embeddings
  if key is None:
    n = jnp.max(positions) + 1
    t = jnp.clip(-(-n // trained), 1, max_t)
  else:
    k_t, k_u = jax.random.split(key)
    t = jax.random.randint(k_t, (), 1, max_t + 1)
    jitter = jax.random.randint(k_u, positions.shape, 0, t)
    positions = jnp.where(positions > 0, positions * t + jitter, 0)
  inv_freq = clex_frequencies(params, t.astype(jnp.float32), theta=cfg.rope_theta,
                              head_dim=cfg.head_size, max_t=float(max_t),
                              time_dt=float(rope['time_dt']), act=rope['act'])
  return inv_freq, positions


def seqpe_tree(params: dict) -> dict:
  """SeqPE's params with its list of blocks as a dict (``block_0``...): a params tree of dicts."""
  return {**{k: v for k, v in params.items() if k != 'blocks'},
          'blocks': {f'block_{i}': b for i, b in enumerate(params['blocks'])}}


def _seqpe_params(tree: dict) -> dict:
  blocks = tree['blocks']
  return {**tree, 'blocks': [blocks[f'block_{i}'] for i in range(len(blocks))]}


def init_position_module(cfg: DecoderConfig, module: str, key: jax.Array) -> dict:
  """Fresh params of a learned position module: 'rope_clex' (CLEX's dynamics, untrained) or
  'seqpe' (SeqPE's encoder as a tree of dicts, :func:`seqpe_tree`)."""
  if module == 'rope_clex':
    return init_clex(key, cfg.head_size, int(cfg.clex_settings['param_factor']))
  st = cfg.seqpe_settings
  return seqpe_tree(seqpe_lib.init_seqpe(key, width=st['width'], heads=st['heads'],
                                         layers=st['layers'], max_digits=st['max_digits'],
                                         out_dim=cfg.hidden_size))


def seqpe_vectors(cfg: DecoderConfig, tree: dict, positions: jax.Array) -> jax.Array:
  """(B, L, H) SeqPE vectors of (B, L) positions (the digits computed in the graph)."""
  st = cfg.seqpe_settings
  digits, mask = seqpe_lib.traced_digits(positions.reshape(-1), int(st['max_digits']))
  out = seqpe_lib.encode_positions(_seqpe_params(tree), digits, mask, heads=int(st['heads']),
                                   temperature=float(st['temperature']))
  return out.reshape(positions.shape + (out.shape[-1],))


def seqpe_regularisers(cfg: DecoderConfig, tree: dict, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """SeqPE's (contrastive, transfer) losses on positions drawn with ``key`` over the range it is
  trained for, R = max_factor x max_position_embeddings (at most 10^max_digits):

  - contrastive: ``contrastive_pivots`` pivots and ``contrastive_candidates`` candidates each,
    uniform in [0, R); the candidate nearest its pivot must score highest;
  - transfer: ``transfer_groups`` groups of ``transfer_size`` positions uniform in the trained
    range [0, L), and the same groups moved by one offset each, uniform in [L, R - L), whose
    similarity distributions must agree.
  """
  st = cfg.seqpe_settings
  trained = cfg.max_position_embeddings
  top = min(int(st['max_factor']) * trained, 10 ** int(st['max_digits']))
  kp, kc, kt, ko = jax.random.split(key, 4)
  pivots = jax.random.randint(kp, (int(st['contrastive_pivots']),), 0, top)
  cands = jax.random.randint(kc, (int(st['contrastive_pivots']), int(st['contrastive_candidates'])),
                             0, top)
  labels = jnp.argmin(jnp.abs(cands - pivots[:, None]), axis=1)
  groups, size = int(st['transfer_groups']), int(st['transfer_size'])
  in_range = jax.random.randint(kt, (groups, size), 0, trained)
  offset = jax.random.randint(ko, (groups, 1), trained, max(top - trained, trained + 1))
  # every drawn position through the encoder at once (one encoder in the compiled step, not four)
  parts = (pivots, cands, in_range, in_range + offset)
  flat = seqpe_vectors(cfg, tree, jnp.concatenate([x.reshape(-1) for x in parts])[None])[0]
  sizes = [x.size for x in parts]
  ends = [sum(sizes[:i + 1]) for i in range(len(sizes))]
  v_piv, v_cand, v_in, v_moved = (flat[e - n:e].reshape(x.shape + (-1,))
                                  for x, n, e in zip(parts, sizes, ends))
  contrastive = seqpe_lib.contrastive_loss(v_piv, v_cand, labels)
  transfer = seqpe_lib.transfer_loss(v_in, v_moved)
  return contrastive, transfer


def _mask_rows(segment_ids: jax.Array, query_segments: jax.Array, query_index: jax.Array,
               causal: bool, window: int) -> jax.Array:
  """(B, 1, Q, L) bool for Q queries (their segments (B, Q) and indices (Q,)) against all L keys:
  :func:`attention_mask`'s rule, for the whole input or one block of queries."""
  seg = segment_ids
  kidx = jnp.arange(seg.shape[1])
  qidx = query_index[None, :, None]
  same = (query_segments[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
  if causal:
    same &= qidx >= kidx[None, None, :]
  if window:
    same &= qidx - kidx[None, None, :] < window
  pad_self = (query_segments[:, :, None] == 0) & (qidx == kidx[None, None, :])
  return (same | pad_self)[:, None]


def attention_mask(segment_ids: jax.Array, causal: bool, window: int = 0) -> jax.Array:
  """(B, 1, L, L) bool: query i may attend to key j (same text, not padding; j <= i when causal;
  i - j < window when a sliding window is set). A padding query attends to itself only, so no
  softmax is over an empty set (its output is ignored by pooling)."""
  return _mask_rows(segment_ids, segment_ids, jnp.arange(segment_ids.shape[1]), causal, window)


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *,
                      causal: bool, window: int, block: int) -> jax.Array:
  """Attention over blocks of ``block`` queries: q (B, L, N, D) rotated, k / v (B, L, K, D) (K
  divides N), segment_ids (B, L). Equals ``dot_product_attention`` with :func:`attention_mask`;
  the largest temporary is one block's (B, N, block, L) logits. Returns (B, L, N, D)."""
  b, l, n, d = q.shape
  pad = -l % block
  blocks = (l + pad) // block
  qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  # padded queries (past L) take the last index and segment 0: they attend to key L-1 alone
  # (a finite output, sliced away)
  qseg = jnp.pad(segment_ids, ((0, 0), (0, pad)))
  qidx = jnp.minimum(jnp.arange(l + pad), l - 1)
  q_blocks = qp.reshape(b, blocks, block, n, d).transpose(1, 0, 2, 3, 4)
  s_blocks = qseg.reshape(b, blocks, block).transpose(1, 0, 2)
  i_blocks = qidx.reshape(blocks, block)

  def one(args):
    qb, sb, ib = args
    mask = _mask_rows(segment_ids, sb, ib, causal, window)
    return jax.nn.dot_product_attention(qb, k, v, mask=mask, implementation='xla')

  out = jax.lax.map(one, (q_blocks, s_blocks, i_blocks))   # (blocks, B, block, N, D)
  return out.transpose(1, 0, 2, 3, 4).reshape(b, l + pad, n, d)[:, :l]


class DecoderAttention(nn.Module):
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x, positions, mask, kv_lengths, path: str, rotary, segment_ids):
    """x: (B, L, H); positions (B, L); either mask (B, 1, L, L) bool, or kv_lengths (B,) for
    right-padded rows, or neither for blocked attention (over ``segment_ids`` (B, L)); path: the
    kernel for the lengths form ('xla' or 'cudnn'); rotary: (inverse frequencies, scaling)."""
    cfg = self.cfg
    b, l, _ = x.shape
    d, heads, kv_heads = cfg.head_size, cfg.num_attention_heads, cfg.num_key_value_heads
    qkv_bias = cfg.attention_bias or cfg.model_type == 'qwen2'
    q = _dense(heads * d, cfg, 'q_proj', qkv_bias)(x).reshape(b, l, heads, d)
    k = _dense(kv_heads * d, cfg, 'k_proj', qkv_bias)(x).reshape(b, l, kv_heads, d)
    v = _dense(kv_heads * d, cfg, 'v_proj', qkv_bias)(x).reshape(b, l, kv_heads, d)
    if cfg.qk_norm:
      q = RMSNorm(cfg.rms_norm_eps, cfg.params_dtype, name='q_norm')(q)
      k = RMSNorm(cfg.rms_norm_eps, cfg.params_dtype, name='k_norm')(k)
    if rotary is not None:
      inv_freq, scaling = rotary
    if cfg.self_extend_group:  # merged neighbour / grouped logits (always the mask form)
      out = self_extend_attention(q, k, v, positions, mask, inv_freq, scaling,
                                  group=cfg.self_extend_group, window=cfg.self_extend_window)
      return _dense(cfg.hidden_size, cfg, 'o_proj', cfg.attention_bias and cfg.model_type != 'qwen2')(
          out.reshape(b, l, heads * d))
    if rotary is not None:  # SeqPE's positions entered with the embeddings
      q, k = apply_rope(q, positions, inv_freq, scaling), apply_rope(k, positions, inv_freq, scaling)
    if cfg.attention_block:
      out = blocked_attention(q, k, v, segment_ids, causal=cfg.attention == 'causal',
                              window=cfg.sliding_window, block=cfg.attention_block)
    elif mask is None:  # right-padded rows: padding as per-row lengths (the form cuDNN takes)
      window = (cfg.sliding_window - 1, 0) if cfg.sliding_window else None
      out = jax.nn.dot_product_attention(q, k, v, is_causal=cfg.attention == 'causal',
                                         query_seq_lengths=kv_lengths,
                                         key_value_seq_lengths=kv_lengths,
                                         local_window_size=window, implementation=path)
    else:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation='xla')
    o_bias = cfg.attention_bias and cfg.model_type != 'qwen2'
    return _dense(cfg.hidden_size, cfg, 'o_proj', o_bias)(out.reshape(b, l, heads * d))


class DecoderLayer(nn.Module):
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x, positions, mask, kv_lengths, path: str, rotary, segment_ids):
    cfg = self.cfg
    h = RMSNorm(cfg.rms_norm_eps, cfg.params_dtype, name='input_layernorm')(x)
    x = x + DecoderAttention(cfg, name='self_attn')(h, positions, mask, kv_lengths, path, rotary,
                                                    segment_ids)
    h = RMSNorm(cfg.rms_norm_eps, cfg.params_dtype, name='post_attention_layernorm')(x)
    return x + DecoderMLP(cfg, name='mlp')(h)


class DecoderMLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)), (B, L, H) -> (B, L, H)."""
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    gate = _dense(cfg.intermediate_size, cfg, 'gate_proj', cfg.mlp_bias)
    up = _dense(cfg.intermediate_size, cfg, 'up_proj', cfg.mlp_bias)
    down = _dense(cfg.hidden_size, cfg, 'down_proj', cfg.mlp_bias)
    return down(jax.nn.silu(gate(x)) * up(x))


def token_positions(segment_ids: jax.Array) -> jax.Array:
  """(B, L) position of each token within its text (0 at padding): left padding gets the
  positions its text would have unpadded; packed texts restart at 0."""
  seg = segment_ids
  new = jnp.concatenate([jnp.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  idx = jnp.broadcast_to(jnp.arange(seg.shape[1]), seg.shape)
  start = jax.lax.cummax(jnp.where(new, idx, 0), axis=1)
  return jnp.where(seg > 0, idx - start, 0).astype(jnp.int32)


class Decoder(nn.Module):
  """Decoder backbone: token embeddings -> N pre-norm layers -> final RMSNorm -> (B, L, H)."""
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, input_ids, segment_ids, position_ids=None, *, packed: bool = False,
               left_padded: bool = False, output_hidden_states: bool = False):
    """Encodes token ids.

    Args:
      input_ids: (B, L) int token ids. segment_ids: (B, L) int, the attention mask for one text
        per row (1 = token, 0 = padding), or 1..S numbering packed texts.
      position_ids: optional (B, L); default :func:`token_positions`.
      packed: rows hold several texts (static; decides the attention kernel).
      left_padded: rows are padded on the left (static; decides the attention kernel).
      output_hidden_states: also return the embedding output and every layer's output.
    Returns:
      (B, L, H) final hidden states in the compute dtype, or (last, tuple of L + 1 states).
    """
    cfg = self.cfg
    chex.assert_rank([input_ids, segment_ids], 2)
    chex.assert_equal_shape([input_ids, segment_ids])
    if position_ids is None:
      position_ids = token_positions(segment_ids)
    path = attention_path(cfg, packed=packed, left_padded=left_padded)
    if cfg.attention_block:  # each block of queries builds its own mask
      mask = kv_lengths = None
    elif packed or left_padded or cfg.self_extend_group:
      mask = attention_mask(segment_ids, cfg.attention == 'causal', cfg.sliding_window)
      kv_lengths = None
    else:  # the same arguments on every backend, so CPU tests check what cuDNN receives
      mask, kv_lengths = None, (segment_ids > 0).sum(axis=1).astype(jnp.int32)
    table = self.param('embed_tokens', nn.initializers.normal(0.02),
                       (cfg.vocab_size, cfg.hidden_size), cfg.params_dtype)
    x = jnp.take(table, input_ids, axis=0, mode='clip').astype(cfg.compute_dtype)
    if cfg.position_encoding == 'seqpe':
      enc = self.param('seqpe', lambda k: init_position_module(cfg, 'seqpe', k))
      x = x + seqpe_vectors(cfg, enc, position_ids).astype(x.dtype)
      rotary = None
    elif dict(cfg.rope_scaling).get('rope_type') == 'clex':  # one learned table for every layer
      clex = self.param('rope_clex', lambda k: init_position_module(cfg, 'rope_clex', k))
      key = self.make_rng('positions') if self.has_rng('positions') else None
      inv_freq, position_ids = clex_rotary(cfg, clex, position_ids, key)
      rotary = (inv_freq, 1.0)
    else:
      rotary = rotary_table(cfg, position_ids)
    out = apply_layers(self, lambda **kw: DecoderLayer(cfg, **kw), cfg.num_hidden_layers,
                       lambda i: f'layers_{i}', x,
                       (position_ids, mask, kv_lengths, path, rotary, segment_ids),
                       policy=cfg.remat, keep_states=output_hidden_states)
    last = out[0] if output_hidden_states else out
    last_normed = RMSNorm(cfg.rms_norm_eps, cfg.params_dtype, name='norm')(last)
    if output_hidden_states:
      # transformers' last hidden state is after the final norm
      return last_normed, (x, *out[1][:-1], last_normed)
    return last_normed


def hf_layout(cfg: DecoderConfig) -> list[tuple[str, tuple[str, ...], bool]]:
  """(HF tensor name, flax param path, transpose?) of every parameter (``LlamaModel`` names)."""
  rows = [('embed_tokens.weight', ('embed_tokens',), False), ('norm.weight', ('norm', 'weight'),
                                                              False)]
  if cfg.position_encoding == 'seqpe':  # embedjax's own names: seqpe.<path in its tree>
    shapes = jax.eval_shape(lambda: init_position_module(cfg, 'seqpe', jax.random.key(0)))
    for path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]:
      keys = ('seqpe', *(k.key for k in path))
      rows.append(('.'.join(keys), keys, False))
  if dict(cfg.rope_scaling).get('rope_type') == 'clex':  # the reference's CLEX model names
    rows += [('clex_layer.proj_func.ode_up_proj', ('rope_clex', 'up'), False),
             ('clex_layer.proj_func.ode_down_proj', ('rope_clex', 'down'), False)]
  qkv_bias = cfg.attention_bias or cfg.model_type == 'qwen2'
  o_bias = cfg.attention_bias and cfg.model_type != 'qwen2'
  for i in range(cfg.num_hidden_layers):
    p, f = f'layers.{i}.', f'layers_{i}'
    rows += [(p + 'input_layernorm.weight', (f, 'input_layernorm', 'weight'), False),
             (p + 'post_attention_layernorm.weight', (f, 'post_attention_layernorm', 'weight'),
              False)]
    for proj, bias in (('q_proj', qkv_bias), ('k_proj', qkv_bias), ('v_proj', qkv_bias),
                       ('o_proj', o_bias)):
      rows.append((f'{p}self_attn.{proj}.weight', (f, 'self_attn', proj, 'kernel'), True))
      if bias:
        rows.append((f'{p}self_attn.{proj}.bias', (f, 'self_attn', proj, 'bias'), False))
    if cfg.qk_norm:
      rows += [(f'{p}self_attn.q_norm.weight', (f, 'self_attn', 'q_norm', 'weight'), False),
               (f'{p}self_attn.k_norm.weight', (f, 'self_attn', 'k_norm', 'weight'), False)]
    for proj in ('gate_proj', 'up_proj', 'down_proj'):
      rows.append((f'{p}mlp.{proj}.weight', (f, 'mlp', proj, 'kernel'), True))
      if cfg.mlp_bias:
        rows.append((f'{p}mlp.{proj}.bias', (f, 'mlp', proj, 'bias'), False))
  return rows


def init_decoder_params(cfg: DecoderConfig, key: jax.Array):
  """Random-init params (N(0, 0.02) kernels and embeddings, unit norms) for a config."""
  dummy = np.zeros((1, 4), np.int32)
  return Decoder(cfg).init(key, dummy, np.ones_like(dummy))['params']


def auxiliary_loss(params, cfg: DecoderConfig, key: jax.Array):
  """The decoder's training regulariser given its params and a step key, or None (the hook
  :func:`embedjax.models.embedder.auxiliary_loss` calls): SeqPE's weighted contrastive and
  transfer losses (:func:`seqpe_regularisers`); nothing for every other setting."""
  if cfg.position_encoding != 'seqpe':
    return None
  st = cfg.seqpe_settings
  contrastive, transfer = seqpe_regularisers(cfg, params['seqpe'], key)
  return st['contrastive_weight'] * contrastive + st['transfer_weight'] * transfer
