r"""A tiny random-init BERT trained on the project's synthetic pairs: a seconds-long smoke run.

python -m embedjax.cli train --config configs/tiny_synthetic.py --workdir runs/tiny_synthetic
"""

import ml_collections as mlc


def get_config(arg=None):
  c = mlc.ConfigDict()
  c.seed = 0
  c.model = dict(
      init='random:all-MiniLM-L6-v2',  # MiniLM's tokenizer and pooling, fresh small weights
      dtype='float32',
      max_seq_length=64,
      bert=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
  )
  c.loss = dict(name='info_nce', scale=20.0, learnable_scale=False, matryoshka_dims=())
  c.data = dict(train='synthetic', batch_size=8, query_len=16, doc_len=32, data_dir=None,
                cache_dir=None)
  c.train = dict(chunk_size=0, grad_cache=False, dropout=True)
  c.optim = dict(lr=1e-3, warmup_steps=2, decay='linear', end_lr_ratio=0.0, weight_decay=0.01,
                 clip_norm=1.0, freeze='')
  c.steps = 6
  c.log_every = 1
  c.eval_every = 0
  c.ckpt_every = 2
  c.best_metric = ''
  c.async_checkpointing = True
  c.export = True
  c.evals = dict()
  return c
