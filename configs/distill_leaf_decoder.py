r"""LEAF distillation into a small decoder-family student (RoPE), trained at 512 tokens.

python -m embedjax.cli train --config configs/distill_leaf_decoder.py --workdir runs/distill_dec

The student is the named shape 'decoder-leaf' (embedjax/models/decoder.py: Qwen3-style, hidden
192, 3 layers, 3 query heads sharing 1 key/value head, rotary positions up to 512) built with
all-MiniLM-L6-v2's tokenizer and vocabulary, bidirectional attention and mean pooling (as
decoder embedders fine-tuned for embeddings use), and a linear head to MiniLM's 384 dims: 7.2M
parameters, under a third of MiniLM's 22.57M. It is trained like configs/distill_leaf.py (the
teacher's embeddings of the training texts, LEAF's squared L2 loss), but at 512 tokens, so the
long-context work has a rotary-position model trained at that length. The teacher embeds only the
first 256 tokens of a text (all-MiniLM-L6-v2's max_seq_length), so for the 13% of training texts
longer than that the target says nothing of their tail. Its word embeddings start
at random (the PCA start of the BERT student reads a BERT table layout).
Every field and its default: embedjax/train/base_config.py.
"""

from embedjax.train.base_config import base_config, use_loss
from embedjax.train.distillation import PREFIX


def get_config(arg=None):
  c = base_config()
  c.model.init = 'random:decoder-leaf'
  c.model.tokenizer = 'all-MiniLM-L6-v2'  # the teacher's: the guide reads the same token ids
  c.model.max_seq_length = 512
  c.model.attention = 'bidirectional'
  c.model.pooling = 'mean'
  c.model.projection = 384       # the teacher's width
  c.train.guide = 'pretrained:all-MiniLM-L6-v2'
  c.data.train = PREFIX + 'all'  # training texts only (embedjax/train/distillation.py)
  use_loss(c, 'embedding_mse')
  c.data.batch_size = 32
  c.data.query_len = 512         # tokens per training text; the teacher's targets embed the first
                                 # 256 of them (MiniLM's own limit: embedjax/train/distillation.py)
  c.data.padding = 'pack'        # texts packed into 512-token rows: the median text has 19
                                 # tokens, and 13% have over 256, so nearly every batch of 32 holds
                                 # one and length buckets would still pad all to 512
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.decay = 'cosine'
  c.train.dropout = False
  c.steps = 2634                 # 3 epochs of the 28,082 training texts at batch 32
  c.log_every = 50
  c.eval_every = 0
  c.ckpt_every = 400
  return c
