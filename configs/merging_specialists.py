r"""Specialists of the merging study that the recipes study does not already train.

python -m embedjax.cli train --config configs/merging_specialists.py:mrpc --workdir runs/x

The merging study (experiments/merging.py) fine-tunes all-MiniLM-L6-v2 separately per task from
the same start: SciFact and STS-B are the recipes study's scifact_in_batch and stsb_cosent runs
(configs/recipes.py, shared workdirs); these two add MRPC (its 2,753 train paraphrase pairs, in-batch
InfoNCE, one epoch at batch 32) and SICK (its 133 train (premise, entailed, contradicted)
triplets, InfoNCE with the contradiction as hard negative, three passes), with the settings of the
multi-task config's tasks (configs/multitask_scifact.py). Every field and its default:
embedjax/train/base_config.py.
"""

from embedjax.train.base_config import base_config


def get_config(arg='mrpc'):
  c = base_config()
  c.model.init = 'pretrained:all-MiniLM-L6-v2'
  c.data.batch_size = 32
  c.data.query_len = 64
  c.data.doc_len = 64
  c.optim.lr = 2e-5
  c.eval_before = False  # the study evaluates the exported model
  c.export = True
  c.ckpt_keep = 1
  if arg == 'mrpc':
    c.data.train = 'mrpc'
    c.steps = 86               # one epoch of 2,753 pairs at batch 32
    c.optim.warmup_steps = 9
    c.log_every = 10
    c.ckpt_every = 43
  elif arg == 'sick':
    c.data.train = 'sick'
    c.steps = 12               # three passes over 133 triplets at batch 32
    c.optim.warmup_steps = 1
    c.log_every = 2
    c.ckpt_every = 6
  else:
    raise ValueError(f'unknown specialist {arg!r}: mrpc or sick')
  return c
