"""Longer inputs for learned absolute positions (the BERT family): the position table stretched
by linear interpolation (LongEmbed's position interpolation for absolute embeddings).

Row i of a table stretched by s = new / old is the original table read at fractional position
i / s, linearly interpolated between its two neighbouring rows (the last row beyond the end), so
a text s times longer sees the position vectors of the original range, s times more finely
spaced. RoBERTa-style models keep their first ``position_offset`` rows (the padding positions)
as they are and stretch the rest.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from embedjax.models.bert import BertConfig


def interpolate_table(table, new_rows: int) -> np.ndarray:
  """(P, H) position table -> (new_rows, H), row i = the table at i * P / new_rows (float64 math,
  returned in the table's dtype)."""
  t = np.asarray(table, np.float64)
  p = t.shape[0]
  if new_rows < 1:
    raise ValueError(f'new_rows must be >= 1, got {new_rows}')
  x = np.arange(new_rows, dtype=np.float64) * p / new_rows
  lo = np.minimum(np.floor(x).astype(np.int64), p - 1)
  hi = np.minimum(lo + 1, p - 1)
  w = (x - lo)[:, None]
  return ((1 - w) * t[lo] + w * t[hi]).astype(np.asarray(table).dtype)


def extend_positions(params: dict, cfg: BertConfig, max_positions: int) -> tuple[dict, BertConfig]:
  """A BERT-family model whose position table covers ``max_positions`` tokens (interpolated).

  Returns (params with the new ``position_embeddings`` table, the config with
  ``max_position_embeddings`` raised); everything else is shared with the input. Exporting the
  result records the longer table and its length in config.json.
  """
  if max_positions < cfg.max_positions:
    raise ValueError(f'max_positions {max_positions} is shorter than the model\'s '
                     f'{cfg.max_positions}: nothing to extend')
  table = np.asarray(params['position_embeddings']['embedding'])
  keep, rest = table[:cfg.position_offset], table[cfg.position_offset:]
  stretched = np.concatenate([keep, interpolate_table(rest, max_positions)], axis=0)
  params = {**params, 'position_embeddings': {'embedding': jnp.asarray(stretched)}}
  cfg = dataclasses.replace(cfg, max_position_embeddings=max_positions + cfg.position_offset)
  return params, cfg
