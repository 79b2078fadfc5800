r"""The merging study (experiments/merging.py): specialists, a multi-task model and every merge.

python -m experiments.merging --cells specialist_mrpc,uniform_soup --seeds 0,1
python -m experiments.merging --summarize

Every model starts from the packaged all-MiniLM-L6-v2 and is evaluated on the test splits of
SciFact (nDCG@10), STS-B and SICK-R (Spearman) and MRPC (AP). Selection (greedy soup, the scaling
of task arithmetic / TIES / DARE, Self Positioning's probe loss) uses a validation set carved from
the train splits only, subsampled so that one evaluation takes about a minute.
"""

import ml_collections as mlc

TASKS = ('scifact', 'stsb', 'mrpc', 'sick')
# task -> (training config, workdir prefix): SciFact and STS-B share the recipes study's runs
SPECIALISTS = {
    'scifact': ('configs/recipes.py:scifact_in_batch', 'runs/recipes/scifact_in_batch'),
    'stsb': ('configs/recipes.py:stsb_cosent', 'runs/recipes/stsb_cosent'),
    'mrpc': ('configs/merging_specialists.py:mrpc', 'runs/merging/specialist_mrpc'),
    'sick': ('configs/merging_specialists.py:sick', 'runs/merging/specialist_sick'),
}
MULTI_TASK = ('configs/recipes.py:scifact_multi_task', 'runs/recipes/scifact_multi_task')
MERGES = ('uniform_soup', 'greedy_soup', 'task_arithmetic', 'ties', 'dare_linear', 'dare_ties',
          'self_positioning')
PAIRS = tuple((a, b) for i, a in enumerate(TASKS) for b in TASKS[i + 1:])
CELLS = ('pretrained', *(f'specialist_{t}' for t in TASKS), 'multi_task', *MERGES,
         *(f'slerp_{a}_{b}' for a, b in PAIRS))
SEEDS = (0, 1)


def get_config(cell='uniform_soup'):
  if cell not in CELLS:
    raise ValueError(f'unknown merging cell {cell!r}; cells: {CELLS}')
  c = mlc.ConfigDict()
  c.cell = cell                  # the cell's name (its record: results/merging/runs/CELL/seedN.json)
  c.seed = 0                     # the specialists' (and multi-task model's) training seed
  c.scalings = (0.3, 0.5, 0.7, 1.0)  # task arithmetic / TIES / DARE: chosen on validation
  c.ties_density = 0.2           # TIES: fraction of each task vector kept (per tensor)
  c.dare_density = 0.5           # DARE: keep probability of each task-vector entry
  c.slerp_t = 0.5                # SLERP: halfway between the two specialists
  c.validation = dict(           # carved from the train splits
      scifact_queries=100,       # train claims, with their positives and 900 other abstracts
      scifact_candidates=1000,
      pairs=300,                 # STS-B, MRPC, SICK train pairs each
      seed=0,
  )
  c.self_positioning = dict(     # coefficients per model, trained on probe batches of the
      steps=60,                  # validation pairs: one batch of each task per step
      batch_size=16,
      learning_rate=0.02,
      scale=20.0,                # InfoNCE inverse temperature (SciFact, MRPC)
  )
  c.lock()
  return c
