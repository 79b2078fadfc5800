r"""Regenerates the result files that are not current: ``make results``.

python -m experiments.regenerate              # run every stale target that fits this machine
python -m experiments.regenerate --list       # only say what is current, stale or GPU-only
python -m experiments.regenerate --only eval,storage_tradeoff

One target per result file (``TARGETS``): the command that writes it, the code and config it
depends on, and the device it needs. A result is *current* when its recorded commit is known, the
tree was clean in the target's code paths when it ran, no file of those paths changed between
that commit and HEAD (files added since do not count; where the record lists the repository files
the run imported, ``code_files``, those replace the library-wide ``CORE`` paths, and for a study's
records every library path; a target's own config file counts only when the recorded config hash
differs from today's), and (for a target that runs one config with overrides) its recorded config
hash equals the hash of the config the command would run now. Anything else is stale; a file
without those records is stale. Targets run one after the other, each as its own resumable
command (a rerun of this script after an interruption skips what has become current, and each
experiment skips its finished cells). GPU targets are never run here: they are listed with the
date each was last measured (BENCHMARKS.md names them too).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from typing import Sequence

from absl import flags

from embedjax import paths
from embedjax.config import load_config

PY = sys.executable
# Code every target depends on (the library layers below the experiments).
CORE = ('embedjax/models', 'embedjax/encoding.py', 'embedjax/ops.py', 'embedjax/data',
        'embedjax/evals', 'embedjax/search', 'embedjax/quant', 'pyproject.toml')


# What the training benchmarks run besides their script (they start peers in child processes).
TRAIN_BENCH = ('benchmarks/train_common.py', 'embedjax/train', 'embedjax/losses')


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  result: str                            # the file the command writes (relative to the repo)
  command: tuple[str, ...]               # run from the repository root
  code: tuple[str, ...]                  # paths whose change makes the result stale
  config: str | None = None              # 'configs/x.py[:arg]' whose hash the result records
  overrides: tuple[str, ...] = ()        # its --config.x=y arguments
  config_block: str | None = None        # the sub-block the run hashes, when not the whole config
  device: str = 'cpu'                    # 'cpu' (run here) or 'gpu' (listed only)
  note: str = ''
  # A study made of one record per (cell, seed): the experiments module that lists them
  # (expected_runs, record_path, config_is_current); ``result`` is then its summary, derived
  # from the records (CI recomputes it), and the target is current when every record is.
  study: str | None = None


def _exp(name: str, config: str, result: str, *, overrides=(), code=(), device='cpu', note='',
         config_block=None):
  command = (PY, '-m', f'experiments.{name}', '--config', config, *overrides)
  return Target(name=result.split('/')[-1].rsplit('.', 1)[0], result=result, command=command,
                code=(f'experiments/{name}.py', config.split(':')[0], *CORE, *code),
                config=config, overrides=tuple(overrides), device=device, note=note,
                config_block=config_block)


TARGETS = (
    Target('eval', 'results/eval/all-MiniLM-L6-v2.json',
           # exactly the README's `make eval`
           (PY, '-m', 'embedjax.cli', 'eval', '--model', 'all-MiniLM-L6-v2', '--tasks', 'default'),
           code=('embedjax/cli.py', *CORE)),
    _exp('storage_tradeoff', 'configs/storage_tradeoff.py', 'results/storage_tradeoff.json',
         code=('embedjax/plots.py',)),
    _exp('limit_eval', 'configs/limit_eval.py', 'results/limit/limit_small.json',
         overrides=('--config.parts=limit_small',), code=('embedjax/limit',)),
    _exp('limit_eval', 'configs/limit_eval.py', 'results/limit/patterns.json',
         overrides=('--config.parts=patterns',), code=('embedjax/limit',)),
    _exp('limit_free_embedding', 'configs/limit_free_embedding.py:32',
         'results/limit/critical_n.json', overrides=('--config.redo=(32,)',),
         code=('embedjax/limit', 'embedjax/plots.py'), device='gpu',
         note='d >= 20 takes hours per dimension on 2 CPU cores'),
    *(_exp('limit_free_embedding', f'configs/limit_free_embedding.py:m{m}',
           f'results/beyond_single_vector/critical_n_m{m}.json',
           code=('embedjax/limit', 'embedjax/plots.py'),
           note='minutes per dimension on 2 cores; resumable by dimension')
      for m in (1, 2, 4)),
    _exp('mteb_scifact', 'configs/mteb_scifact.py', 'results/mteb_scifact.json',
         code=('experiments/mteb_local.py', 'embedjax/evals')),
    _exp('table_compression', 'configs/table_compression.py', 'results/table_compression.json',
         code=('embedjax/tables', 'embedjax/plots.py')),
    _exp('table_compression', 'configs/table_compression.py:criteo',
         'results/table_compression_criteo.json',
         code=('embedjax/tables', 'embedjax/plots.py', 'embedjax/data/criteo_synthetic.py'),
         note='5M rows: minutes per (method, budget, seed) on 2 cores, hours in all; resumable'),
    _exp('table_compression', 'configs/table_compression.py:memory',
         'results/table_compression_memory.json', code=('embedjax/tables',),
         config_block='memory'),  # the memory check records the hash of its own block
    _exp('table_memory_pipelines', 'configs/table_memory_pipelines.py',
         'results/table_compression_memory_pipelines.json',
         code=('embedjax/tables', 'experiments/table_compression.py',
               'configs/table_compression.py'),
         note='10M ids x 64: each full-size-table pipeline in a process of its own, peaks near '
              'the full table (~10 GiB) or above it: run on an otherwise idle machine'),
    _exp('llm_embedders', 'configs/llm_embedders.py', 'results/llm_embedders.json',
         code=('results/bench_gradcache_cpu.json',)),
    Target('train_scifact', 'results/train/minilm_scifact_mrl.json',
           (PY, '-m', 'experiments.train_scifact'),
           code=('experiments/train_scifact.py', 'configs/minilm_scifact.py',
                 'configs/minilm_scifact_mrl.py', 'embedjax/train', 'embedjax/losses', *CORE)),
    *(Target(name, f'results/{name}.json', (PY, f'benchmarks/{script}.py'),
             code=(f'benchmarks/{script}.py', *extra, *CORE),
             note='timings: run on an otherwise idle machine')
      for name, script, extra in (
          ('bench_encode_cpu', 'encode_cpu', ()),
          ('bench_search_cpu', 'search_cpu', ()),
          ('bench_search_floor_cpu', 'search_floor_cpu', ()),
          ('bench_train_cpu', 'train_cpu', TRAIN_BENCH),
          ('bench_gradcache_cpu', 'gradcache_cpu', TRAIN_BENCH),
          ('bench_search_sharded_cpu', 'search_sharded_cpu', ()),
          ('bench_decoder_cpu', 'decoder_cpu', ('benchmarks/encode_cpu.py',)),
          ('bench_losses_cpu', 'losses_cpu', TRAIN_BENCH),
          ('bench_long_context_cpu', 'long_context_cpu', ()),
          ('bench_multivector_cpu', 'multivector_cpu', ()),
          ('bench_train_padding_cpu', 'train_padding_cpu',
           ('embedjax/train', 'embedjax/losses', 'configs/distill_leaf_decoder.py')),
          # its headroom divides by the GPU file's fastest step
          ('bench_input_cpu', 'input_cpu', ('embedjax/train', 'results/bench_train_gpu.json')))),
    Target('bench_multivector_sweep_cpu', 'results/bench_multivector_sweep_cpu.json',
           (PY, 'benchmarks/multivector_sweep_cpu.py'),
           code=('benchmarks/multivector_sweep_cpu.py', 'benchmarks/multivector_cpu.py', *CORE),
           note='PLAID settings against exact search on the SciFact corpus\'s tokens, 2- and '
                '4-bit codes: about 45 min on 2 cores (timings: run on an otherwise idle machine)'),
    Target('bench_train_gpu', 'results/bench_train_gpu.json', (PY, 'benchmarks/train_gpu.py'),
           code=('benchmarks/train_gpu.py', 'benchmarks/train_common.py',
                 'benchmarks/gpu_common.py', 'embedjax/train', 'embedjax/losses', *CORE),
           device='gpu',
           note='GPU suite A: benchmarks/gpu_suite.py run A (its docstring: prepare, run, collect)'),
    Target('bench_train_gpu_variants', 'results/bench_train_gpu_variants.json',
           (PY, 'benchmarks/train_gpu.py', '--models', 'bert_base,minilm_l6', '--systems',
            'embedjax,embedjax_remat_dots,embedjax_remat_full,embedjax_cublas,'
            'embedjax_command_buffers,embedjax_latency_hiding', '--out',
            'results/bench_train_gpu_variants.json'),
           code=('benchmarks/train_gpu.py', 'benchmarks/train_common.py',
                 'benchmarks/gpu_common.py', 'embedjax/train', 'embedjax/losses', *CORE),
           device='gpu',
           note='GPU suite R: benchmarks/gpu_suite.py run R (remat policies and XLA flags)'),
    Target('bench_encode_gpu', 'results/bench_encode_gpu.json', (PY, 'benchmarks/encode_gpu.py'),
           code=('benchmarks/encode_gpu.py', 'benchmarks/train_common.py',
                 'benchmarks/train_gpu.py', 'benchmarks/gpu_common.py', *CORE), device='gpu',
           note='GPU suite E: benchmarks/gpu_suite.py run E'),
    Target('bench_input_gpu_host', 'results/bench_input_gpu_host.json',
           (PY, 'benchmarks/input_cpu.py', '--out', 'results/bench_input_gpu_host.json'),
           code=('benchmarks/input_cpu.py', 'embedjax/train', 'results/bench_train_gpu.json',
                 *CORE), device='gpu',
           note="GPU suite E, first: the training loader on the GPU host's cores (the carried "
                'corpus: benchmarks/gpu_suite.py run E)'),
    Target('bench_decoder_gpu', 'results/bench_decoder_gpu.json',
           (PY, 'benchmarks/decoder_gpu.py'),
           code=('benchmarks/decoder_gpu.py', 'benchmarks/train_common.py',
                 'benchmarks/gpu_common.py', 'embedjax/train', 'embedjax/losses', *CORE),
           device='gpu',
           note='GPU suite B: benchmarks/gpu_suite.py run B'),
    Target('recipes', 'results/recipes/summary.json', (PY, '-m', 'experiments.recipes'),
           code=('experiments/recipes.py', 'configs/recipes.py', 'embedjax/train',
                 'embedjax/losses', *CORE),
           study='recipes',
           note='the training-recipes study: about 20 min per (cell, seed) on 2 cores, '
                'each a resumable run with its own record'),
    Target('elastic_retention', 'results/elastic_retention/summary.json',
           (PY, '-m', 'experiments.elastic_retention'),
           code=('experiments/elastic_retention.py', 'configs/elastic_retention.py',
                 'experiments/recipes.py', 'configs/recipes.py', 'experiments/cells.py',
                 'embedjax/train', 'embedjax/losses', *CORE),
           study='elastic_retention',
           note='levers for the 64-dim retention of the recipes study\'s elastic_mrl cell: about '
                '10 min per 56-step (cell, seed) on 2 cores, 30 min for the 168-step cell'),
    Target('beyond_single_vector', 'results/beyond_single_vector/summary.json',
           (PY, '-m', 'experiments.beyond_single_vector'),
           code=('experiments/beyond_single_vector.py', 'configs/beyond_single_vector.py',
                 'experiments/cells.py', *CORE),
           study='beyond_single_vector',
           note='single-vector, ColBERT, SPLADE and BM25 on LIMIT-small and SciFact: about 25 min '
                'per trained (cell, seed) on 2 cores (one epoch of the mixture, then the SciFact '
                'corpus encoded and searched), each a resumable run with its own record'),
    Target('long_context', 'results/long_context/summary.json',
           (PY, '-m', 'experiments.long_context', '--config', 'configs/long_context.py'),
           code=('experiments/long_context.py', 'configs/long_context.py', *CORE),
           study='long_context',
           note='score against input length, one record per (model, method, task, length), '
                'shortest inputs first: seconds to minutes per cell up to 2k tokens, hours for '
                'long SciFact at 8k tokens on 2 cores (a GPU\'s work; resumable inside a cell by '
                'shards of 32 texts); the RoPE cells need the recipes study\'s '
                'distill_leaf_decoder seed 0 in runs/recipes/'),
    Target('adapters', 'results/adapters/summary.json', (PY, '-m', 'experiments.adapters'),
           code=('experiments/adapters.py', 'configs/adapters.py', 'experiments/recipes.py',
                 'configs/recipes.py', 'experiments/cells.py', 'embedjax/posthoc.py',
                 'embedjax/train', 'embedjax/losses', *CORE),
           study='adapters',
           note='ADR and QDC on SciFact: minutes per ADR run once the frozen embeddings are '
                'cached; a qdc run trains the recipes study\'s in-batch model (or resumes it)'),
    Target('merging', 'results/merging/summary.json', (PY, '-m', 'experiments.merging'),
           code=('experiments/merging.py', 'configs/merging.py', 'configs/merging_specialists.py',
                 'experiments/recipes.py', 'configs/recipes.py', 'experiments/cells.py',
                 'embedjax/merging.py', 'embedjax/train', 'embedjax/losses', *CORE),
           study='merging',
           note='the merging study: specialists (~15 min each per seed on 2 cores, SciFact and '
                'STS-B shared with the recipes study), then ~5 min of test evaluation per cell '
                'and up to ~20 min of validation for the selecting merges'),
    Target('pruning', 'results/pruning/summary.json', (PY, '-m', 'experiments.pruning'),
           code=('experiments/pruning.py', 'configs/pruning.py', 'experiments/recipes.py',
                 'configs/recipes.py', 'experiments/cells.py', 'embedjax/pruning.py',
                 'embedjax/train', 'embedjax/losses', *CORE),
           study='pruning',
           note='the pruning study: about 8 min per one-shot cell (SciFact and STS-B evaluation), '
                '+15 min of fine-tuning per recovered (cell, seed) on 2 cores; structured cells '
                'time encoding: run them on an otherwise idle machine'),
    *(Target(name, f'results/limit/{out}.json', (PY, '-m', 'experiments.limit_finetune', *args),
             code=('experiments/limit_finetune.py', 'configs/limit_finetune.py',
                   'configs/minilm_scifact.py', 'embedjax/train', 'embedjax/losses',
                   'embedjax/limit', *CORE))
      for name, out, args in (
          ('limit_finetune', 'finetune', ()),
          # two passes over the test qrels themselves: how far memorising them gets (docs/limit.md)
          ('limit_finetune_test_e2', 'finetune_test_e2', ('--only', 'test', '--epochs', '2')))),
)


def _record_provenance(record: dict) -> dict:
  """Where a result file keeps its provenance: a 'provenance' block, or its top level."""
  prov = record.get('provenance')
  return prov if isinstance(prov, dict) else record


def _git(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(['git', *args], cwd=paths.repo_root(), capture_output=True, text=True)


def _entry_provenances(node, where: str = ''):
  """(where, provenance) of every per-entry 'provenance' block below the top level (the entries
  a merged partial rerun kept; ``earlier_runs`` is history, not a measurement in the file)."""
  if isinstance(node, dict):
    for k, v in node.items():
      if k == 'earlier_runs':
        continue
      if k == 'provenance' and where and isinstance(v, dict):
        yield where, v
      else:
        yield from _entry_provenances(v, f'{where}/{k}' if where else str(k))
  elif isinstance(node, list):
    for i, v in enumerate(node):
      yield from _entry_provenances(v, f'{where}[{i}]')


def _code_paths(target: Target, prov: dict, config_hash_now: str | None = None) -> tuple[str, ...]:
  """The paths whose change makes this record stale: the target's own paths, with the library
  layers (``CORE``; for a study, every path under ``embedjax/``) narrowed to the files the run
  imported where its provenance lists them (``code_files``). Such a record also carries the
  versions it ran with, so of ``pyproject.toml`` only the runtime dependencies count then
  (:func:`_dependencies_changed`), not the test extras.

  The target's config file does not count when the record's config hash equals
  ``config_hash_now``, the hash of the config its command builds today: the file reaches the run
  only as that config, so an edit to another variant's fields or a comment leaves it current."""
  code = target.code
  recorded = prov.get('code_files')
  if isinstance(recorded, list):
    own = tuple(p for p in code if p not in CORE and not (target.study and _is_library(p)))
    code = (*own, *recorded)
  if config_hash_now is not None and prov.get('config_hash') == config_hash_now:
    code = tuple(p for p in code if p != target.config.split(':')[0])
  return code


def _is_library(path: str) -> bool:
  """A path inside the library package. A study's cells run in the process that writes their
  records, and the library reaches a run only by import, so such a record's ``code_files`` already
  names every library file the cell could have run (a module imported lazily by other cells, such
  as embedjax/train/mining.py, is absent). Other targets keep their own library paths whole: the
  benchmarks and the table memory check start child processes whose imports the record omits."""
  return path == 'embedjax' or path.startswith('embedjax/')


def _runtime_dependencies(commit: str) -> tuple | None:
  import tomllib
  out = _git('show', f'{commit}:pyproject.toml')
  if out.returncode:
    return None
  project = tomllib.loads(out.stdout).get('project', {})
  return project.get('requires-python'), sorted(project.get('dependencies', []))


def _dependencies_changed(commit: str) -> bool:
  """Whether pyproject.toml's runtime dependencies differ between ``commit`` and HEAD."""
  return _runtime_dependencies(commit) != _runtime_dependencies('HEAD')


def _changed_since(commit: str, code: tuple[str, ...]) -> list[str]:
  """Files of ``code`` that differ between ``commit`` and HEAD, not counting files added since:
  a file that did not exist when the result was made cannot have shaped it (the library finds
  its modules by import only, so a new file matters only through an existing file's change)."""
  if not code:  # (git diff without paths would name every file)
    return []
  out = _git('diff', '--name-status', '--no-renames', commit, 'HEAD', '--', *code).stdout
  return [line.split('\t', 1)[1] for line in out.splitlines() if line and line[0] != 'A']


def _provenance_status(target: Target, prov: dict, what: str = '',
                       config_hash_now: str | None = None) -> tuple[str, str]:
  git = prov.get('git')
  if not isinstance(git, dict) or not git.get('commit'):
    if prov.get('inherited_from_file'):
      return 'stale', f'{what}measured before entries carried their own provenance'
    return 'stale', f'{what}no recorded git state (written before provenance records)'
  code = _code_paths(target, prov, config_hash_now)
  # (git lists an untracked folder once, as 'folder/')
  dirty = [p for p in git.get('dirty_paths', [])
           if any(p.startswith(c) or (p.endswith('/') and c.startswith(p)) for c in code)]
  if dirty:
    return 'stale', f'{what}ran with uncommitted changes in {dirty[:3]}'
  if _git('cat-file', '-e', f'{git["commit"]}^{{commit}}').returncode:
    return 'stale', f'{what}recorded commit {git["commit"][:10]} is not in this repository'
  changed = _changed_since(git['commit'], code)
  if isinstance(prov.get('code_files'), list) and _dependencies_changed(git['commit']):
    changed.append('pyproject.toml (runtime dependencies)')
  if changed:
    return 'stale', f'{what}its code changed since {git["commit"][:10]} ({", ".join(changed[:3])})'
  return 'current', f'at {git["commit"][:10]}'


def study_runs(target: Target) -> tuple[list[str], list[str], dict[str, str]]:
  """(every run, the runs not made yet, {stale run: why}) of a study target, runs named
  'CELL/seedN'. A run is current when its record was made at a known commit with its code clean
  and unchanged since, and with the config the study runs now."""
  import importlib
  study = importlib.import_module(f'experiments.{target.study}')
  runs, missing, stale = [], [], {}
  for cell, seed in study.expected_runs():
    name = f'{cell}/seed{seed}'
    runs.append(name)
    path = study.record_path(cell, seed)
    if not path.is_file():
      missing.append(name)
      continue
    state, why = _provenance_status(target, _record_provenance(json.loads(path.read_text())),
                                    f'{name}: ')
    if state == 'current' and not study.config_is_current(cell, seed):
      state, why = 'stale', f'{name}: its config changed'
    if state != 'current':
      stale[name] = why
  return runs, missing, stale


def _study_status(target: Target) -> tuple[str, str]:
  """A study is current when every (cell, seed) record is; stale runs are reported before runs
  not yet made."""
  runs, missing, stale_runs = study_runs(target)
  stale = list(stale_runs.values())
  not_run = f'{len(missing)} of {len(runs)} runs not made yet ({", ".join(missing[:3])}' + (
      ', ...)' if len(missing) > 3 else ')')
  if stale:
    return 'stale', f'{len(stale)} of {len(runs)} runs stale, first {stale[0]}' + (
        f'; {not_run}' if missing else '')
  if missing:
    return 'missing', not_run
  return 'current', f'all {len(runs)} runs current'


def status(target: Target) -> tuple[str, str]:
  """('current' | 'stale' | 'missing', why) of one target's result file.

  A file merged from partial reruns is current only when every entry's own provenance is."""
  if target.study:
    return _study_status(target)
  path = paths.repo_root() / target.result
  if not path.is_file():
    return 'missing', 'no file'
  record = json.loads(path.read_text())
  if record.get('hand_assembled'):
    return 'stale', 'hand-assembled (its hand_assembled field says what was done by hand)'
  prov = _record_provenance(record)
  want = None
  if target.config:
    from embedjax.provenance import config_hash
    cfg = load_config(str(paths.repo_root() / target.config), target.overrides)
    want = config_hash(cfg[target.config_block] if target.config_block else cfg)
  state = _provenance_status(target, prov, config_hash_now=want)
  if state[0] != 'current':
    return state
  for where, entry_prov in _entry_provenances(record):
    entry_state = _provenance_status(target, entry_prov, f'entry {where}: ', want)
    if entry_state[0] != 'current':
      return entry_state
  if target.config:
    if prov.get('config_hash') != want:
      return 'stale', 'its config changed (or was not recorded)'
  return state


def last_measured(target: Target) -> str:
  path = paths.repo_root() / target.result
  if not path.is_file():
    return 'never'
  prov = _record_provenance(json.loads(path.read_text()))
  return str(prov.get('finished_at') or prov.get('date') or 'unknown')


README_EVAL = 'results/eval/all-MiniLM-L6-v2.json'
README_START = ('<!-- The table below is written by `python -m experiments.regenerate --readme` from '
                f'{README_EVAL}; do not edit it by hand. -->')
README_END = '<!-- end of the generated table -->'


def markdown_table(results: dict) -> str:
  """| task | metric | score | rows of each task's main metric (x100, 2 decimals)."""
  lines = ['| task | metric | score |', '|---|---|---|']
  for name, r in results.items():
    if isinstance(r, dict) and 'main_metric' in r:
      lines.append(f'| {name} | {r["main_metric"]} | {100 * r[r["main_metric"]]:.2f} |')
  return '\n'.join(lines)


def readme_eval_block() -> str:
  """The README's results table, rendered from the eval result file."""
  record = json.loads((paths.repo_root() / README_EVAL).read_text())
  prov = _record_provenance(record)
  extra = f'SciFact recall@100: {100 * record["scifact"]["recall@100"]:.2f}.' if 'scifact' in record \
      else ''
  return '\n'.join([README_START, '', markdown_table(record), '',
                    f'{extra} Written by `{prov.get("command", "?")}` at commit '
                    f'{prov.get("git_commit", "?")}, {prov.get("date", "?")}.'.strip(), '',
                    README_END])


# The rows docs/storage_tradeoff.md shows ("Selected rows"), in its order.
DOC_ROWS = ('float32', 'float16', 'float8_e4m3', 'int8', 'int8_sym', 'int4', 'pca50_float8',
            'pca50_int8', 'rb4', 'pq96', 'rb2', 'trunc128_float32', 'trunc64_float32', 'binary',
            'binary_asym', 'binary_rescore', 'binary_rescore_int8', 'opq48', 'pq48', 'rb1')


def doc_table(study, results: dict) -> str:
  """The docs' selected rows from a run's JSON (``study``: experiments/storage_tradeoff.py)."""
  stale = study.stale_sts(results)
  lines = ['| scheme | bytes | compression | SciFact nDCG@10 | retention | STS-B retention |',
           '|---|---:|---:|---:|---:|---:|']
  for n in DOC_ROWS:
    s, t = results['scifact'][n], results['stsb'].get(n)
    nbytes = f'{s["bytes_per_vector"]}' + (f' (+{s["bytes_on_disk"]} on disk)'
                                          if 'bytes_on_disk' in s else '')
    sts = 'n/a (stale)' if n in stale else f'{100 * t["retention"]:.1f} %' if t else '-'
    lines.append(f'| {study.label(n)} | {nbytes} | {s["compression"]:.0f}x | {100 * s["ndcg@10"]:.2f} | '
                 f'{100 * s["retention"]:.1f} % | {sts} |')
  return '\n'.join(lines)


STORAGE_DOC = 'docs/storage_tradeoff.md'
STORAGE_START = ('<!-- The table below is written by `python -m experiments.regenerate --readme` from '
                 'results/storage_tradeoff.json; do not edit it by hand. -->')


def storage_doc_block() -> str:
  """The storage study doc's selected rows, rendered from its result file."""
  spec = importlib.util.spec_from_file_location(
      '_storage_tradeoff', paths.repo_root() / 'experiments' / 'storage_tradeoff.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  record = json.loads((paths.repo_root() / 'results' / 'storage_tradeoff.json').read_text())
  prov = _record_provenance(record)
  return '\n'.join([STORAGE_START, '', doc_table(module, record), '',
                    f'Run: `{prov.get("command", "?")}` at commit {prov.get("git_commit", "?")}, '
                    f'{prov.get("date", "?")}.', '', README_END])


TABLES_DOC = 'docs/table_compression.md'


def _tables_start(stem: str) -> str:
  return ('<!-- The table below is written by `python -m experiments.regenerate --readme` from '
          f'results/{stem}.md (itself written with the JSON); do not edit it by hand. -->')


TABLES_START = _tables_start('table_compression')
TABLES_CRITEO_START = _tables_start('table_compression_criteo')


def tables_doc_block(stem: str = 'table_compression') -> str:
  """A table-compression study's AUC table in the doc: the results file's own table, as the run
  wrote it (stem 'table_compression' for MovieLens, 'table_compression_criteo' for the
  Criteo-shaped study)."""
  text = (paths.repo_root() / 'results' / f'{stem}.md').read_text()
  lines = text.split('\n')
  start = lines.index('## Test AUC (mean ± std over seeds) by budget') + 2
  end = lines.index('', start)
  record = json.loads((paths.repo_root() / 'results' / f'{stem}.json').read_text())
  prov = _record_provenance(record)
  return '\n'.join([_tables_start(stem), '', *lines[start:end], '',
                    f'Run: `{prov.get("command", "?")}` at commit {prov.get("git_commit", "?")}, '
                    f'{prov.get("date", "?")}.', '', README_END])


SHARDED_DOC = 'BENCHMARKS.md'
SHARDED_RESULT = 'results/bench_search_sharded_cpu.json'
SHARDED_START = ('<!-- The table below is written by `python -m experiments.regenerate --readme` from '
                 f'{SHARDED_RESULT}; do not edit it by hand. -->')


def _run_prefix(result: str, prov: dict) -> str:
  """'**Run** ([result](result), `command`, date, commit C, clean|dirty tree' of a record."""
  tree = 'dirty' if (prov.get('git') or {}).get('dirty') else 'clean'
  return (f'**Run** ([{result}]({result}), `{prov.get("command", "?")}`, '
          f'{str(prov.get("finished_at", "?"))[:10]}, commit {prov.get("git_commit", "?")}, '
          f'{tree} tree')


def sharded_doc_block() -> str:
  """BENCHMARKS.md's sharded-search run: settings line and per-kind table, from the result."""
  record = json.loads((paths.repo_root() / SHARDED_RESULT).read_text())
  prov, st = _record_provenance(record), record['settings']
  gib = lambda b: f'{b / 2 ** 30:.2f}'
  load = ', '.join(f'{x:.1f}' for x in st.get('loadavg_end', []))
  lines = [SHARDED_START, '',
           f'{_run_prefix(SHARDED_RESULT, prov)}; '
           f'{st["rows"]:,} x {st["dim"]}, {st["devices"]} forced CPU devices on the '
           f'{st["cores"]}-core machine, {st["queries"]:,} queries, k = {st["k"]}, {st["reps"]} '
           f'timed calls after a warm-up; load average at the end {load}):', '',
           '| codes | corpus | 1,000 queries (median) | queries/s | 50 queries vs unsharded | '
           'peak RSS searching | formula + runtime | + warm-up residue | placement peak / bound |',
           '|---|---:|---:|---:|---|---:|---:|---:|---:|']
  names = {'int8': 'int8', 'binary': 'binary (Hamming)'}
  for kind, r in record['results'].items():
    m, c = r['memory'], r['check']
    equal = ('ids and scores equal' if not c['mismatches'] and not c['score_mismatches']
             else f'{c["mismatches"]} id / {c["score_mismatches"]} score mismatches')
    corpus = r['n'] * m['formula']['bytes_per_row']
    lines.append(f'| {names.get(kind, kind)} | {gib(corpus)} GiB | {r["median_seconds"]:.1f} s | '
                 f'{r["queries_per_second"]:.1f} | {equal} ({c["queries"]}) | '
                 f'{gib(m["peak_rss_search_bytes"])} GiB | {gib(m["bound_bytes"])} GiB | '
                 f'{"within" if m["within_bound_with_warmup_residue"] else "above"} | '
                 f'{gib(m["peak_rss_placement_bytes"])} / {gib(m["placement_bound_bytes"])} GiB |')
  return '\n'.join([*lines, '', README_END])


LIMIT_DOC = 'docs/limit.md'
PATTERNS_RESULT = 'results/limit/patterns.json'
PATTERNS_START = ('<!-- The table below is written by `python -m experiments.regenerate --readme` '
                  f'from {PATTERNS_RESULT}; do not edit it by hand. -->')


def patterns_doc_block() -> str:
  """docs/limit.md's qrel-pattern table and encode time, from the patterns result."""
  record = json.loads((paths.repo_root() / PATTERNS_RESULT).read_text())
  prov = _record_provenance(record)
  pct = lambda row, k: f'{row[f"recall@{k}"]:.2f}'
  lines = [PATTERNS_START, '',
           f'Embedding the distinct texts took {record["encode_seconds"]:,.0f} s of MiniLM '
           f'encoding ({(prov.get("machine") or {}).get("cores", "?")} CPU cores). Run: '
           f'`{prov.get("command", "?")}` at commit {prov.get("git_commit", "?")}, '
           f'{str(prov.get("date", "?"))[:10]} '
           f'([`{PATTERNS_RESULT}`](../{PATTERNS_RESULT})).', '',
           '| pattern | pool | MiniLM recall@2 | @10 | @20 | @100 | BM25 recall@2 ... @100 |',
           '|---|---:|---:|---:|---:|---:|---:|']
  for name, r in record['results'].items():
    m, b = r['rows']['minilm_d384'], r['rows']['bm25']
    bm25 = sorted({pct(b, k) for k in (2, 10, 20, 100)})
    lines.append(f'| {name} | {r["pool_size"]:,} | {pct(m, 2)} | {pct(m, 10)} | {pct(m, 20)} | '
                 f'{pct(m, 100)} | {" / ".join(bm25)} |')
  return '\n'.join([*lines, '', README_END])


DECODER_RESULT = 'results/bench_decoder_cpu.json'
DECODER_START = ('<!-- The table below is written by `python -m experiments.regenerate --readme` '
                 f'from {DECODER_RESULT}; do not edit it by hand. -->')


def decoder_doc_block() -> str:
  """BENCHMARKS.md's decoder-encoding run, from its result file (a placeholder line while the
  file does not exist)."""
  path = paths.repo_root() / DECODER_RESULT
  if not path.exists():
    return '\n'.join([DECODER_START, '', 'Not run yet.', '', README_END])
  record = json.loads(path.read_text())
  prov, st = _record_provenance(record), record['settings']
  shape = st['shape']
  lines = [DECODER_START, '',
           f'{_run_prefix(DECODER_RESULT, prov)}, '
           f'{(prov.get("machine") or {}).get("cpu", "?")}; {st["param_count"] / 1e6:.0f}M-parameter '
           f'{shape["model_type"]} shape (hidden {shape["hidden_size"]}, {shape["num_hidden_layers"]} '
           f'layers, {shape["num_attention_heads"]} / {shape["num_key_value_heads"]} heads), '
           f'{st["texts"]} texts in batches of {st["batch"]}, {st["lengths"]}, {st["dtype"]}, '
           f'{st["runs"]} timed runs each; transformers attention: {st["transformers_attention"]}):',
           '', '| attention | embedjax (median s) | transformers (median s) | embedjax texts/s | '
           'ratio vs transformers | min cosine |', '|---|---:|---:|---:|---:|---:|']
  for mode, r in record['results'].items():
    med = r['median_seconds']
    lines.append(f'| {mode} | {med["embedjax"]:.2f} | {med["transformers"]:.2f} | '
                 f'{r["texts_per_second"]["embedjax"]:.1f} | {r["ratio_vs_transformers"]:.2f} | '
                 f'{r["min_cosine_pooled"]:.6f} |')
  probe = record.get('gemm_probe')
  if probe:
    lines += ['', f'The model\'s dominant operation alone (`gemm_probe`: a float32 '
              f'{probe["shape"][0][0]:,} x {probe["shape"][0][1]} by {probe["shape"][1][0]} x '
              f'{probe["shape"][1][1]:,} matmul): jax {probe["jax_gflops"]:.0f} GFLOP/s, torch '
              f'{probe["torch_gflops"]:.0f} GFLOP/s ({probe["jax_over_torch"]:.2f}x).']
  return '\n'.join([*lines, '', README_END])


GRADCACHE_RESULT = 'results/bench_gradcache_cpu.json'
GRADCACHE_START = ('<!-- The table below is written by `python -m experiments.regenerate --readme` '
                   f'from {GRADCACHE_RESULT}; do not edit it by hand. -->')


def gradcache_doc_block() -> str:
  """BENCHMARKS.md's gradient-cache table: every job of the result (cached chunks with and
  without remat, the plain step at small batches) and the plain step's estimate at the target."""
  record = json.loads((paths.repo_root() / GRADCACHE_RESULT).read_text())
  prov = _record_provenance(record)
  lines = [GRADCACHE_START, '',
           f'{_run_prefix(GRADCACHE_RESULT, prov)}, '
           f'{(prov.get("machine") or {}).get("cpu", "?")}; {record["model"]}, {record["batch"]:,} '
           f'pairs of {record["query_len"]} / {record["doc_len"]} tokens):', '',
           '| job | step | chunk | remat | XLA temporaries | peak RSS | step time | loss |',
           '|---|---|---:|---|---:|---:|---:|---:|']
  for name, s in record['summary'].items():
    job = record['jobs'][name]
    kind = 'gradient-cached' if job['mode'] == 'cached' else 'plain'
    batch = f'{job["batch"]:,} pairs'
    if s['step_s'] is not None:
      step = f'{s["step_s"]:,.0f} s ({job["batch"] / s["step_s"]:.1f} pairs/s)'
      rss, loss = f'{s["peak_rss_gib"]:.2f} GiB', f'{s["loss"]:.4f}'
    else:
      step = 'compiled only' if s['compile_only'] else (s['skipped'] or 'not run')
      rss, loss = '-', '-'
    lines.append(f'| {name} | {kind}, {batch} | {job["chunk_size"] or "-"} | {s["remat"]} | '
                 f'{s["xla_temp_gib"]:.2f} GiB | {rss} | {step} | {loss} |')
  est = record.get('plain_estimate')
  if est:
    lines += ['', f'The plain step at {est["target_batch"]:,} pairs (compiled, not run) would need '
              f'{est["xla_temp_gib"]:.1f} GiB of XLA temporaries.']
  return '\n'.join([*lines, '', README_END])


ENCODE_RESULT = 'results/bench_encode_cpu.json'
ENCODE_START = ('<!-- The table below is written by `python -m experiments.regenerate --readme` from '
                f'{ENCODE_RESULT}; do not edit it by hand. -->')
ENCODE_SETS = {'stsb': 'STS-B test sentences (short)',
               'scifact': 'SciFact corpus (most cut at 256 tokens)'}


def _load_average(settings: dict) -> str:
  before, after = settings.get('load_average_before'), settings.get('load_average_after')
  if not before:
    return 'load average not recorded'
  return f'load average {before[0]:.2f} before' + (f', {after[0]:.2f} after' if after else '')


def encode_doc_block() -> str:
  """BENCHMARKS.md's encoding table: medians per set and system, the ratio, the agreement."""
  record = json.loads((paths.repo_root() / ENCODE_RESULT).read_text())
  prov = _record_provenance(record)
  v = prov.get('versions') or {}
  lines = [ENCODE_START, '',
           f'{_run_prefix(ENCODE_RESULT, prov)}, {(prov.get("machine") or {}).get("cpu", "?")}; '
           f'jax {v.get("jax", "?")}, torch {v.get("torch", "?")}, sentence-transformers '
           f'{v.get("sentence_transformers", v.get("sentence-transformers", "?"))}; '
           f'{record["threads"]} threads each; {_load_average(record.get("settings", {}))}):', '',
           '| set | texts | mean tokens | embedjax s | sentence-transformers s | ratio | CPU s '
           '(embedjax / ST) | min cosine |',
           '|---|---:|---:|---:|---:|---:|---:|---:|']
  for key, name in ENCODE_SETS.items():
    if key not in record['median_s']:
      continue
    med, runs, cpu = record['median_s'][key], record['runs'][key], record['cpu_s'][key]
    texts = record['texts'][key]
    lines.append(
        f'| {name} | {texts["count"]:,} | {texts["mean_tokens"]} | {med["embedjax"]:.2f} '
        f'({len(runs["embedjax"])} runs) | {med["sentence_transformers"]:.2f} '
        f'({len(runs["sentence_transformers"])} runs) | '
        f'**{record["ratio_vs_sentence_transformers"][key]:.2f}x** | '
        f'{sorted(cpu["embedjax"])[len(cpu["embedjax"]) // 2]:.0f} / '
        f'{sorted(cpu["sentence_transformers"])[len(cpu["sentence_transformers"]) // 2]:.0f} | '
        f'{record["min_cosine"][key]:.6f} |')
  lines += ['', 'Ratio: sentence-transformers median seconds / embedjax median seconds (above 1: '
            'embedjax is faster). CPU s: the median CPU seconds of a timed run.']
  return '\n'.join([*lines, '', README_END])


TRAIN_RESULT = 'results/bench_train_cpu.json'
TRAIN_START = ('<!-- The table below is written by `python -m experiments.regenerate --readme` from '
               f'{TRAIN_RESULT}; do not edit it by hand. -->')
TRAIN_SYSTEMS = {'embedjax': 'embedjax (jit, donated state)',
                 'sentence_transformers': 'sentence-transformers (torch CPU, eager)',
                 'representax': 'representax (JAX peer, its own venv)'}


def train_doc_block() -> str:
  """BENCHMARKS.md's training-step table: median step, pairs/s, CPU seconds and ratios."""
  record = json.loads((paths.repo_root() / TRAIN_RESULT).read_text())
  prov = _record_provenance(record)
  settings = record.get('settings', {})
  b = record['batch']
  lines = [TRAIN_START, '',
           f'{_run_prefix(TRAIN_RESULT, prov)}, {(prov.get("machine") or {}).get("cpu", "?")}; '
           f'{settings.get("threads", "?")} threads each; {_load_average(settings)}; '
           f'{b["pairs"]} pairs of {b["query_len"]} / {b["doc_len"]} tokens, '
           f'{settings.get("rounds", "?")} rounds of {settings.get("steps_per_round", "?")} timed '
           'steps per system):', '',
           '| system | median s / step | pairs/s | CPU s / step | vs sentence-transformers | '
           'median of paired round ratios | no-dropout loss |',
           '|---|---:|---:|---:|---:|---:|---:|']
  for key, name in TRAIN_SYSTEMS.items():
    if key not in record['median_step_s']:
      continue
    ratio = (1.0 if key == 'sentence_transformers'
             else record['ratios_vs_sentence_transformers'][key])
    paired = ('-' if key == 'sentence_transformers'
              else f'{record["median_of_paired_round_ratios"][key]:.2f}x')
    lines.append(f'| {name} | {record["median_step_s"][key]:.2f} | {record["pairs_per_s"][key]:.1f} | '
                 f'{record["median_cpu_s_per_step"][key]:.1f} | **{ratio:.2f}x** | {paired} | '
                 f'{record["loss_no_dropout"][key]:.5f} |')
  rx = record.get('representax') or {}
  if rx and rx.get('outcome') != 'ran':
    lines += ['', f'representax: {rx.get("outcome", "not run")}.']
  return '\n'.join([*lines, '', README_END])


LLM_DOC = 'docs/llm_embedders.md'
LLM_START = ('<!-- The table below is written by `python -m experiments.regenerate --readme` from '
             'embedjax.train.memory and configs/decoder_*.py; do not edit it by hand. -->')
# (row name, config file, plan_memory mesh) of the doc's memory table.
LLM_ROWS = (('decoder-tiny, 1 CPU', 'configs/decoder_tiny.py', dict(data=1)),
            ('qwen3-0.6b, 1 GPU', 'configs/decoder_qwen3_0p6b.py', dict(data=1)),
            ('llama-8b, 64 devices FSDP', 'configs/decoder_llama_8b.py', dict(fsdp=64)),
            ('llama-8b, 8 x 8 FSDP x TP', 'configs/decoder_llama_8b.py', dict(fsdp=8, tensor=8)))


def llm_doc_block() -> str:
  """The LLM-embedder doc's memory table: the planner applied to the shipped decoder configs
  (their model, batch, lengths, remat and gradient caching; AdamW on every param)."""
  import dataclasses as dc

  from embedjax.models.decoder import NAMED_SHAPES, DecoderConfig
  from embedjax.models.spec import EmbedderSpec
  from embedjax.train.memory import memory_table
  rows = []
  for name, config, mesh in LLM_ROWS:
    cfg = load_config(str(paths.repo_root() / config))
    shape = NAMED_SHAPES[cfg.model.init.split(':', 1)[1]]
    decoder = DecoderConfig(**{'vocab_size': 30522, **shape}, dtype=cfg.model.dtype,
                            param_dtype=cfg.model.dtype, remat=cfg.model.remat,
                            attention=cfg.model.attention or 'causal')
    spec = EmbedderSpec(decoder=dc.replace(decoder), pooling=cfg.model.pooling or 'mean',
                        max_seq_length=cfg.model.max_seq_length)
    rows.append((name, spec, dict(batch=cfg.data.batch_size, query_len=cfg.data.query_len,
                                  doc_len=cfg.data.doc_len, chunk_size=cfg.train.chunk_size,
                                  grad_cache=cfg.train.grad_cache, mesh=mesh)))
  return '\n'.join([LLM_START, '', memory_table(rows), '', README_END])


def _write_block(rel: str, start_marker: str, block: str) -> None:
  from embedjax.io import atomic_write_text
  path = paths.repo_root() / rel
  text = path.read_text()
  start = text.index(start_marker)
  end = text.index(README_END, start) + len(README_END)
  atomic_write_text(path, text[:start] + block + text[end:])


LOSSES_RESULT = 'results/bench_losses_cpu.json'
LOSSES_START = ('<!-- The table below is written by `python -m experiments.regenerate --readme` '
                f'from {LOSSES_RESULT}; do not edit it by hand. -->')


def losses_doc_block() -> str:
  """BENCHMARKS.md's loss-cost run: each loss's value-and-grad against InfoNCE's at the same
  batch, and against one train step."""
  path = paths.repo_root() / LOSSES_RESULT
  if not path.exists():
    return '\n'.join([LOSSES_START, '', 'Not run yet.', '', README_END])
  record = json.loads(path.read_text())
  prov, results = _record_provenance(record), record['results']
  batches = sorted(results, key=int)
  lines = [LOSSES_START, '',
           f'{_run_prefix(LOSSES_RESULT, prov)}, {(prov.get("machine") or {}).get("cpu", "?")}; '
           f'one train step at batch {record["settings"]["step"]["batch"]}: '
           f'{record["step_median_ms"]:.0f} ms median):', '',
           '| loss | ' + ' | '.join(f'B={b}: ms (x InfoNCE)' for b in batches) +
           f' | fraction of a step (B={batches[0]}) |', '|---|' + '---:|' * (len(batches) + 1)]
  for loss in results[batches[0]]:
    cells = [f'{results[b][loss]["median_ms"]:.3f} ({results[b][loss]["ratio_vs_info_nce"]:.2f})'
             for b in batches]
    lines.append(f'| {loss} | ' + ' | '.join(cells) +
                 f' | {results[batches[0]][loss]["fraction_of_step"]:.1e} |')
  return '\n'.join([*lines, '', README_END])


LONG_RESULT = 'results/bench_long_context_cpu.json'
LONG_START = ('<!-- The table below is written by `python -m experiments.regenerate --readme` '
              f'from {LONG_RESULT}; do not edit it by hand. -->')


def long_context_doc_block() -> str:
  """BENCHMARKS.md's long-input run: time and peak memory against length, blocked and plain."""
  path = paths.repo_root() / LONG_RESULT
  if not path.exists():
    return '\n'.join([LONG_START, '', 'Not run yet.', '', README_END])
  record = json.loads(path.read_text())
  prov = _record_provenance(record)
  lines = [LONG_START, '',
           f'{_run_prefix(LONG_RESULT, prov)}, {(prov.get("machine") or {}).get("cpu", "?")}; '
           f'{record["model"]}, one text per length, query blocks of {record["block"]}):', '',
           '| tokens | blocked: median s | blocked: peak GiB | plain: median s | plain: peak GiB |',
           '|---:|---:|---:|---:|---:|']
  for length, cells in sorted(record['results'].items(), key=lambda kv: int(kv[0])):
    row = [f'{int(length):,}']
    for name in ('blocked', 'plain'):
      r = cells[name]
      row += (['failed', '-'] if 'error' in r else
              [f'{r["median_s"]:.2f}', f'{r["peak_rss_gib"]:.2f}'])
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join([*lines, '', README_END])


MULTIVECTOR_RESULT = 'results/bench_multivector_cpu.json'
MULTIVECTOR_START = ('<!-- The table below is written by `python -m experiments.regenerate --readme` '
                     f'from {MULTIVECTOR_RESULT}; do not edit it by hand. -->')


def multivector_doc_block() -> str:
  """BENCHMARKS.md's multi-vector run: exact MaxSim against PLAID-style search."""
  path = paths.repo_root() / MULTIVECTOR_RESULT
  if not path.exists():
    return '\n'.join([MULTIVECTOR_START, '', 'Not run yet.', '', README_END])
  record = json.loads(path.read_text())
  prov = _record_provenance(record)
  exact, plaid = record['results']['exact'], record['results']['plaid']
  gib = 2 ** 30
  lines = [MULTIVECTOR_START, '',
           f'{_run_prefix(MULTIVECTOR_RESULT, prov)}, {(prov.get("machine") or {}).get("cpu", "?")}; '
           f'{record["queries"]} queries, {record["documents"]:,} documents, '
           f'{record["counted_doc_tokens"]:,} document tokens of {record["dim"]} dims, k = {record["k"]}):',
           '', '| search | queries/s | bytes per document | peak RSS after | recall@k vs exact | build |',
           '|---|---:|---:|---:|---:|---|',
           f'| exact MaxSim, float32 | {exact["queries_per_second"]:.2f} | {exact["bytes_per_doc"]:,.0f} | '
           f'{exact["peak_rss_bytes_after"] / gib:.2f} GiB | 1 | - |',
           f'| PLAID-style, {plaid["centroids"]:,} centroids, {plaid["bits"]}-bit residuals '
           f'({plaid["settings"].split(" (")[0]}) | {plaid["queries_per_second"]:.2f} | '
           f'{plaid["bytes_per_doc"]:,.0f} | {plaid["peak_rss_bytes_after"] / gib:.2f} GiB | '
           f'{plaid["recall_at_k_vs_exact"]:.4f} | k-means {plaid["fit_s"]:.0f} s ({plaid["kmeans"]}), '
           f'index {plaid["build_s"]:.0f} s |']
  for name in ('int8', 'binary'):  # exhaustive MaxSim over embedjax.quant codes (records since f2dbd49)
    if name in record['results']:
      r = record['results'][name]
      lines.append(f'| exact MaxSim over {name} tokens (float queries) | {r["queries_per_second"]:.2f} | '
                   f'{r["bytes_per_doc"]:,.0f} | {r["peak_rss_bytes_after"] / gib:.2f} GiB | '
                   f'{r["recall_at_k_vs_exact"]:.4f} | codes {r["build_s"]:.0f} s |')
  return '\n'.join([*lines, '', README_END])


def write_readme_table() -> None:
  """Rewrites the generated tables of README.md and the docs from their result files."""
  _write_block('README.md', README_START, readme_eval_block())
  _write_block(STORAGE_DOC, STORAGE_START, storage_doc_block())
  _write_block(TABLES_DOC, TABLES_START, tables_doc_block())
  _write_block(TABLES_DOC, TABLES_CRITEO_START, tables_doc_block('table_compression_criteo'))
  _write_block(SHARDED_DOC, SHARDED_START, sharded_doc_block())
  _write_block(LLM_DOC, LLM_START, llm_doc_block())
  _write_block(LIMIT_DOC, PATTERNS_START, patterns_doc_block())
  _write_block(SHARDED_DOC, DECODER_START, decoder_doc_block())
  _write_block(SHARDED_DOC, GRADCACHE_START, gradcache_doc_block())
  _write_block(SHARDED_DOC, ENCODE_START, encode_doc_block())
  _write_block(SHARDED_DOC, TRAIN_START, train_doc_block())
  _write_block(SHARDED_DOC, LOSSES_START, losses_doc_block())
  _write_block(SHARDED_DOC, LONG_START, long_context_doc_block())
  _write_block(SHARDED_DOC, MULTIVECTOR_START, multivector_doc_block())


def _flags(fv) -> None:
  flags.DEFINE_boolean('list', False, 'only print each target and its state', flag_values=fv)
  flags.DEFINE_list('only', [], 'target names to consider (default: all)', flag_values=fv)
  flags.DEFINE_boolean('readme', False, 'only rewrite the generated tables of README.md, '
                       f'{STORAGE_DOC} and {TABLES_DOC} from their result files', flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  fv = flags.FlagValues()
  _flags(fv)
  try:
    fv([sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
  except flags.Error as e:
    print(f'regenerate: {e}', file=sys.stderr)
    return 2
  if fv.readme:
    write_readme_table()
    return 0
  names = {t.name for t in TARGETS}
  unknown = sorted(set(fv.only) - names)
  if unknown:
    print(f'regenerate: unknown target(s) {unknown}; choose from {sorted(names)}', file=sys.stderr)
    return 2
  todo = [t for t in TARGETS if not fv.only or t.name in fv.only]
  failed = []
  for target in todo:
    state, why = status(target)
    if target.device == 'gpu':
      print(f'[gpu]     {target.name}: {state} ({why}); last measured {last_measured(target)}; '
            f'needs a GPU: {" ".join(target.command[1:])}' + (f' ({target.note})' if target.note
                                                                 else ''), flush=True)
      continue
    print(f'[{state}] {target.name}: {why}' + (f' ({target.note})' if target.note else ''),
          flush=True)
    if state == 'current' or fv.list:
      continue
    command = target.command
    if target.study:  # the study skips runs whose config is current: name the stale ones
      stale = sorted(study_runs(target)[2])
      command = (*command, f'--redo={",".join(stale)}') if stale else command
    print(f'  running: {" ".join(command[1:])}', flush=True)
    if subprocess.run(command, cwd=paths.repo_root()).returncode:
      failed.append(target.name)
    elif target.name in ('eval', 'storage_tradeoff'):
      write_readme_table()
  if failed:
    print(f'regenerate: failed: {failed}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
