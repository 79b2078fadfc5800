r"""Two-stage training, stage 2: configs/multitask_scifact.py's multi-task fine-tuning, started
from the weakly supervised stage 1 (configs/two_stage_stage1.py) instead of the pretrained model.

python -m embedjax.cli train --config configs/two_stage_stage1.py --workdir runs/two_stage/stage1
python -m embedjax.cli train --config configs/two_stage_stage2.py --workdir runs/two_stage/stage2
(another stage-1 workdir: --config configs/two_stage_stage2.py:WORKDIR)

The encoder params are stage 1's latest checkpoint's (model.init_checkpoint); the optimizer,
step counter and schedule start fresh. model.init names the architecture and tokenizer, which
must be stage 1's (checked). summary.json's 'init_from' records stage 1's workdir, checkpoint
step and config hash. No AG News eval: stage 1 trained on AG News's test split.
Every field and its default: embedjax/train/base_config.py (tasks: embedjax/train/multitask.py).
"""

from pathlib import Path

from embedjax.config import load_config

STAGE1_WORKDIR = 'runs/two_stage/stage1'


def get_config(arg=None):
  c = load_config(str(Path(__file__).with_name('multitask_scifact.py')))
  c.model.init_checkpoint = arg or STAGE1_WORKDIR  # stage 1's workdir: its latest checkpoint
  return c
