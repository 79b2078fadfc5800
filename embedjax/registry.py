"""Selecting things by name: plain dicts, one lookup, one error that lists the choices.

Every family that is chosen by name (quantizers, losses, searches, eval tasks, similarity
functions) keeps a plain ``dict`` built at import, e.g. ``LOSSES = {'info_nce': info_nce}``, and
looks names up through :func:`lookup`, so a misspelt name always fails the same way: one line
naming the family, the name, every choice and the closest one::

  unknown loss 'info_nse'; choose from info_nce (closest: info_nce)

There is no registration API: to add an entry, add it to the dict.
"""

from __future__ import annotations

from typing import Iterable, Mapping, TypeVar

V = TypeVar('V')


class UnknownNameError(ValueError):
  """A name missing from a table; the message lists the choices and the closest one."""


def unknown_name(kind: str, name, choices: Iterable[str]) -> UnknownNameError:
  """The one-line error for ``name`` missing from ``choices`` (a family of ``kind``)."""
  # embedjax.config brings in ml_collections and absl: imported here, on the error path only.
  from embedjax.config import closest
  choices = list(choices)
  hint = closest(name, choices) if isinstance(name, str) else ''
  return UnknownNameError(f'unknown {kind} {name!r}; choose from {", ".join(choices)}{hint}')


def lookup(table: Mapping[str, V], name: str, kind: str) -> V:
  """``table[name]``, or :class:`UnknownNameError` listing ``table``'s keys."""
  try:
    return table[name]
  except (KeyError, TypeError):  # TypeError: an unhashable name such as a list
    raise unknown_name(kind, name, table) from None
