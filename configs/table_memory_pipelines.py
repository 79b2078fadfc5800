r"""The 10M-id memory check for the table families whose training holds a full-size float table.

python -m experiments.table_memory_pipelines --config configs/table_memory_pipelines.py

The check of configs/table_compression.py:memory trains the families whose training state is
small (hashing, QR, ..., ROBE, AdaEmbed) for a few steps at 10M ids x 64 dims. These train a
full-size float32 table, or more, before (or while) they compress: dedup's pre-training, PEP's
threshold search and its masked retraining, AutoDim's supernet of every candidate width,
OptEmbed's supernet, MGQE's query vectors, LPT's float masters. Here each one's whole
pipeline runs in a process of its own, every stage one epoch of ``steps`` batches, and the
process's peak RSS is its training memory; the full table itself is measured at 10M ids, not
extrapolated. The data, widths and batch are the memory check's (one truth: read from that
config); the pipelines' settings are the MovieLens study's, every stage shortened to one epoch.
"""

import importlib.util
from pathlib import Path

import ml_collections as mlc


def _table_compression(arg=None):
  """configs/table_compression.py's config (config files are not a package)."""
  path = Path(__file__).parent / 'table_compression.py'
  spec = importlib.util.spec_from_file_location('_configs_table_compression', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg=None):
  if arg is not None:
    raise ValueError(f'configs/table_memory_pipelines.py takes no argument, got {arg!r}')
  study = _table_compression()
  memory = study.memory
  c = mlc.ConfigDict()
  c.vocab_sizes = tuple(memory.vocab_sizes)  # 10,000,000 ids over 8 fields
  c.dim = memory.dim                          # 64
  c.rows = memory.rows                        # synthetic Zipf rows generated (seed 0)
  c.batch_size = memory.batch_size            # rows per step
  c.steps = memory.steps                      # steps per training stage (its one epoch)
  c.eval_rows = 8192                          # validation and test rows (searches score on them)
  c.budgets = tuple(memory.budgets)           # fractions of the full table's bytes
  # 'full' once, at the full table's own size (budget 1): the measurement the memory check
  # extrapolates from 0.5M-2M ids.
  # int8 is not here: it trains the float table and quantizes it once trained, so its training
  # is the full table's (and at 10% and 1% it cannot be sized: int8 serves 28% of the bytes).
  c.methods = ('full', 'dedup', 'pep', 'autodim', 'optembed', 'mgqe', 'lpt')
  # Each family's settings: the MovieLens study's (for_budget's keyword arguments).
  c.method_kw = mlc.ConfigDict({m: dict(study.method_kw[m]) for m in c.methods})
  # What the pipelines read, from the MovieLens study, every stage one epoch here.
  c.optimizer = study.optimizer               # adam
  c.lr = study.lr                             # its learning rate
  c.epochs = 1                                # the (last) training stage: `steps` steps
  c.eval_batch_size = study.eval_batch_size   # rows per evaluation call
  c.optembed = mlc.ConfigDict(study.optembed.to_dict())  # alpha, the search's size
  c.optembed.supernet_epochs = 1              # its supernet: one epoch
  c.dedup = mlc.ConfigDict(study.dedup.to_dict())  # tolerance, attempts, similarity
  c.dedup.pretrain_epochs = 1                 # its pre-training: one epoch
  c.pep = mlc.ConfigDict({'search_epochs': 1})      # its threshold search: one epoch
  c.autodim = mlc.ConfigDict({'search_epochs': 1})  # its supernet: one epoch
  # One JSONL line per job; a rerun skips those made. Committed (runs/ is not in git): a dedup job
  # took 2 h 14 min at 10% on 2 cores, so the check finishes over several sessions.
  c.workdir = 'results/table_compression_memory_pipelines_runs'
  c.results = 'results/table_compression_memory_pipelines'  # .json and .md
  # False: run nothing, only write the results from the lines there (a job with no line, or
  # only failed ones, is listed as such): the check is written before every job has run.
  c.run_missing = True
  c.only = ''  # internal: 'method:budget' runs one job in this process
  return c
