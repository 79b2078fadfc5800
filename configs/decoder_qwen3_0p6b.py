r"""A 0.6B-class decoder embedder (Qwen3-0.6B shape: 28 layers, GQA 16/8, q/k norm) fine-tuned on one
GPU: bfloat16 compute, per-layer remat, last-token pooling, causal attention (Qwen3-Embedding style).
Point model.init at a local Qwen3(-Embedding) folder to start from its weights.

python -m embedjax.cli train --config configs/decoder_qwen3_0p6b.py --workdir runs/qwen3_0p6b \
    [--config.model.init=pretrained:/path/to/Qwen3-Embedding-0.6B]

Every field and its default: embedjax/train/base_config.py.
"""

from embedjax.train.base_config import base_config


def get_config(arg=None):
  c = base_config()
  c.model.init = 'random:qwen3-0.6b'
  c.model.dtype = 'bfloat16'
  c.model.attention = 'causal'
  c.model.pooling = 'last_token'
  c.model.remat = 'full'
  c.model.max_seq_length = 512
  c.data.train = 'synthetic'
  c.data.batch_size = 256
  c.data.query_len = 64
  c.data.doc_len = 512
  c.train.dropout = False
  c.train.chunk_size = 64                # gradient caching: activations of 64 rows at a time
  c.train.grad_cache = True
  c.optim.lr = 1e-5
  c.optim.warmup_steps = 100
  c.steps = 2000
  c.ckpt_every = 500
  return c
