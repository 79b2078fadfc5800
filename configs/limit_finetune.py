r"""Fine-tune all-MiniLM-L6-v2 for LIMIT-small: on a generated LIMIT-style training set
(`:train`, the default) or directly on the LIMIT-small test qrels (`:test`), with a Matryoshka
loss at 384/128/64/32 dims; evaluated on LIMIT-small at each of those dims.

python -m experiments.limit_finetune          (runs both and writes results/limit/finetune.json)
python -m embedjax.cli train --config configs/limit_finetune.py:test --workdir runs/limit_finetune_test

The paper fine-tunes with a projection to lower dims; here the low dims are Matryoshka prefixes
(truncate + renormalise), trained jointly by the Matryoshka loss.
"""

from pathlib import Path

import ml_collections

from embedjax.config import load_config
from embedjax.train.base_config import eval_block

DIMS = (384, 128, 64, 32)


def get_config(arg=None):
  split = arg or 'train'
  if split not in ('train', 'test'):
    raise ValueError(f"limit_finetune takes ':train' or ':test', got {arg!r}")
  c = load_config(str(Path(__file__).with_name('minilm_scifact.py')))
  c.data.train = 'limit_gen' if split == 'train' else 'limit_small'  # embedjax.limit.training_sources
  c.data.query_len = 16          # "Who likes <two words>?"
  c.data.doc_len = 256           # a person likes ~45 items: up to ~200 word pieces
  c.loss.matryoshka_dims = DIMS
  c.steps = 62                   # one epoch of the 2,000 (query, relevant person) rows at batch 32
  c.ckpt_every = 31
  c.evals = ml_collections.ConfigDict(
      {'limit_small': eval_block(dims=DIMS, metrics=('recall@2', 'recall@10', 'recall@20'))})
  return c
