r"""The elastic-retention study (experiments/elastic_retention.py): what it takes for a fine-tuned
all-MiniLM-L6-v2 to keep 0.90 of its 384-dim SciFact nDCG@10 at 64 dims.

python -m experiments.elastic_retention --cells lr_5x --seeds 0,1   # run cells (resumable)
python -m experiments.elastic_retention --summarize                 # summary from the records

The recipes study's elastic cells (56 steps at lr 2e-5, every Matryoshka dim weighted 1) keep
0.80-0.81 at 64 dims, with 1D Matryoshka, 2DMSE and multi-task data alike. Each cell here is the
recipes study's ``elastic_mrl`` config (configs/recipes.py) with one lever changed, or all of
them, so that each lever's effect is read against the same base; one control has no Matryoshka
loss:
  lr_5x            learning rate 1e-4 instead of 2e-5 (the model moves further in 56 steps)
  small_dims_3x    Matryoshka weights (1, 1, 1, 3, 3) for dims (384, 256, 128, 64, 32): the 64-
                   and 32-dim losses count three times
  long_lr_5x_small_dims_3x   both, over 168 steps (~6 epochs of the 919 SciFact train pairs)
  in_batch_lr_5x   the control: the recipes study's ``scifact_in_batch`` (no Matryoshka loss) at
                   lr 1e-4, evaluated the same way, so that what the learning rate does alone is
                   told apart from what the Matryoshka loss adds at that rate
Evaluation is the recipes study's elastic one (SciFact test, every layer x dim); nothing is
selected on it: every cell is reported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SEEDS = (0, 1)
BASE_CELL = 'elastic_mrl'  # configs/recipes.py's cell every variant starts from
SMALL_DIMS_WEIGHTS = (1.0, 1.0, 1.0, 3.0, 3.0)  # one per dim of (384, 256, 128, 64, 32)
LONG_STEPS = 168  # 3x the recipes study's 56 SciFact steps


def _recipes_cell(name: str):
  spec = importlib.util.spec_from_file_location('_configs_recipes',
                                                Path(__file__).parent / 'recipes.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.CELLS[name]()


def _lr_5x(c):
  c.optim.lr = 1e-4
  return c


def _small_dims(c):
  assert tuple(c.loss.matryoshka_dims) == (384, 256, 128, 64, 32), c.loss.matryoshka_dims
  c.loss.matryoshka_weights = SMALL_DIMS_WEIGHTS
  return c


def _long(c):
  c.steps = LONG_STEPS
  c.optim.warmup_steps = 30  # the base's 10 of 56 steps (~18%), about the same share
  c.ckpt_every = 28
  return c


CELLS = {
    'lr_5x': lambda: _lr_5x(_recipes_cell(BASE_CELL)),
    'small_dims_3x': lambda: _small_dims(_recipes_cell(BASE_CELL)),
    'long_lr_5x_small_dims_3x': lambda: _long(_small_dims(_lr_5x(_recipes_cell(BASE_CELL)))),
    'in_batch_lr_5x': lambda: _lr_5x(_recipes_cell('scifact_in_batch')),
}


def get_config(arg=None):
  if arg not in CELLS:
    raise ValueError(f'configs/elastic_retention.py:{arg}: choose a cell from {sorted(CELLS)}')
  return CELLS[arg]()
