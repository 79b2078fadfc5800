r"""The cells of the post-hoc adapters study (experiments/adapters.py): one config per cell.

python -m experiments.adapters --cells frozen,adr_query --seeds 0,1   # run cells (resumable)
python -m experiments.adapters --summarize                            # summary from the records

All cells read SciFact: training pairs from the train qrels, evaluation on the 300 test queries
(nDCG@10), never the reverse.
  frozen     the packaged all-MiniLM-L6-v2, both sides (seed 0 only: nothing is random).
  adr_query  ADR: a rank-r residual adapter e + B A e trained over the frozen model's embeddings of
             the train (claim, cited abstract) pairs by in-batch InfoNCE, applied to queries only
             (the document index stays as it is).
  adr_both   the same adapter applied to queries and documents (the index is re-embedded by the
             adapter, not by the model).
  qdc        a fine-tuned query model (the recipes study's scifact_in_batch run at the same seed,
             trained in its workdir or resumed from it) against the pretrained model's index: no
             compensation, QDC (a linear map of the new model's queries into the old model's query
             space, fitted on the unlabeled train claims), and full re-indexing with the new model
             (which is also the full fine-tuning that ADR is compared with).
"""

import ml_collections as mlc

CELLS = {
    'frozen': 'frozen',
    'adr_query': 'adr',
    'adr_both': 'adr',
    'qdc': 'qdc',
}
SEEDS = (0, 1)


def get_config(cell='adr_query'):
  if cell not in CELLS:
    raise ValueError(f'unknown adapters cell {cell!r}; cells: {sorted(CELLS)}')
  c = mlc.ConfigDict()
  c.cell = cell                  # the cell's name (its record: results/adapters/runs/CELL/seedN.json)
  c.method = CELLS[cell]         # 'frozen' | 'adr' | 'qdc'
  c.model = 'all-MiniLM-L6-v2'   # the frozen (old) model
  c.seed = 0                     # ADR's init and batch order; qdc: the fine-tuning run's seed
  c.adr = dict(                  # the adapter and its training (adr cells)
      sides='both' if cell == 'adr_both' else 'query',
      rank=16,                   # r: A (r, 384), B (384, r)
      steps=300,                 # ~21 epochs of the 919 train pairs at batch 64
      batch_size=64,
      lr=1e-3,
      scale=20.0,                # InfoNCE inverse temperature
  )
  c.qdc = dict(                  # query drift compensation (qdc cell)
      ridge=1e-3,                # ridge of the least-squares map (scaled by the query count)
      finetune_config='configs/recipes.py:scifact_in_batch',  # the new query model's training
      finetune_workdir='runs/recipes/scifact_in_batch',  # + /seedN: shared with the recipes study
  )
  c.lock()
  return c
