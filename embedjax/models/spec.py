"""What defines an embedding model besides its weights: plain, frozen dataclasses.

Kept apart from the Hugging Face import/export (``embedjax.models.pretrained``) so that code that
only builds or runs a model (embedder, train step, benchmarks) does not depend on the file formats.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING

from embedjax.models.bert import BertConfig
from embedjax.models.pooling import POOLING_MODES

if TYPE_CHECKING:  # the decoder module is imported only by code that builds or runs a decoder
  from embedjax.models.decoder import DecoderConfig

# Activations a Dense head may apply after its linear map (sentence-transformers' Dense default is
# tanh). The names are embedjax's; the sentence-transformers folder reader maps torch class names.
DENSE_ACTIVATIONS = ('identity', 'tanh', 'relu', 'gelu', 'sigmoid', 'silu')


@dataclasses.dataclass(frozen=True)
class DenseSpec:
  """A linear layer (+ activation) applied to the pooled vector: (B, in_features) -> (B, out_features).

  Its params live in the model's params pytree under ``dense_{i}`` as {'kernel': (in, out),
  'bias': (out,)} (no 'bias' when ``bias`` is False).
  """
  in_features: int
  out_features: int
  bias: bool = True
  activation: str = 'tanh'

  def __post_init__(self):
    if self.activation not in DENSE_ACTIVATIONS:
      raise ValueError(f'dense activation {self.activation!r} is not one of {DENSE_ACTIVATIONS}')
    if self.in_features < 1 or self.out_features < 1:
      raise ValueError(f'dense features must be positive, got {self.in_features} -> {self.out_features}')


@dataclasses.dataclass(frozen=True)
class EmbedderSpec:
  """Everything besides weights that defines an embedding model.

  The forward is: backbone -> pooling -> each of ``dense`` in order -> L2 normalisation (if
  ``normalize``), as a sentence-transformers Transformer, Pooling, Dense..., Normalize stack. The
  backbone is a BERT-family encoder (``bert``) or a decoder LLM (``decoder``): exactly one is set.
  ``pooling='latent_attention'`` (NV-Embed) keeps its params under ``latent_attention`` in the
  model's pytree and needs ``latent_heads``.
  """
  bert: BertConfig | None = None
  pooling: str = 'mean'          # one of POOLING_MODES or 'latent_attention'
  normalize: bool = True         # L2-normalise the final vector
  max_seq_length: int = 256      # tokens per text, special tokens included
  dense: tuple[DenseSpec, ...] = ()  # layers applied after pooling, in order
  include_prompt: bool = True    # False: a prompt's tokens are attended to but left out of pooling
  decoder: DecoderConfig | None = None
  latent_heads: int = 0          # attention heads of latent-attention pooling

  def __post_init__(self):
    if (self.bert is None) == (self.decoder is None):
      raise ValueError('an EmbedderSpec needs exactly one backbone: bert or decoder')
    if self.pooling not in POOLING_MODES + ('latent_attention',):
      raise ValueError(f'pooling {self.pooling!r} is not one of '
                       f'{POOLING_MODES + ("latent_attention",)}')
    if self.pooling == 'latent_attention' and self.latent_heads < 1:
      raise ValueError('pooling latent_attention needs latent_heads >= 1')
    if self.max_seq_length > self.backbone.max_positions:
      raise ValueError(f'max_seq_length {self.max_seq_length} exceeds the '
                       f'{self.backbone.max_positions} positions of the model '
                       f'(max_position_embeddings {self.backbone.max_position_embeddings})')
    width = self.backbone.hidden_size
    for i, layer in enumerate(self.dense):
      if layer.in_features != width:
        raise ValueError(f'dense[{i}] takes {layer.in_features} features, but its input has {width}')
      width = layer.out_features

  @property
  def embedding_dim(self) -> int:
    """Width of the final embedding (the last Dense layer's output, else the encoder's)."""
    return self.dense[-1].out_features if self.dense else self.backbone.hidden_size

  @property
  def backbone(self) -> BertConfig | DecoderConfig:
    """The encoder's or decoder's config, whichever this model has."""
    return self.bert if self.bert is not None else self.decoder


def is_decoder_config(cfg) -> bool:
  """Whether ``cfg`` is a :class:`~embedjax.models.decoder.DecoderConfig`, without importing the
  decoder module: none can exist before that module is loaded. (BERT-family code paths never load
  it, so a change to the decoder does not touch what they ran.)"""
  module = sys.modules.get('embedjax.models.decoder')
  return module is not None and isinstance(cfg, module.DecoderConfig)
