r"""Fine-tune all-MiniLM-L6-v2 with in-batch InfoNCE on SciFact train pairs (CPU-sized).

python -m embedjax.cli train --config configs/minilm_scifact.py --workdir runs/minilm_scifact
(`python -m experiments.train_scifact` runs it and writes results/train/minilm_scifact.json)

Every field and its default: embedjax/train/base_config.py.
"""

from embedjax.train.base_config import base_config, eval_block


def get_config(arg=None):
  c = base_config()
  c.model.init = 'pretrained:all-MiniLM-L6-v2'
  c.data.train = 'scifact'      # SciFact train qrels: claim -> cited abstract
  c.data.batch_size = 32        # in-batch negatives = 31
  c.data.query_len = 64         # SciFact claims are short
  c.data.doc_len = 256          # the model's max_seq_length
  c.optim.lr = 2e-5
  c.optim.warmup_steps = 10
  c.steps = 56                  # ~2 epochs of the 919 SciFact train pairs at batch 32
  c.log_every = 4
  c.eval_every = 0              # evaluate only before and after (each costs a corpus encode)
  c.ckpt_every = 28
  # Evaluated at every Matryoshka dim (truncate + renormalise), so that the plain run can be
  # compared with the MRL run (configs/minilm_scifact_mrl.py) at the same truncated sizes.
  c.evals.scifact = eval_block(dims=(384, 256, 128, 64, 32), metrics=('ndcg@10', 'recall@100'))
  return c
