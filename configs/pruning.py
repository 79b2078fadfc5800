r"""The cells of the pruning study (experiments/pruning.py): one config per cell.

python -m experiments.pruning --cells magnitude_50,gaprune_50    # run cells (resumable per cell)
python -m experiments.pruning --summarize                        # summary from the records

Every cell prunes the packaged all-MiniLM-L6-v2 once (nothing is trained) and is evaluated on
SciFact test nDCG@10 and STS-B test Spearman. Unstructured cells remove a fraction of the
transformer layers' matrix weights (word, position and type embeddings, norms and biases are never
pruned) by one global ranking: of |w| (magnitude) or of GAPrune's Domain Alignment Importance with
SciFact as the domain and STS-B as the general data (Fisher diagonals and mean gradients of an
in-batch InfoNCE loss over training pairs only). Structured cells remove the lowest-|w| attention
heads and FFN neurons of every layer, which makes the model smaller, and time its encoding against
the dense model's, side by side in one process. ``*_recovered`` cells then fine-tune the pruned
model briefly on SciFact train (the recipes study's in-batch cell: 56 steps at batch 32) with its
zeros kept (``optim.keep_zeros``), at 2 seeds.
"""

import ml_collections as mlc

SPARSITIES = (0.3, 0.5, 0.7)
# name -> (method, fields)
CELLS = {
    'dense': ('none', {}),
    **{f'magnitude_{int(s * 100)}': ('magnitude', {'sparsity': s}) for s in SPARSITIES},
    **{f'gaprune_{int(s * 100)}': ('gaprune', {'sparsity': s}) for s in SPARSITIES},
    'structured_heads_50': ('structured', {'head_ratio': 0.5}),
    'structured_neurons_50': ('structured', {'neuron_ratio': 0.5}),
    'structured_heads_25_neurons_25': ('structured', {'head_ratio': 0.25, 'neuron_ratio': 0.25}),
    **{f'{m}_{int(s * 100)}_recovered': (m, {'sparsity': s, 'recovery': True})
       for m in ('magnitude', 'gaprune') for s in SPARSITIES},
}
SEEDS = (0, 1)  # of the recovered cells (training is random); one-shot cells run once (seed 0)


def get_config(cell='dense'):
  if cell not in CELLS:
    raise ValueError(f'unknown pruning cell {cell!r}; cells: {sorted(CELLS)}')
  method, fields = CELLS[cell]
  c = mlc.ConfigDict()
  c.cell = cell                  # the cell's name (its record: results/pruning/runs/CELL/seedN.json)
  c.model = 'all-MiniLM-L6-v2'   # the packaged model every cell prunes
  c.method = method              # 'none' | 'magnitude' | 'gaprune' | 'structured'
  c.sparsity = 0.0               # unstructured: fraction of the layers' matrix weights removed
  c.scope = 'global'             # one ranking over all layers ('layer', 'tensor': per group)
  c.head_ratio = 0.0             # structured: fraction of heads removed in every layer
  c.neuron_ratio = 0.0           # structured: fraction of FFN neurons removed in every layer
  c.gaprune = dict(              # GAPrune's gradient statistics (used by method 'gaprune')
      domain='scifact',          # SciFact train (claim, abstract) pairs
      general='stsb',            # STS-B train pairs scored >= 4 (paraphrases)
      batches=64,                # gradient batches of each side (Fisher: mean squared gradient)
      batch_size=8,              # pairs per batch (the Fisher is per micro-batch, as GAPrune's)
      query_len=64,
      doc_len=128,
      scale=20.0,                # InfoNCE inverse temperature (all-MiniLM-L6-v2's training)
      beta=1.0,                  # DAI: weight of the general Fisher
      seed=0,                    # which training pairs are drawn
  )
  c.speed = dict(texts=1000, repeats=3)  # structured: SciFact corpus texts timed, median of repeats
  c.recovery = False             # fine-tune the pruned model (its zeros kept), then evaluate
  c.recovery_config = 'configs/recipes.py:scifact_in_batch'  # the fine-tuning run's config
  c.seed = 0                     # the fine-tuning seed (recovered cells)
  for k, v in fields.items():
    c[k] = v
  c.lock()
  return c
