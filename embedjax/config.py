"""One way in for every config: ``embedjax train`` and every ``experiments/*.py``.

A run is configured by a config file (``configs/NAME.py[:arg]``, whose ``get_config(arg)`` returns a
ConfigDict declaring every field) plus command-line overrides, parsed by ml_collections'
``config_flags`` into a *locked* config (no field can be added by a typo):

  --config configs/x.py:arg   --config.optim.lr=1e-5   --config.optim.lr 1e-5

An unknown field is a one-line :class:`ConfigError` naming the closest valid field; a value of the
wrong type names the expected type. Scripts end in ``sys.exit(run_main(main, 'configs/x.py'))``
and get ``main(cfg, flags)``; :func:`load_config` is the same parse for code and tests.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags


class ConfigError(ValueError):
  """A config problem, reported as one line (the file or the field is in the message)."""


def leaf_paths(cfg: ml_collections.ConfigDict, prefix: str = '') -> dict[str, object]:
  """{'optim.lr': 2e-05, ...}: every leaf field of a (nested) config by its dotted path."""
  out = {}
  for key in cfg.keys():
    value = cfg[key]
    path = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      out[path] = value
      out.update(leaf_paths(value, path + '.'))
    else:
      out[path] = value
  return out


def closest(name: str, candidates) -> str:
  """' (closest: optim.lr)' or '' when nothing is close."""
  match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
  if not match:  # a wrong parent ('optm.lr') still finds the field by its last part
    tails = {c.rsplit('.', 1)[-1]: c for c in candidates}
    near = difflib.get_close_matches(name.rsplit('.', 1)[-1], list(tails), n=1, cutoff=0.6)
    match = [tails[near[0]]] if near else []
  return f' (closest: {match[0]})' if match else ''


def _config_spec(argv: Sequence[str], default: str | None) -> str | None:
  for i, token in enumerate(argv):
    if token.startswith('--config='):
      return token[len('--config='):]
    if token == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return default


def _override_names(argv: Sequence[str]) -> list[str]:
  return [t[len('--config.'):].split('=', 1)[0] for t in argv if t.startswith('--config.')]


def _type_name(value) -> str:
  if isinstance(value, tuple):
    inner = sorted({type(v).__name__ for v in value})
    return f'tuple of {"/".join(inner)}' if inner else 'tuple'
  return type(value).__name__


def _load(spec: str, prog: str, sys_argv: list[str],
          define_flags: Callable[[flags.FlagValues], None] | None):
  fv = flags.FlagValues()
  # config_flags reads the overrides from the argv it is given when the flag is defined (its
  # sys_argv), and absl parses the same argv afterwards: both see the same list.
  handle = config_flags.DEFINE_config_file('config', spec, 'configs/NAME.py[:arg]', flag_values=fv,
                                           lock_config=True, sys_argv=sys_argv)
  if define_flags is not None:
    define_flags(fv)
  rest = fv(sys_argv)
  return handle.value, fv, rest[1:]


def parse_args(argv: Sequence[str], *, default_config: str | None = None, prog: str = 'embedjax',
               define_flags: Callable[[flags.FlagValues], None] | None = None
               ) -> tuple[ml_collections.ConfigDict, flags.FlagValues]:
  """Parses ``argv`` (without the program name) into (locked config, parsed absl flags).

  ``define_flags(flag_values)`` may define the script's other flags (``--workdir`` ...). Every
  problem (missing file, unknown field, wrong type, unknown flag, stray argument) raises
  :class:`ConfigError` with a one-line message.
  """
  argv = list(argv)
  spec = _config_spec(argv, default_config)
  if not spec:
    raise ConfigError('--config is required (configs/NAME.py[:arg])')
  path = spec.split(':', 1)[0]
  if not Path(path).is_file():
    raise ConfigError(f'config file {path}: no such file')
  try:
    # First the config as its file builds it, to check override names against its fields.
    base, _, _ = _load(spec, prog, [prog, '--config', spec], None)
    fields = leaf_paths(base)  # config_flags reports a failed load only when the config is read
  except (AttributeError, ImportError, KeyError, OSError, SyntaxError, TypeError, ValueError) as e:
    raise ConfigError(f'{spec}: {_one_line(e)}') from e
  except flags.Error as e:  # get_config(arg) raised: absl wraps it with its traceback as text
    cause = e
    while cause.__context__ is not None:
      cause = cause.__context__
    raise ConfigError(f'{spec}: {_one_line(cause)}') from e
  for name in _override_names(argv):
    if name not in fields:
      raise ConfigError(f'{path}: unknown config field {name!r}{closest(name, fields)}')
  try:
    cfg, fv, rest = _load(spec, prog, [prog, *argv], define_flags)
  except flags.IllegalFlagValueError as e:
    m = re.match(r'flag --config\.([\w.]+)=', str(e))
    if m and m.group(1) in fields:
      raise ConfigError(f'{path}: --config.{m.group(1)}: expected '
                        f'{_type_name(fields[m.group(1)])} ({_one_line(e)})') from e
    raise ConfigError(_one_line(e)) from e
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    raise ConfigError(f'{path}: {_one_line(e)}') from e
  if rest:
    raise ConfigError(f'unexpected arguments {rest}')
  for name in _override_names(argv):
    _check_elements(path, name, fields[name], leaf_paths(cfg)[name])
  return cfg, fv


def set_fields(cfg: ml_collections.ConfigDict, values: dict, *, where: str = 'overrides'
               ) -> ml_collections.ConfigDict:
  """Sets dotted fields of ``cfg`` from Python values (``{'data.file.columns': 'a=q'}``), with the
  checks a ``--config.a.b=value`` override gets: an unknown name (with the closest field), a value
  of the wrong type, a tuple of the wrong elements: each a one-line ConfigError naming ``where``
  and the field. Returns ``cfg``."""
  fields = leaf_paths(cfg)
  for name, value in values.items():
    if name not in fields:
      raise ConfigError(f'{where}: unknown config field {name!r}{closest(name, fields)}')
    try:
      cfg.update_from_flattened_dict({name: value})
    except (TypeError, ValueError, KeyError) as e:
      raise ConfigError(f'{where}: {name}: expected {_type_name(fields[name])} '
                        f'({_one_line(e)})') from e
    _check_elements(where, name, fields[name], leaf_paths(cfg)[name], prefix='')
  return cfg


def _check_elements(path: str, name: str, old, new, prefix: str = '--config.') -> None:
  # config_flags checks a tuple field's type but not its elements': (384, 64) <- 'a' gives ('a',).
  if not (isinstance(old, tuple) and old and isinstance(new, tuple)):
    return
  kinds = {type(v) for v in old}
  if len(kinds) != 1:
    return
  kind = kinds.pop()
  accepted = (int, float) if kind is float else (kind,)
  if any(not isinstance(v, accepted) or isinstance(v, bool) != (kind is bool) for v in new):
    raise ConfigError(f'{path}: {prefix}{name}: expected {_type_name(old)}, got {new!r}')


def _one_line(e: BaseException) -> str:
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  return ' '.join(text.replace('\n', ' ').split()) or type(e).__name__


def config_overrides(argv: Sequence[str]) -> list[str]:
  """The ``--config.x=y`` / ``--config.x y`` arguments of ``argv``, for a script that applies the
  same overrides to several configs (e.g. a study's sibling runs)."""
  out = []
  for i, token in enumerate(argv):
    if token.startswith('--config.'):
      out.append(token)
      if '=' not in token and i + 1 < len(argv):
        out.append(argv[i + 1])
  return out


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """``load_config('configs/x.py:arg', ['--config.optim.lr=1e-5'])``: the locked config."""
  return parse_args(['--config', spec, *overrides])[0]


def run_main(main: Callable[[ml_collections.ConfigDict, flags.FlagValues], int | None],
        default_config: str | None, argv: Sequence[str] | None = None, *, prog: str | None = None,
        define_flags: Callable[[flags.FlagValues], None] | None = None) -> int:
  """The entry of a script: parse, print a config problem as one line (exit 2), else ``main``."""
  argv = sys.argv[1:] if argv is None else list(argv)
  prog = prog or sys.argv[0]
  try:
    cfg, fv = parse_args(argv, default_config=default_config, prog=prog, define_flags=define_flags)
  except ConfigError as e:
    print(f'{prog}: {e}', file=sys.stderr)
    return 2
  return main(cfg, fv) or 0
