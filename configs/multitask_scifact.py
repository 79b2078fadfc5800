r"""Multi-task fine-tuning of all-MiniLM-L6-v2: SciFact + STS-B + MRPC + SICK, one task per batch.

python -m embedjax.cli train --config configs/multitask_scifact.py --workdir runs/multitask_scifact

Each step trains on one task, drawn with probability weight / sum of weights (every batch is
task-homogeneous, as CoDiEmb and NV-Embed train): SciFact claim -> abstract and MRPC paraphrases
with in-batch InfoNCE, SICK (premise, entailed, contradicted) with InfoNCE and its hard
negative, every STS-B train pair with CoSENT on its gold score. SciFact gets half the steps, so
its 56 steps match configs/minilm_scifact.py's in-batch baseline (~2 epochs of its 919 pairs).
configs/two_stage_stage2.py runs the same fine-tuning from a weakly supervised first stage.
Every field and its default: embedjax/train/base_config.py (tasks: embedjax/train/multitask.py).
"""

from embedjax.train.base_config import base_config, eval_block, task_block


def get_config(arg=None):
  c = base_config()
  c.model.init = 'pretrained:all-MiniLM-L6-v2'
  c.data.train = ''             # each task names its own source
  # No instructions: the evals below encode queries without one, and MiniLM was not trained
  # with instructions (an instruction is a string prefix of the task's queries, e.g.
  # embedjax.models.prompts.instruct_query('Given a claim, retrieve ...', '')).
  c.tasks.scifact = task_block('scifact', 'info_nce', weight=0.5)
  c.tasks.stsb = task_block('stsb_scored', 'cosent', weight=0.25)  # 5,749 scored pairs
  c.tasks.mrpc = task_block('mrpc', 'info_nce', weight=0.15)  # 2,753 paraphrase pairs
  # 133 (premise, entailed, contradicted) triplets, the contradiction as hard negative: a small
  # weight, still ~3 passes over them
  c.tasks.sick = task_block('sick', 'info_nce', weight=0.1)
  c.data.batch_size = 32        # in-batch negatives = 31 (STS-B: 32 scored pairs)
  c.data.query_len = 64         # claims and sentences are short
  c.data.doc_len = 256          # the model's max_seq_length (SciFact abstracts)
  c.optim.lr = 2e-5
  c.optim.warmup_steps = 10
  c.steps = 112                 # ~56 SciFact steps + ~56 on the sentence-pair tasks
  c.log_every = 8
  c.eval_every = 0              # evaluate only before and after
  c.ckpt_every = 56
  c.evals.scifact = eval_block(metrics=('ndcg@10', 'recall@100'))
  c.evals.stsb = eval_block()   # STS-B test Spearman (its train pairs are a task here)
  return c
