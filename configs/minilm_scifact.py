r"""Fine-tune all-MiniLM-L6-v2 with in-batch InfoNCE on SciFact train pairs (CPU-sized).

python -m embedjax.cli train --config configs/minilm_scifact.py --workdir runs/minilm_scifact
(`experiments/train_scifact.py` runs it and writes results/train/minilm_scifact.json)
"""

import ml_collections as mlc


def get_config(arg=None):
  c = mlc.ConfigDict()
  c.seed = 0
  c.model = dict(init='pretrained:all-MiniLM-L6-v2', dtype='float32')
  c.loss = dict(
      name='info_nce',
      scale=20.0,               # inverse temperature (sentence-transformers' default)
      learnable_scale=False,
      matryoshka_dims=(),       # () = plain loss; e.g. (384, 256, 128, 64, 32)
      directions=('query_to_doc',),
      partition_mode='joint',
  )
  c.data = dict(
      train='scifact',          # comma-separated SOURCES of embedjax.train.data
      batch_size=32,            # global batch (in-batch negatives = batch_size - 1)
      query_len=64,             # tokens per query (SciFact claims are short)
      doc_len=256,              # tokens per document (the model's max_seq_length)
      data_dir=None,            # None = ../shared/data
      cache_dir=None,           # tfds ArrayRecord cache (None = ~/.cache/embedjax/tfds)
  )
  c.train = dict(chunk_size=0, grad_cache=False, dropout=True)
  c.optim = dict(lr=2e-5, warmup_steps=10, decay='linear', end_lr_ratio=0.0, weight_decay=0.01,
                 clip_norm=1.0, freeze='')
  c.steps = 56                  # ~2 epochs of the 919 SciFact train pairs at batch 32
  c.log_every = 4
  c.eval_every = 0              # evaluate only before and after (each costs a corpus encode)
  c.ckpt_every = 28
  c.best_metric = ''
  # Evaluated at every Matryoshka dim (truncate + renormalise), so that the plain run can be
  # compared with the MRL run (configs/minilm_scifact_mrl.py) at the same truncated sizes.
  c.evals = dict(scifact=dict(dims=(384, 256, 128, 64, 32), metrics=('ndcg@10', 'recall@100')))
  return c
