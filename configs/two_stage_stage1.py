r"""Two-stage training, stage 1: weakly supervised in-batch InfoNCE on title -> text pairs
(SciFact corpus titles -> abstracts, AG News titles -> descriptions), from all-MiniLM-L6-v2.

python -m embedjax.cli train --config configs/two_stage_stage1.py --workdir runs/two_stage/stage1
python -m embedjax.cli train --config configs/two_stage_stage2.py --workdir runs/two_stage/stage2

Stage 2 (configs/two_stage_stage2.py) starts from this run's latest checkpoint. The two sources
are two tasks, so each batch comes from one source (its in-batch negatives from the same domain,
as weakly supervised pre-training stages (E5, GTE) batch them); weights are proportional to
their sizes (5,183 and 7,600 pairs). CPU-sized: about half an epoch.

AG News is here only as its test split (the only one in the shared data): a model trained on
it must not be evaluated on agnews_clustering. SciFact's pairs are its corpus documents (no test
claim or judgement): its test queries are searched over documents the model has seen.
Every field and its default: embedjax/train/base_config.py (tasks: embedjax/train/multitask.py).
"""

from embedjax.train.base_config import base_config, task_block


def get_config(arg=None):
  c = base_config()
  c.model.init = 'pretrained:all-MiniLM-L6-v2'
  c.data.train = ''             # each task names its own source
  c.tasks.scifact_titles = task_block('scifact_titles', 'info_nce', weight=5183)
  c.tasks.agnews_titles = task_block('agnews_titles', 'info_nce', weight=7600)
  c.data.batch_size = 32        # in-batch negatives = 31
  c.data.query_len = 32         # titles are short
  c.data.doc_len = 256          # abstracts (AG News descriptions are much shorter)
  c.optim.lr = 2e-5
  c.optim.warmup_steps = 20
  c.steps = 200                 # 6,400 of the 12,783 pairs
  c.log_every = 10
  c.ckpt_every = 50
  c.export = False              # stage 2 reads the checkpoint, not an export
  return c
