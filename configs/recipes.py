r"""The cells of the training-recipes study (experiments/recipes.py): one config per cell.

python -m experiments.recipes --cells stsb_cosent --seeds 0,1    # run cells (resumable)
python -m embedjax.cli train --config configs/recipes.py:stsb_cosent --workdir runs/x   # one run

Every cell starts from the packaged all-MiniLM-L6-v2 and is evaluated by the study on test splits
that no cell trains on or selects checkpoints with (the final checkpoint is evaluated; there is no
early stopping). The loop's own evals are off: the study evaluates once, per query.

Groups:
  stsb_*     STS-B train (5,749 pairs) -> STS-B test Spearman. One epoch at batch 32 (179 steps),
             texts cut at 64 tokens (99.99% of STS-B sentences are shorter).
  scifact_*  SciFact train qrels (919 claim -> abstract pairs) -> SciFact test nDCG@10 (300
             queries), the settings of configs/minilm_scifact.py: 56 steps at batch 32 (~2 epochs).
             scifact_multi_task: configs/multitask_scifact.py (112 steps, half of them SciFact).
  elastic_*  SciFact fine-tuning with Matryoshka dims (384, 256, 128, 64, 32): 1D (MRL) or over
             layer x dim (2DMSE), alone or multi-task -> the nDCG@10 grid over layers 1-6 x dims.
  distill_*  configs/distill_leaf.py: a narrow student (hidden 192, 3 layers, a third of MiniLM's
             parameters) trained on MiniLM's embeddings of the training texts -> SciFact nDCG@10
             and STS-B Spearman, student alone and student queries against teacher documents.
Every field and its default: embedjax/train/base_config.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

from embedjax.train.base_config import base_config, use_loss

STSB_STEPS = 179  # one epoch of the 5,749 STS-B train pairs at batch 32
SCIFACT_STEPS = 56  # ~2 epochs of the 919 SciFact train pairs at batch 32
# NV-Retriever's positive-aware filter (TopK-PercPos): keep a negative only if its score is below
# 95% of the positive's, i.e. sentence-transformers' relative_margin 0.05.
MINED_RELATIVE_MARGIN = 0.05
# The mined training files, written by experiments/recipes.py before their cells train (relative
# to the repository root, where the study runs).
MINED_FILES = {'scifact_mined': 'runs/recipes/mined/scifact_top1.jsonl',
               'scifact_mined_filtered': 'runs/recipes/mined/scifact_top1_filtered.jsonl'}


def _common(c):
  c.model.init = 'pretrained:all-MiniLM-L6-v2'
  c.data.batch_size = 32
  c.optim.lr = 2e-5
  c.eval_before = False  # the study evaluates the pretrained model once, as its own cell
  c.export = True        # the study evaluates the exported folder
  c.ckpt_keep = 1
  return c


def _stsb(loss: str, **fields):
  c = _common(base_config())
  c.data.train = 'stsb' if loss == 'info_nce' else 'stsb_scored'
  if loss != 'info_nce':
    use_loss(c, loss, **fields)
  c.data.query_len = 64
  c.data.doc_len = 64
  c.steps = STSB_STEPS
  c.optim.warmup_steps = 18  # 10%, as sentence-transformers' STS-B example
  c.log_every = 10
  c.ckpt_every = 60
  return c


def _scifact(loss: str = 'info_nce', data: str = 'scifact', **fields):
  c = _common(base_config())
  c.data.train = data
  if loss != 'info_nce':
    use_loss(c, loss, **fields)
  c.data.query_len = 64
  c.data.doc_len = 256
  c.steps = SCIFACT_STEPS
  c.optim.warmup_steps = 10
  c.log_every = 4
  c.ckpt_every = 14  # a SciFact step takes ~15 s here: checkpoint every few minutes
  return c


MATRYOSHKA_DIMS = (384, 256, 128, 64, 32)


def _sibling(name: str):
  """configs/NAME.py's get_config() (config files are not a package)."""
  spec = importlib.util.spec_from_file_location(f'_configs_{name}', Path(__file__).parent / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _study_run(c):
  """A config of another file as a study cell: no loop evals (the study evaluates), one kept
  checkpoint, an export."""
  c.evals = ml_collections.ConfigDict()
  c.eval_before = False
  c.export = True
  c.ckpt_keep = 1
  return c


def _multi_task():
  return _study_run(_sibling('multitask_scifact'))


def _elastic(layer_elastic: str = '', multi_task: bool = False):
  c = _multi_task() if multi_task else _scifact()
  c.loss.matryoshka_dims = MATRYOSHKA_DIMS
  c.loss.layer_elastic = layer_elastic
  if layer_elastic:
    # Every dim at every step (sentence-transformers' Matryoshka2dLoss samples one dim per step
    # by default; with ~56 steps that leaves each small dim about 11 steps).
    c.loss.n_dims_per_step = -1
  return c


# cell -> (its config, or None for an evaluation of the pretrained model)
CELLS = {
    'stsb_pretrained': lambda: None,
    'stsb_cosent': lambda: _stsb('cosent'),
    'stsb_angle': lambda: _stsb('angle'),
    'stsb_info_nce': lambda: _stsb('info_nce'),  # in-batch InfoNCE on the pairs scored >= 4
    'scifact_pretrained': lambda: None,
    'scifact_in_batch': lambda: _scifact(),
    # One hard negative per pair, mined by the study (experiments/recipes.py mine_scifact) with
    # the pretrained model: the top-ranked non-positive abstract, without and with the
    # positive-aware filter (MINED_RELATIVE_MARGIN).
    'scifact_mined': lambda: _scifact(data='file:' + MINED_FILES['scifact_mined']),
    'scifact_mined_filtered': lambda: _scifact(
        data='file:' + MINED_FILES['scifact_mined_filtered']),
    'scifact_focal': lambda: _scifact('focal_info_nce'),
    'scifact_hardness': lambda: _scifact('hardness_weighted_info_nce'),
    'scifact_multi_task': _multi_task,
    'elastic_mrl': lambda: _elastic(),
    'elastic_2dmse': lambda: _elastic('matryoshka_2d'),
    'elastic_2dmse_multi_task': lambda: _elastic('matryoshka_2d', multi_task=True),
    'distill_leaf': lambda: _study_run(_sibling('distill_leaf')),
    'distill_leaf_decoder': lambda: _study_run(_sibling('distill_leaf_decoder')),
}


def get_config(arg=None):
  if arg not in CELLS:
    raise ValueError(f'configs/recipes.py:{arg}: choose a cell from {sorted(CELLS)}')
  c = CELLS[arg]()
  if c is None:
    raise ValueError(f'{arg} evaluates the pretrained model: it has no training config')
  return c
