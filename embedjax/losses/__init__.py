"""Embedding losses: pure functions ``(q, d, ...) -> (scalar, metrics dict)``.

  LOSSES       {name: loss function}; a config's ``loss.name`` is one of its keys
  get(name)    LOSSES[name], or a one-line error listing the choices and the closest one
  names()      the keys of LOSSES
  matryoshka   wraps any loss of LOSSES into its sum over truncated dimensions
"""

from __future__ import annotations

from typing import Callable

from embedjax.losses.contrastive import DEFAULT_SCALE, SIMILARITIES, cosine_matrix, info_nce
from embedjax.losses.matryoshka import matryoshka, truncate_and_renormalize
from embedjax.registry import lookup

LOSSES: dict[str, Callable] = {'info_nce': info_nce}


def get(name: str) -> Callable:
  """The loss function called ``name``, e.g. ``get('info_nce')``."""
  return lookup(LOSSES, name, 'loss')


def names() -> tuple[str, ...]:
  """Names accepted by :func:`get`."""
  return tuple(LOSSES)


__all__ = ['DEFAULT_SCALE', 'LOSSES', 'SIMILARITIES', 'cosine_matrix', 'get', 'info_nce',
           'matryoshka', 'names', 'truncate_and_renormalize']
