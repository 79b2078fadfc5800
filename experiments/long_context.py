r"""The long-context study: score against input length per method, each (model, method, task,
length) cell a run with its own record; the summary is computed from the records.

python -m experiments.long_context --config configs/long_context.py [--only-models minilm]
python -m experiments.long_context --config configs/long_context.py --summarize

Methods and tasks: configs/long_context.py. A cell's record,
``<out>/runs/<model>/<method>/<task>_<length>.json``, holds the task's metrics (main metric:
nDCG@1 for passkey / needle, nDCG@10 for long SciFact), the config hash and the provenance of the
call; a cell whose record has the current config hash is skipped, so the grid fills in over
several sessions. Inside a cell, embeddings are kept in shards of 32 texts under
``<runs_dir>/cache`` until its record is written, so even an hours-long cell (long SciFact at 8k
tokens) resumes where it stopped. ``summary.json`` is
``{"minilm": {METHOD: {TASK: {LENGTH: score}}}, "rope": {...}}``; ``long_context.md`` the
tables and ``long_context.png`` score against length per method, one panel per task
(tests/test_result_summaries.py recomputes them from the records).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path

from embedjax import paths
from embedjax.config import ConfigError, run_main
from embedjax.io import atomic_write_json, atomic_write_text
from embedjax.provenance import Run, config_hash

MODELS = ('minilm', 'rope')
# RoPE methods that are trained first (configs/long_context_train.py), then evaluated like the
# rest; none_trained (plain RoPE, the same training) is their control
LEARNED = ('clex', 'seqpe', 'none_trained')
TRAIN_CONFIG = 'configs/long_context_train.py'


def out_dir(cfg) -> Path:
  return paths.repo_root() / (cfg.out_dir or 'results/long_context')


def runs_dir(cfg) -> Path:
  """Where the learned methods train (checkpoints and exports; not results)."""
  return paths.repo_root() / (cfg.runs_dir or 'runs/long_context')


def rope_model_path(cfg) -> Path:
  """The RoPE model's folder: ``cfg.rope_model``, relative to the repository unless absolute."""
  return paths.repo_root() / cfg.rope_model


def cell_path(root: Path, model: str, method: str, task: str, length: int) -> Path:
  return root / 'runs' / model / method / f'{task}_{length}.json'


def _cell_name(model: str, method: str, task: str, length: int) -> str:
  return f'{model}/{method}/{task}_{length}'


def _parse_cell(name: str) -> tuple[str, str, str, int]:
  model, method, rest = name.split('/')
  task, length = rest.rsplit('_', 1)
  return model, method, task, int(length)


# What `make results` (experiments/regenerate.py) asks of a study, for the default config's grid:
# every run as (cell, seed) with cell = 'model/method/task_length' (nothing random: seed 0).


def _default_config():
  from embedjax.config import load_config
  return load_config(str(paths.repo_root() / 'configs' / 'long_context.py'))


def expected_runs(seeds=None) -> list[tuple[str, int]]:
  del seeds
  return [(_cell_name(*cell), 0) for cell in cells(_default_config())]


def record_path(cell: str, seed: int = 0, root: Path | None = None) -> Path:
  del seed
  return cell_path(root or out_dir(_default_config()), *_parse_cell(cell))


def config_is_current(cell: str, seed: int = 0, root: Path | None = None) -> bool:
  path = record_path(cell, seed, root)
  return path.is_file() and json.loads(path.read_text()).get('config_hash') == cell_hash(
      _default_config(), *_parse_cell(cell))


def _factor(method: str) -> float:
  return float(method.rsplit('_', 1)[1].rstrip('x'))


def cell_hash(cfg, model: str, method: str, task: str, length: int) -> str:
  """What a cell's result depends on: its coordinates and the settings its method reads."""
  settings = {'model': cfg.model if model == 'minilm' else cfg.rope_model,
              'method': method, 'task': task, 'length': length}
  if model == 'rope':  # the folder's contents, not only its name: a retrained model is another
    settings['model_sha256'] = rope_model_sha256(cfg)
  if method.startswith('interpolate') or model == 'rope':
    settings['attention_block'] = cfg.attention_block
  if method == 'chunk':
    settings['max_tokens'] = cfg.max_tokens
  if model == 'rope':
    settings.update(trained=cfg.rope_trained_length, self_extend=cfg.self_extend.to_dict())
  if model == 'rope' and method in LEARNED:  # the trained model is part of what is scored
    settings.update(learned_max_factor=cfg.learned_max_factor,
                    train=config_hash(train_config(method, Path('BASE'))))
  return config_hash(settings)


def rope_model_sha256(cfg) -> str:
  """sha256 of the RoPE model's folder (every file), or 'absent' before it exists."""
  from embedjax.provenance import tree_sha256
  folder = rope_model_path(cfg)
  return tree_sha256(folder) if folder.is_dir() else 'absent'


# --- learned position methods ----------------------------------------------------------------


def train_config(kind: str, init_folder: Path, overrides=()):
  """configs/long_context_train.py:KIND starting from ``init_folder`` (``overrides``: more
  ``--config.x=y`` arguments)."""
  from embedjax.config import load_config
  return load_config(f'{paths.repo_root() / TRAIN_CONFIG}:{kind}',
                     [f'--config.model.init=pretrained:{init_folder}', *overrides])


def learned_init_folder(base: Path, kind: str, max_factor: int, dest: Path) -> Path:
  """A copy of the RoPE model's folder whose backbone config.json has the learned position
  method: CLEX's rope_scaling, or SeqPE instead of the rotation (both trained for positions up
  to ``max_factor`` times the trained length), or for ``none_trained`` nothing changed. Their
  new parameters are initialised when the folder is read (embedjax.models.hf_decoder). Written
  to a temporary folder, then renamed."""
  import json as json_lib
  import shutil
  import tempfile
  from embedjax.models.st_layout import read_layout
  if dest.is_dir():
    return dest
  dest.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{dest.name}.tmp', dir=dest.parent))
  shutil.copytree(base, tmp, dirs_exist_ok=True)
  backbone = read_layout(tmp).backbone_dir
  hf = json_lib.loads((backbone / 'config.json').read_text())
  if kind == 'clex':
    hf['rope_scaling'] = {'rope_type': 'clex', 'max_factor': int(max_factor)}
  elif kind == 'seqpe':
    hf.update(rope_scaling=None, position_encoding='seqpe', seqpe={'max_factor': int(max_factor)})
  atomic_write_text(backbone / 'config.json', json_lib.dumps(hf, indent=2))
  tmp.rename(dest)
  return dest


def learned_model(cfg, kind: str, runs: Path, progress: bool = True) -> Path:
  """Trains (or resumes) the RoPE model with a learned position method; returns its export."""
  from embedjax.train.loop import dry_build, train
  # one folder per (base model, factor, training config): a changed setting trains afresh
  key = config_hash({'base': str(cfg.rope_model), 'base_sha256': rope_model_sha256(cfg),
                     'max_factor': cfg.learned_max_factor,
                     'train': config_hash(train_config(kind, Path('BASE')))})[:12]
  init = learned_init_folder(rope_model_path(cfg), kind, cfg.learned_max_factor,
                             runs / kind / key / 'init')
  tcfg = train_config(kind, init)
  dry_build(tcfg)
  summary = train(tcfg, runs / kind / key / 'train', progress=progress)
  return Path(summary['export'])


# --- methods ----------------------------------------------------------------------------------


def minilm_encoder(model, method: str, cfg, length: int):
  """(texts -> embeddings) of all-MiniLM-L6-v2 under a method, for inputs of ``length`` tokens."""
  from embedjax.encoding import encode
  from embedjax.long_inputs import chunk_and_pool
  from embedjax.models.positions import extend_positions
  if method == 'truncate':
    return lambda texts: encode(model, list(texts), progress=False)
  if method == 'chunk':
    return lambda texts: chunk_and_pool(model, list(texts), max_tokens=cfg.max_tokens)
  if method.startswith('interpolate_'):
    n = int(model.spec.bert.max_positions * _factor(method))
    params, bert = extend_positions(model.params, model.spec.bert, n)
    bert = dataclasses.replace(bert, attention_block=cfg.attention_block)
    stretched = dataclasses.replace(
        model, params=params, tokenizer=model.tokenizer.with_max_length(n),
        spec=dataclasses.replace(model.spec, bert=bert, max_seq_length=n))
    return lambda texts: encode(stretched, list(texts), progress=False)
  raise ConfigError(f'minilm method {method!r}: truncate, chunk or interpolate_<N>x')


def rope_factor(method: str, cfg, length: int) -> float:
  """The scale factor of a training-free RoPE method for inputs of ``length`` tokens (a cell
  passes its longest text's): the ``_<N>x`` of its name, or for a name without one (``linear``,
  ``dynamic``, ``yarn``, ``ntk``) the length over the trained length, at least 1: LongEmbed's s
  for each target length, so that every token is read and no position falls outside the
  stretched range."""
  if method.endswith('x') and '_' in method:
    try:
      return _factor(method)
    except ValueError:
      raise ConfigError(f'rope method {method!r}: the N of NAME_<N>x must be a number') from None
  return max(1.0, length / cfg.rope_trained_length)


def self_extend_group(cfg, length: int) -> int:
  """SelfExtend's group size at an input length: ``cfg.self_extend.group``, or when that is 0 the
  smallest group whose grouped positions reach ``length`` inside the trained length (the paper's
  (trained - window) x group + window >= length); 1 (plain attention) within the trained length."""
  if cfg.self_extend.group:
    return int(cfg.self_extend.group)
  trained, window = cfg.rope_trained_length, cfg.self_extend.window
  return max(1, math.ceil((length - window) / (trained - window)))


def rope_config(decoder, method: str, cfg, length: int):
  """The decoder config of a RoPE method for inputs of ``length`` tokens (``decoder``: the model's
  DecoderConfig). A method whose factor or group comes to 1 at that length is the model as
  trained."""
  trained = cfg.rope_trained_length
  if method == 'none' or method in LEARNED:  # a learned method's model carries its own config
    return decoder
  if method == 'self_extend':
    if not 0 < cfg.self_extend.window < trained:
      raise ConfigError(f'self_extend.window {cfg.self_extend.window}: between 0 and the trained '
                        f'length {trained}')
    group = self_extend_group(cfg, length)
    if group < 2:
      return decoder
    return dataclasses.replace(decoder, self_extend_group=group,
                               self_extend_window=cfg.self_extend.window)
  kind = method.rsplit('_', 1)[0] if method.endswith('x') and '_' in method else method
  if kind not in ('linear', 'dynamic', 'yarn', 'ntk'):
    raise ConfigError(f'rope method {method!r}: none, self_extend, or linear / dynamic / yarn / '
                      'ntk, each with an optional _<N>x (a fixed factor; without: the length over '
                      'the trained length)')
  f = rope_factor(method, cfg, length)
  if f <= 1:
    return decoder
  if kind == 'ntk':
    from embedjax.models.rope import ntk_aware_theta
    return dataclasses.replace(decoder, rope_theta=ntk_aware_theta(decoder.rope_theta, f,
                                                                   decoder.head_size),
                               max_position_embeddings=round(trained * f))
  scaling = {'linear': {'rope_type': 'linear', 'factor': f},
             'dynamic': {'rope_type': 'dynamic', 'factor': f},
             'yarn': {'rope_type': 'yarn', 'factor': f, 'original_max_position_embeddings': trained}}
  # dynamic NTK keeps the trained length as its threshold; the others state the extended length
  max_pos = trained if kind == 'dynamic' else round(trained * f)
  return dataclasses.replace(decoder, rope_scaling=tuple(sorted(scaling[kind].items())),
                             max_position_embeddings=max_pos)


def rope_variant(model, method: str, cfg, length: int):
  """The RoPE model as a method reads inputs of ``length`` tokens: its decoder config and the
  number of tokens it reads: the length, or less where the range of a fixed linear / dynamic /
  yarn factor ends (plain rotary tables, NTK's included, read any length)."""
  decoder = rope_config(model.spec.decoder, method, cfg, length)
  n = max(length, model.spec.max_seq_length)
  if not decoder.rope_scaling:  # plain rotary tables: the stated maximum is only a label
    decoder = dataclasses.replace(decoder, max_position_embeddings=max(
        n, decoder.max_position_embeddings))
  n = min(n, decoder.max_positions)
  if not decoder.self_extend_group:  # SelfExtend keeps its full (L, L) logits
    decoder = dataclasses.replace(decoder, attention_block=cfg.attention_block)
  return dataclasses.replace(model, tokenizer=model.tokenizer.with_max_length(n),
                             spec=dataclasses.replace(model.spec, decoder=decoder,
                                                      max_seq_length=n))


def longest_text(model, data) -> int:
  """Tokens (special tokens included) of the longest query or document of a retrieval task's
  data under the model's tokenizer. The tasks count words and punctuation marks, not tokens:
  in WordPiece their texts are longer (passkey and needle up to 15%, long SciFact's documents
  about 22% on average), so a method that reads only the task's nominal length would cut their
  ends, where one in five passkeys and needles lies."""
  tok = model.tokenizer.with_max_length(1 << 30)
  texts = [*data.query_texts, *data.corpus_texts]
  return max(len(ids) for ids in tok.encode(texts))


def _tokens_read(model, method: str, cfg, read: int) -> int:
  """How many tokens of the cell's longest text (``read`` tokens) the method reads."""
  if method == 'truncate':
    return min(read, model.spec.max_seq_length)
  if method == 'chunk':
    return min(read, cfg.max_tokens)
  if method.startswith('interpolate_'):
    return min(read, int(model.spec.bert.max_positions * _factor(method)))
  return min(read, rope_variant(model, method, cfg, read).spec.max_seq_length)


def rope_encoder(model, method: str, cfg, length: int):
  from embedjax.encoding import encode
  variant = rope_variant(model, method, cfg, length)
  return lambda texts: encode(variant, list(texts), progress=False)


# --- resuming inside a cell --------------------------------------------------------------------

SHARD_TEXTS = 32  # texts per cached shard: at 8k tokens on 2 cores, about 12 minutes of encoding


def resumable(encode_fn, cache: Path, label: str, shard: int = SHARD_TEXTS):
  """``encode_fn`` with its embeddings kept in shards of ``shard`` texts under ``cache`` (one
  ``.npy`` per shard, written atomically, named by the hash of the shard's texts), so that an
  interrupted cell resumes at its last finished shard: long SciFact at 8k tokens is hours of
  encoding on 2 cores, more than one sitting. The texts are always encoded in the same shards,
  cached or not, so a resumed cell computes what an uninterrupted one does. The returned function
  counts the texts it read from the cache in its ``.cached`` attribute and prints progress."""
  import hashlib
  import io
  import numpy as np
  from embedjax.io import atomic_write_bytes

  def fn(texts):
    texts = list(texts)
    if not texts:
      return encode_fn(texts)
    parts = []
    for i in range(0, len(texts), shard):
      part = texts[i:i + shard]
      key = hashlib.sha256('\x00'.join(part).encode()).hexdigest()[:24]
      path = cache / f'{key}.npy'
      if path.is_file():
        parts.append(np.load(path))
        fn.cached += len(part)
        continue
      emb = np.asarray(encode_fn(part))
      buf = io.BytesIO()
      np.save(buf, emb)
      atomic_write_bytes(path, buf.getvalue())
      parts.append(emb)
      if len(texts) > shard:
        print(f'  {label}: {min(i + shard, len(texts))}/{len(texts)} texts', flush=True)
    return np.concatenate(parts)
  fn.cached = 0
  return fn


# --- cells ------------------------------------------------------------------------------------


def cells(cfg, models=MODELS):
  """(model, method, task, length) of the grid, shortest inputs first: a cell's cost grows with
  its length (long SciFact at 8k tokens takes hours on 2 cores), so an interrupted study has
  every method and task at the shorter lengths rather than one method at every length."""
  for model in models:
    if model == 'rope' and not cfg.rope_model:
      continue
    for length in cfg.lengths:
      for task in cfg.tasks:
        for method in (cfg.methods if model == 'minilm' else cfg.rope_methods):
          yield model, method, task, int(length)


def run_cell(cfg, loaded: dict, model: str, method: str, task: str, length: int, root: Path,
             force: bool = False):
  """Scores one cell and writes its record; None when its record is current (same config
  hash), unless ``force`` (made again all the same: ``--redo``, for a record whose code
  changed)."""
  from embedjax.evals.tasks import run_task, task_inputs
  path = cell_path(root, model, method, task, length)
  chash = cell_hash(cfg, model, method, task, length)
  if (not force and path.is_file()
      and json.loads(path.read_text()).get('config_hash') == chash):
    return None
  name = f'{task}_{length}'
  data_dir = paths.shared_data_dir()
  run = Run(config={'model': model, 'method': method, 'task': task, 'length': length},
            seeds=0).start()
  source = model
  if model == 'rope' and method in LEARNED:  # trained once, then scored at every length
    source = f'rope_{method}'
    if source not in loaded:
      from embedjax.models.pretrained import load_pretrained
      loaded[source] = load_pretrained(str(learned_model(cfg, method, runs_dir(cfg))))
  from embedjax.evals.tasks import TASKS
  longest = longest_text(loaded[source], TASKS[name].load(data_dir))
  # A RoPE method reads every token: its factor (or SelfExtend's group) is set by the tokens it
  # reads, the longest text's, not by the task's nominal length. MiniLM's methods keep their
  # ranges (truncation 256 tokens, interpolate_Nx 512 N, chunk-and-pool ``max_tokens``).
  read = max(length, longest)
  if model == 'minilm':
    encoder = minilm_encoder(loaded[source], method, cfg, length)
  else:
    encoder = rope_encoder(loaded[source], method, cfg, read)
  reads = _tokens_read(loaded[source], method, cfg, read)
  cache = runs_dir(cfg) / 'cache' / model / method / f'{name}-{chash[:16]}'
  encoder = resumable(encoder, cache, _cell_name(model, method, task, length))
  result = run_task(name, encoder, data_dir)
  run.add_inputs(*task_inputs([name], data_dir))
  if model == 'rope':  # the scored weights, hashed: the config names only a folder
    run.add_inputs(*sorted(Path(loaded[source].source).rglob('*.safetensors')))
  record = {'model': model, 'method': method, 'task': task, 'length': length, 'result': result,
            'score': result[result['main_metric']],
            # the task's longest text in the model's tokens, and how many of them the method read
            'longest_text_tokens': longest, 'tokens_read': reads,
            # texts whose embeddings an interrupted earlier call of this cell had made: result's
            # 'seconds' then covers only the rest
            'texts_resumed': encoder.cached, **run.finish().provenance(), 'config_hash': chash}
  atomic_write_json(path, record)
  shutil.rmtree(cache, ignore_errors=True)
  print(f'{model} {method:16s} {task:13s} {length:5d}  {result["main_metric"]} '
        f'{record["score"]:.4f}  ({result["seconds"]:.0f} s)', flush=True)
  return record


# --- summary ----------------------------------------------------------------------------------


def load_records(root: Path) -> list[dict]:
  return [json.loads(p.read_text()) for p in sorted((root / 'runs').glob('*/*/*.json'))]


def summarize(records: list[dict]) -> dict:
  out: dict = {m: {} for m in MODELS}
  for r in records:
    out[r['model']].setdefault(r['method'], {}).setdefault(r['task'], {})[str(r['length'])] = \
        r['score']
  return out


def markdown(summary: dict) -> str:
  lines = ['# Long context: score against input length', '',
           'Written by `python -m experiments.long_context` from the per-cell records '
           '(passkey / needle: nDCG@1; long_scifact: nDCG@10).']
  for model, methods in summary.items():
    if not methods:
      continue
    tasks = sorted({t for per in methods.values() for t in per})
    for task in tasks:
      lengths = sorted({int(n) for per in methods.values() for n in per.get(task, {})})
      lines += ['', f'**{model} / {task}**', '',
                '| method | ' + ' | '.join(str(n) for n in lengths) + ' |',
                '|---|' + '---|' * len(lengths)]
      for method, per in methods.items():
        row = per.get(task, {})
        lines.append(f'| {method} | ' + ' | '.join(
            f'{row[str(n)]:.3f}' if str(n) in row else '-' for n in lengths) + ' |')
  return '\n'.join(lines) + '\n'


def plot(summary: dict, path: Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  panels = [(m, t) for m, methods in summary.items()
            for t in sorted({t for per in methods.values() for t in per})]
  if not panels:
    return
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
  for ax, (model, task) in zip(axes[0], panels):
    for method, per in summary[model].items():
      pts = sorted((int(n), v) for n, v in per.get(task, {}).items())
      if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='o', label=method)
    ax.set_xscale('log', base=2)
    ax.set_xlabel('input length (tokens)')
    ax.set_title(f'{model}: {task}')
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_summary(root: Path) -> dict:
  summary = summarize(load_records(root))
  atomic_write_json(root / 'summary.json', summary)
  atomic_write_text(root / 'long_context.md', markdown(summary))
  plot(summary, root / 'long_context.png')
  return summary


def dry_run(cfg) -> dict:
  """Checks the grid without loading a model: every method name parses, every task exists."""
  from embedjax.evals.tasks import TASKS
  for task in cfg.tasks:
    for length in cfg.lengths:
      if f'{task}_{length}' not in TASKS:
        raise ConfigError(f'task {task}_{length} is not a task of the eval runner')
  for method in cfg.methods:
    if not (method in ('truncate', 'chunk') or method.startswith('interpolate_')):
      raise ConfigError(f'minilm method {method!r}: truncate, chunk or interpolate_<N>x')
    if method.startswith('interpolate_'):
      _factor(method)
  from embedjax.models.decoder import DecoderConfig
  for method in cfg.rope_methods:
    for length in cfg.lengths:
      rope_config(DecoderConfig(), method, cfg, int(length))
  return {'cells': sum(1 for _ in cells(cfg, ('minilm',)))}


def main(cfg, fv) -> int:
  root = out_dir(cfg)
  if not fv['summarize'].value:
    from embedjax.models.pretrained import load_pretrained
    models = [m for m in fv['only-models'].value or MODELS if m in MODELS]
    loaded = {}
    if 'minilm' in models:
      loaded['minilm'] = load_pretrained(cfg.model)
    if 'rope' in models and cfg.rope_model:
      folder = rope_model_path(cfg)
      if folder.is_dir():
        loaded['rope'] = load_pretrained(str(folder))
      else:  # the MiniLM cells need nothing trained: they run, the RoPE cells wait
        print(f'skipping the RoPE cells: no model at {folder} (train it: python -m '
              'experiments.recipes --cells distill_leaf_decoder --seeds 0)', flush=True)
        models = [m for m in models if m != 'rope']
    redo = redo_cells(cfg, fv['redo'].value)
    for cell in cells(cfg, models):
      run_cell(cfg, loaded, *cell, root, force=_cell_name(*cell) in redo)
      write_summary(root)
  print(markdown(write_summary(root)))
  return 0


def redo_cells(cfg, names) -> set[str]:
  """The cells ``--redo`` names, as 'model/method/task_length' (a trailing '/seed0', as `make
  results` names a study's runs, is allowed); a name that is no cell of the grid is an error."""
  grid = {_cell_name(*cell) for cell in cells(cfg)}
  out = set()
  for name in names:
    cell = name[:-len('/seed0')] if name.endswith('/seed0') else name
    if cell not in grid:
      raise ConfigError(f'--redo {name!r}: not a cell of the grid (model/method/task_length)')
    out.add(cell)
  return out


def _flags(fv) -> None:
  from absl import flags
  flags.DEFINE_list('only-models', [], 'minilm and/or rope (default: both)', flag_values=fv)
  flags.DEFINE_list('redo', [], 'cells (model/method/task_length) to make again although their '
                    'record has the current config (make results names those whose code changed)',
                    flag_values=fv)
  flags.DEFINE_bool('summarize', False, 'only recompute the summary from the records',
                    flag_values=fv)


if __name__ == '__main__':
  sys.exit(run_main(main, 'configs/long_context.py', define_flags=_flags))
