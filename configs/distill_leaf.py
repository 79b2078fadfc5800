r"""LEAF distillation (CPU-sized): a narrow BERT student aligned to all-MiniLM-L6-v2's embeddings.

python -m embedjax.cli train --config configs/distill_leaf.py --workdir runs/distill_leaf

The student (embedjax.train.distillation.leaf_student): MiniLM's tokenizer and mean pooling,
hidden 192, 3 layers, 3 heads, a linear head to MiniLM's 384 dims and L2 normalisation: 7.37M
parameters with embeddings, 0.33 of MiniLM's 22.57M. Its word embeddings start from a PCA of
MiniLM's table (our choice). It is trained with LEAF's loss ||student - teacher||^2
(loss embedding_mse, objective 'l2') on the teacher's embeddings of the training texts only
('distill:all': the SciFact corpus and train claims, STS-B, MRPC and SICK train sentences; never a
test query), which are encoded once and cached. It is evaluated symmetric (the student alone,
below) and asymmetric (student queries against teacher documents:
embedjax.train.distillation.evaluate_distillation on the exported model).

Cost on the 2-core CPU machine, measured with make_train_step on this config's shapes while a
training study ran beside it (load ~5 on 2 cores, so an idle machine is faster): a step of 64
texts x 128 tokens takes 2.1 s (compile 11 s), and the teacher encodes ~17 SciFact documents/s
at 128 tokens (the short sentences far faster), so the 28,082 texts take about 8 minutes once
(then cached). The 1,320 steps (3 epochs) take about 46 minutes on top.

Every field and its default: embedjax/train/base_config.py.
"""

from embedjax.train.base_config import base_config, eval_block
from embedjax.train.distillation import leaf_student


def get_config(arg=None):
  c = base_config()
  leaf_student(c, teacher='pretrained:all-MiniLM-L6-v2', texts='all', hidden_size=192,
               num_hidden_layers=3, num_attention_heads=3, intermediate_size=768,
               pca_init=True)
  c.model.max_seq_length = 256   # the student reads documents whole at evaluation, as MiniLM
  c.data.batch_size = 64         # LEAF trains with small batches: the loss is per text
  c.data.query_len = 128         # tokens per training text (the teacher's targets see the same)
  c.optim.lr = 1e-3              # a fresh model: a much larger rate than fine-tuning's 2e-5
  c.optim.warmup_steps = 100
  c.optim.decay = 'cosine'
  c.train.dropout = False        # the targets are exact; no regularisation needed at this size
  c.steps = 1320                 # 3 epochs of the 28,082 distinct training texts
  c.log_every = 50
  c.eval_every = 0
  c.ckpt_every = 440            # about once an epoch
  c.evals.scifact = eval_block(metrics=('ndcg@10',))
  c.evals.stsb = eval_block(metrics=('spearman',))
  return c
