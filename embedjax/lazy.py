"""Lazy package attributes (PEP 562), so that ``import embedjax`` stays cheap.

A package lists its public names and the submodule each lives in; the submodule is imported on
first access of one of its names (``embedjax.search.topk_blocked`` imports
``embedjax.search.exact``), and the value is then cached in the package's namespace. Importing
jax alone takes over a second, so only what is used gets imported.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable, Mapping


def lazy_exports(namespace: dict[str, Any], attributes: Mapping[str, str] | None = None,
                 submodules: Iterable[str] = ()) -> tuple[Callable[[str], Any], Callable[[], list]]:
  """``(__getattr__, __dir__)`` for a package module.

  Args:
    namespace: the package's ``globals()`` (resolved values are cached there).
    attributes: {public name: submodule name relative to the package} for names defined in a
      submodule, e.g. ``{'topk_blocked': 'exact'}``.
    submodules: names of submodules (or subpackages) exported as themselves.
  """
  package = namespace['__name__']
  attributes = dict(attributes or {})
  submodules = frozenset(submodules)
  clash = sorted(set(attributes) & submodules)
  if clash:
    raise ValueError(f'{package}: {clash} listed both as attributes and as submodules')

  def __getattr__(name: str) -> Any:
    if name in submodules:
      value = importlib.import_module(f'{package}.{name}')
    elif name in attributes:
      value = getattr(importlib.import_module(f'{package}.{attributes[name]}'), name)
    else:
      raise AttributeError(f'module {package!r} has no attribute {name!r}')
    namespace[name] = value
    return value

  def __dir__() -> list[str]:
    return sorted(set(namespace) | set(attributes) | submodules)

  return __getattr__, __dir__
