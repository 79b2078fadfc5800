r"""Short training of the long-context study's learned position methods (experiments/long_context.py).

The RoPE student (configs/distill_leaf_decoder.py's export, trained at 512 tokens) continues its
own objective, LEAF distillation from all-MiniLM-L6-v2 on the same texts at 512 tokens, after its
positions were changed (the study writes the changed folder and sets ``model.init`` to it):

(``max_factor`` is the study's ``learned_max_factor``, 24: positions to 24 x 512 = 12,288 tokens.)
  clex   rope_scaling {'rope_type': 'clex', 'max_factor': 24}: CLEX's dynamics (zero-initialised
         ``down``: training starts from NTK-aware scaling at alpha = 2t - 1); every step draws a
         scale t in 1..24 and spreads each text's positions over t times its length
         (embedjax/models/decoder.py, clex_rotary), as CLEX trains on its pretraining objective;
  seqpe  position_encoding 'seqpe' (max_factor 24): the rotation is replaced by SeqPE's digit
         encoder, whose vectors are added to the token embeddings; its contrastive and transfer
         regularisers join the loss. The student must learn positions anew from them, in few steps.
  none_trained  the student unchanged, trained the same steps: the control that tells the
         method's effect from that of more training.

python -m embedjax.cli train --config configs/long_context_train.py:clex \
    --config.model.init=pretrained:FOLDER --workdir runs/long_context/clex
"""

import importlib.util
from pathlib import Path

KINDS = ('clex', 'seqpe', 'none_trained')


def distill_config():
  """configs/distill_leaf_decoder.py's config (config files are not a package)."""
  path = Path(__file__).parent / 'distill_leaf_decoder.py'
  spec = importlib.util.spec_from_file_location('_configs_distill_leaf_decoder', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg=None):
  if arg not in KINDS:
    raise ValueError(f'configs/long_context_train.py:{arg}: choose one of {KINDS}')
  c = distill_config()
  c.model.init = ''              # the study's changed copy of the RoPE student: pretrained:FOLDER
  c.model.projection = 0         # the student's export already holds its 384-d head
  c.model.pooling = ''           # the export's own (mean)
  c.steps = 300                  # about a third of an epoch of the 28,082 texts at batch 32
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 30
  c.ckpt_every = 100
  c.log_every = 25
  return c
