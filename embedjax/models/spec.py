"""What defines an embedding model besides its weights: plain, frozen dataclasses.

Kept apart from the Hugging Face import/export (``embedjax.models.pretrained``) so that code that
only builds or runs a model (embedder, train step, benchmarks) does not depend on the file formats.
"""

from __future__ import annotations

import dataclasses

from embedjax.models.bert import BertConfig
from embedjax.models.pooling import POOLING_MODES


@dataclasses.dataclass(frozen=True)
class EmbedderSpec:
  """Everything besides weights that defines an embedding model."""
  bert: BertConfig
  pooling: str = 'mean'          # one of POOLING_MODES
  normalize: bool = True         # L2-normalise the pooled vector
  max_seq_length: int = 256      # tokens per text, special tokens included

  def __post_init__(self):
    if self.pooling not in POOLING_MODES:
      raise ValueError(f'pooling {self.pooling!r} is not one of {POOLING_MODES}')
    if self.max_seq_length > self.bert.max_position_embeddings:
      raise ValueError(f'max_seq_length {self.max_seq_length} exceeds max_position_embeddings '
                       f'{self.bert.max_position_embeddings}')
