r"""An 8B-class decoder embedder (Llama-3-8B shape: 32 layers, GQA 32/8) trained with a LoRA adapter
on a multi-host GPU/TPU mesh: bfloat16, per-layer remat, bidirectional attention and mean pooling
(NV-Embed / LLM2Vec style), gradient caching over a large batch. Built abstractly in CI (dry build).

python -m embedjax.cli train --config configs/decoder_llama_8b.py --workdir runs/llama_8b \
    [--config.model.init=pretrained:/path/to/Llama-3-8B]

Every field and its default: embedjax/train/base_config.py.
"""

from embedjax.train.base_config import base_config


def get_config(arg=None):
  c = base_config()
  c.model.init = 'random:llama-8b'
  c.model.dtype = 'bfloat16'
  c.model.attention = 'bidirectional'
  c.model.pooling = 'mean'
  c.model.remat = 'full'
  c.model.max_seq_length = 512
  c.model.lora.rank = 16
  c.model.lora.alpha = 32.0
  c.model.lora.target = r'.*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)'
  c.data.train = 'synthetic'
  c.data.batch_size = 2048
  c.data.query_len = 64
  c.data.doc_len = 512
  c.train.dropout = False
  c.train.chunk_size = 128
  c.train.grad_cache = True
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 100
  c.steps = 1000
  c.ckpt_every = 250
  return c
