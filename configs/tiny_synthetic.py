r"""A tiny random-init BERT trained on the project's synthetic pairs: a seconds-long smoke run.

python -m embedjax.cli train --config configs/tiny_synthetic.py --workdir runs/tiny_synthetic

Every field and its default: embedjax/train/base_config.py.
"""

from embedjax.train.base_config import base_config


def get_config(arg=None):
  c = base_config()
  c.model.init = 'random:all-MiniLM-L6-v2'  # MiniLM's tokenizer and pooling, fresh small weights
  c.model.max_seq_length = 64
  c.model.bert.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64)
  c.data.train = 'synthetic'
  c.data.batch_size = 8
  c.data.query_len = 16
  c.data.doc_len = 32
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 2
  c.steps = 6
  c.log_every = 1
  c.ckpt_every = 2
  return c
