r"""A tiny random-init decoder (Qwen3-style: GQA, q/k norm) trained as a bidirectional embedder with
mean pooling and per-layer remat on the project's synthetic pairs: minutes on a CPU.

python -m embedjax.cli train --config configs/decoder_tiny.py --workdir runs/decoder_tiny
    [--config.model.attention=causal --config.model.pooling=last_token]   # Qwen3-Embedding style
    [--config.model.lora.rank=8]                                          # train a LoRA adapter only

Every field and its default: embedjax/train/base_config.py.
"""

from embedjax.train.base_config import base_config


def get_config(arg=None):
  c = base_config()
  c.model.init = 'random:decoder-tiny'   # embedjax.models.decoder.NAMED_SHAPES
  c.model.tokenizer = 'all-MiniLM-L6-v2'
  c.model.attention = 'bidirectional'    # NV-Embed / KaLM-V2 / LLM2Vec style
  c.model.pooling = 'mean'
  c.model.remat = 'full'
  c.model.max_seq_length = 64
  c.data.train = 'synthetic'
  c.data.batch_size = 16
  c.data.query_len = 16
  c.data.doc_len = 48
  c.train.dropout = False                # decoders train without dropout
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 5
  c.steps = 60
  c.log_every = 10
  c.ckpt_every = 30
  return c
