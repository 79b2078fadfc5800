r"""configs/minilm_scifact.py with a Matryoshka loss at 384/256/128/64/32 dims (equal weights).

python -m embedjax.cli train --config configs/minilm_scifact_mrl.py --workdir runs/minilm_scifact_mrl
(`python -m experiments.train_scifact` runs it beside the plain run and writes results/train/minilm_scifact_mrl.json)
"""

from pathlib import Path

from embedjax.config import load_config


def get_config(arg=None):
  c = load_config(str(Path(__file__).with_name('minilm_scifact.py')))
  c.loss.matryoshka_dims = (384, 256, 128, 64, 32)
  # The starting point is the plain run's (same pretrained model, same evaluation): its "before"
  # is reused, which saves a SciFact corpus encode (~7 min on 2 CPU cores).
  c.eval_before = False
  return c
