"""What every result file carries: the command that made it, the code, data and config it ran
with, versions, machine and time.

A writer opens a :class:`Run` before it measures and stores ``run.provenance()`` with its record::

    run = Run(config=cfg, seeds=cfg.seed, inputs=[data_dir / 'scifact']).start()
    ...                                   # measure
    record.update(run.provenance())       # or record['provenance'] = run.provenance()

(``with Run(...) as run:`` does the same; ``start()``/``finish()`` are the explicit pair.) A Run
is a plain object: no global state, nothing shared between runs but an in-process cache of file
hashes keyed by (path, size, mtime).

Fields of ``Run.provenance()``:

- ``command``: the command line as typed (``python -m pkg.mod args`` for module runs).
- ``date``: when the record was made (= ``finished_at``; kept for older readers).
- ``started_at`` / ``finished_at``: ISO-8601 UTC times of ``start()`` and of ``finish()`` (or of
  the ``provenance()`` call when the run was not finished yet).
- ``git_commit``: the short commit hash (kept for older readers and the table renderers).
- ``git``: ``{'commit': full hash, 'dirty': bool, 'dirty_paths': [...]}`` read at ``start()``
  from ``git status --porcelain`` (paths relative to the repository root; modified, staged,
  deleted and untracked files that git does not ignore all count). ``None`` when git or the
  repository is absent.
- ``versions``: python and the main packages (plus ``extra_packages``).
- ``machine``: cpu model, cores, jax backend, ``device_kind`` (``jax.devices()[0]``),
  ``device_count`` (``jax.device_count()``), ``process_count`` and ``devices`` (every kind).
- ``seeds``: whatever the writer passes (an int, a dict, a list), ``None`` for none.
- ``config_hash``: sha256 of the canonical JSON of the resolved config (``to_dict()`` for an
  ml_collections ConfigDict, tuples as lists, sorted keys; :func:`config_hash`); ``None`` without
  a config.
- ``config``: that resolved config itself, unless the writer stores it already
  (``store_config=False``).
- ``inputs``: ``{path: sha256}`` of the data the run read: a file's :func:`file_sha256`, a
  folder's :func:`tree_sha256`.
- ``code_files``: the repository's source files this process had imported when the record was
  made (:func:`loaded_code_files`), so that ``make results`` calls a result stale only when code
  it ran changed, not when an unrelated module of the library did.

Partial reruns that merge into an earlier file (``--update``) stamp each entry with its own
provenance (:func:`stamp_entries`, :func:`merge_entries`). The older :func:`provenance` function
(no config, seeds or inputs) still works for callers that have none.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

_PACKAGES = ('embedjax', 'jax', 'jaxlib', 'flax', 'optax', 'numpy', 'tokenizers', 'safetensors')
_CHUNK = 1 << 20
_HASHES: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime_ns) -> sha256, this process


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
  out = {'python': platform.python_version()}
  for name in _PACKAGES + tuple(extra):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


def machine() -> dict[str, str | int]:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  out: dict[str, Any] = {'cpu': cpu, 'cores': os.cpu_count() or 0}
  out.update(device_info() or {})
  return out


def device_info() -> dict | None:
  """The accelerator: backend, ``device_kind`` of device 0, device and process counts, and every
  device kind; ``None`` when jax cannot be imported or has no backend."""
  try:
    import jax  # imported here so that reading versions does not initialise a backend
    devices = jax.devices()
    return {'jax_backend': jax.default_backend(),
            'devices': ', '.join(sorted({d.device_kind for d in devices})),
            'device_kind': devices[0].device_kind, 'device_count': jax.device_count(),
            'process_count': jax.process_count()}
  except Exception:  # noqa: BLE001 - provenance must never stop a run that measured something
    return None


def _git(args: list[str], cwd) -> str | None:
  try:
    return subprocess.run(['git', *args], capture_output=True, text=True, check=True,
                          cwd=cwd, timeout=30).stdout
  except (OSError, subprocess.SubprocessError):
    return None


def git_commit() -> str | None:
  out = _git(['rev-parse', '--short', 'HEAD'], os.path.dirname(__file__))
  return (out.strip() or None) if out is not None else None


def git_state(cwd: str | os.PathLike | None = None) -> dict | None:
  """``{'commit', 'dirty', 'dirty_paths'}`` of the repository holding ``cwd`` (default: this
  package's); ``None`` without git or a repository. Untracked files git does not ignore count
  as dirty (an untracked folder is listed once, as ``folder/``)."""
  cwd = os.fspath(cwd) if cwd is not None else os.path.dirname(os.path.abspath(__file__))
  commit = _git(['rev-parse', 'HEAD'], cwd)
  status = _git(['status', '--porcelain=v1', '-z'], cwd)
  if commit is None or status is None:
    return None
  paths, fields = [], status.split('\0')
  i = 0
  while i < len(fields):
    entry = fields[i]
    i += 1
    if len(entry) < 4:
      continue
    paths.append(entry[3:])
    if entry[0] in 'RC':  # a rename or copy is followed by its source path
      i += 1
  return {'commit': commit.strip() or None, 'dirty': bool(paths), 'dirty_paths': sorted(paths)}


def loaded_code_files(root: str | os.PathLike | None = None) -> list[str]:
  """Repository-relative paths of the modules this process imported from the repository
  (``embedjax/``, ``experiments/``, ``benchmarks/``, ...; not installed packages), sorted."""
  root = Path(root or Path(__file__).resolve().parent.parent).resolve()
  out = set()
  for module in list(sys.modules.values()):
    file = getattr(module, '__file__', None)
    if not file:
      continue
    try:
      rel = Path(file).resolve().relative_to(root)
    except ValueError:
      continue
    if rel.parts[0].startswith('.') or 'site-packages' in rel.parts:
      continue  # a virtual environment inside the repository
    out.add(rel.as_posix())
  return sorted(out)


def command_line() -> str:
  """The command as typed: ``python -m pkg.mod args`` for module runs, else argv."""
  argv = list(sys.argv)
  main = sys.modules.get('__main__')
  spec = getattr(main, '__spec__', None)
  if spec is not None and spec.name and argv and argv[0].endswith('.py'):
    name = spec.name[:-len('.__main__')] if spec.name.endswith('.__main__') else spec.name
    argv = ['python', '-m', name] + argv[1:]
  elif argv and os.path.basename(argv[0]) in ('embedjax',):
    argv[0] = 'embedjax'
  return shlex.join(argv)


def _plain(x):
  """JSON-ready: ConfigDicts and mappings as dicts with string keys, tuples and lists as lists."""
  if hasattr(x, 'to_dict') and callable(x.to_dict):
    x = x.to_dict()
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if isinstance(x, os.PathLike):
    return os.fspath(x)
  if hasattr(x, 'item') and callable(x.item):  # numpy scalars
    return x.item()
  return x


def canonical_json(config) -> str:
  """The canonical JSON of a resolved config: sorted keys, tuples as lists, no spaces."""
  return json.dumps(_plain(config), sort_keys=True, separators=(',', ':'), default=str,
                    ensure_ascii=False)


def config_hash(config) -> str:
  """sha256 (hex) of :func:`canonical_json`: stable across key order, tuple == list."""
  return hashlib.sha256(canonical_json(config).encode('utf-8')).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
  """sha256 (hex) of a file, read in 1 MiB chunks; cached in-process by (path, size, mtime)."""
  real = os.path.realpath(path)
  st = os.stat(real)
  key = (real, st.st_size, st.st_mtime_ns)
  if key not in _HASHES:
    h = hashlib.sha256()
    with open(real, 'rb') as f:
      while chunk := f.read(_CHUNK):
        h.update(chunk)
    _HASHES[key] = h.hexdigest()
  return _HASHES[key]


def tree_files(folder: str | os.PathLike) -> list[str]:
  """Every file under ``folder`` (hidden ones and those behind symlinks too), as sorted relative
  POSIX paths."""
  root = os.fspath(folder)
  if not os.path.isdir(root):
    raise NotADirectoryError(root)
  out = []
  for dirpath, _, names in os.walk(root, followlinks=True):
    for name in names:
      out.append(Path(os.path.relpath(os.path.join(dirpath, name), root)).as_posix())
  return sorted(out)


def tree_sha256(folder: str | os.PathLike) -> str:
  """sha256 (hex) of a folder: of the lines ``relative_path NUL file_sha256`` over every file in
  sorted order (:func:`tree_files`; nothing is skipped, an unreadable file is an error)."""
  h = hashlib.sha256()
  for rel in tree_files(folder):
    h.update(f'{rel}\0{file_sha256(os.path.join(folder, rel))}\n'.encode('utf-8'))
  return h.hexdigest()


def input_hashes(paths: Iterable[str | os.PathLike], *, strict: bool = True) -> dict[str, str]:
  """``{path: sha256}``: :func:`tree_sha256` for a folder, :func:`file_sha256` for a file.
  With ``strict=False`` an unreadable path is recorded as ``'unreadable: <error>'`` instead of
  raising (a run that measured for hours still writes its record)."""
  out = {}
  for p in paths:
    try:
      out[os.fspath(p)] = tree_sha256(p) if os.path.isdir(p) else file_sha256(p)
    except OSError as e:
      if strict:
        raise
      out[os.fspath(p)] = f'unreadable: {type(e).__name__}: {e}'
  return out


class Run:
  """The provenance of one measurement: ``start()`` before it, ``provenance()`` for the record.

  Args:
    config: the resolved config (a ConfigDict, a dict, argparse's ``vars(args)``), or None.
    seeds: the seeds used, in whatever form the writer has them.
    inputs: data files or folders the run reads (more with :meth:`add_inputs`).
    extra_packages: package versions to record beside the main ones.
    store_config: include the config itself (False where the writer already stores it).
    repo: the git repository to describe (default: the one holding embedjax).
  """

  def __init__(self, config=None, *, seeds=None, inputs: Iterable = (),
               extra_packages: tuple[str, ...] = (), store_config: bool = True, repo=None):
    self.config = config
    self.seeds = seeds
    self.inputs = [os.fspath(p) for p in inputs]
    self.hashed_inputs: dict[str, str] = {}
    self.extra_packages = tuple(extra_packages)
    self.store_config = store_config
    self.repo = repo
    self.started_at: str | None = None
    self.finished_at: str | None = None
    self.git: dict | None = None
    self.command: str | None = None

  def start(self) -> 'Run':
    self.started_at = _now()
    self.command = command_line()
    self.git = git_state(self.repo)
    self.finished_at = None
    return self

  def finish(self) -> 'Run':
    if self.started_at is None:
      self.start()
    self.finished_at = _now()
    return self

  def add_inputs(self, *paths, hashed: dict[str, str] | None = None) -> 'Run':
    """More inputs: paths to hash, or ``hashed`` ``{path: sha256}`` already hashed (e.g. a
    training summary's ``inputs``)."""
    self.inputs += [os.fspath(p) for p in paths if os.fspath(p) not in self.inputs]
    self.hashed_inputs.update(hashed or {})
    return self

  def __enter__(self) -> 'Run':
    return self.start()

  def __exit__(self, *exc) -> None:
    if self.finished_at is None:
      self.finish()

  def provenance(self) -> dict:
    """The record's provenance (module docstring); ``finished_at`` is now if not finished."""
    if self.started_at is None:
      self.start()
    finished = self.finished_at or _now()
    git = self.git
    out = {'command': self.command, 'date': finished, 'started_at': self.started_at,
           'finished_at': finished,
           'git_commit': git['commit'][:7] if git and git['commit'] else None, 'git': git,
           'versions': versions(self.extra_packages), 'machine': machine(), 'seeds': _plain(self.seeds),
           'config_hash': config_hash(self.config) if self.config is not None else None}
    if self.store_config and self.config is not None:
      out['config'] = _plain(self.config)
    out['inputs'] = {**self.hashed_inputs, **input_hashes(self.inputs, strict=False)}
    out['code_files'] = loaded_code_files()
    return out


def provenance(extra_packages: tuple[str, ...] = ()) -> dict:
  """Command, date, git state, versions and machine, for callers without config, seeds or
  inputs (prefer :class:`Run`)."""
  prov = Run(extra_packages=extra_packages).start().provenance()
  for key in ('seeds', 'config_hash', 'inputs', 'started_at', 'finished_at'):
    del prov[key]
  return prov


def _entries(tree: dict, depth: int):
  """(parent, key) of every entry ``depth`` levels down a nested dict."""
  level = [(None, None, tree)]
  for _ in range(depth):
    level = [(node, k, v) for _, _, node in level if isinstance(node, dict)
             for k, v in node.items()]
  return [(parent, k) for parent, k, _ in level]


def stamp_entries(tree: dict, prov: dict, depth: int = 1) -> dict:
  """Sets ``entry['provenance'] = prov`` on every dict entry ``depth`` levels down ``tree`` (in
  place; ``depth=2`` for ``{dataset: {index: entry}}``) and returns ``tree``."""
  for parent, k in _entries(tree, depth):
    if isinstance(parent[k], dict):
      parent[k]['provenance'] = prov
  return tree


def inherited(file_provenance: dict | None) -> dict | None:
  """The provenance given to an entry written before entries carried their own: the earlier
  file's top-level one, marked ``inherited_from_file`` (it names the last run that wrote that
  file, which need not be the run that measured the entry)."""
  if file_provenance is None:
    return None
  return {**file_provenance, 'inherited_from_file': True}


def merge_entries(old: dict, new: dict, *, depth: int = 1, old_provenance: dict | None = None
                  ) -> dict:
  """A partial rerun's entries merged over an earlier file's, ``depth`` levels down.

  New entries replace old ones of the same keys; the old entries kept carry their own
  ``provenance`` or, lacking one, :func:`inherited` ``(old_provenance)``. Stamp ``new`` first
  (:func:`stamp_entries`). Returns a new dict; neither argument is modified.
  """
  merged = copy.deepcopy(old)
  if old_provenance is not None:
    for parent, k in _entries(merged, depth):
      if isinstance(parent[k], dict):
        parent[k].setdefault('provenance', inherited(old_provenance))
  for path, value in _paths(copy.deepcopy(new), depth):
    node = merged
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return merged


def _paths(tree: dict, depth: int):
  level = [((), tree)]
  for _ in range(depth):
    level = [(path + (k,), v) for path, node in level if isinstance(node, dict)
             for k, v in node.items()]
  return level


def rerender(json_path, md_path, markdown_fn, renderer: str):
  """Rewrites a results table from its JSON (``markdown_fn(record) -> str``) without re-running
  the measurement, and says so in a last line naming the renderer and the commit it ran at."""
  from embedjax.io import atomic_write_text
  json_path = Path(json_path)
  md_path = Path(md_path) if md_path else json_path.with_suffix('.md')
  text = markdown_fn(json.loads(json_path.read_text())).rstrip('\n')
  text += (f'\n\nThis table was re-rendered from `{json_path.name}` by `{renderer}` at commit '
           f'{git_commit()}; the numbers are the JSON file\'s.\n')
  atomic_write_text(md_path, text)
  return md_path
