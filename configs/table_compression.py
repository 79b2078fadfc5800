r"""Compressed recommender embedding tables under memory budgets (GitHub issue 6).

python -m experiments.table_compression --config configs/table_compression.py

Benchmark: every method of embedjax.tables at budgets of 100/50/10/1/0.1% of the full table on
MovieLens-100k as CTR (official split u1, rating >= 4 positive), FM on top, 3 seeds. The 10M-id
memory check (synthetic Zipf data, each method in its own process, peak RSS) is the 'memory'
variant:

python -m experiments.table_compression --config configs/table_compression.py:memory

The same benchmark on synthetic Criteo-shaped data (embedjax.data.criteo_synthetic: 26 fields,
~2M ids, 5M rows; 1 epoch, as CTR models on Criteo are trained), results in
results/table_compression_criteo.{json,md,png}:

python -m experiments.table_compression --config configs/table_compression.py:criteo
"""

import ml_collections as mlc


def get_config(arg=None):
  c = mlc.ConfigDict()
  if arg not in (None, 'memory', 'criteo'):
    raise ValueError(f"config argument must be 'memory' or 'criteo', got {arg!r}")
  criteo = arg == 'criteo'
  c.mode = 'memory' if arg == 'memory' else 'benchmark'  # which study the run makes
  c.dataset = 'criteo_synthetic' if criteo else 'movielens'  # the benchmark's data
  # Per-run JSONL lines go here; a rerun skips what is present. The Criteo-shaped study takes
  # many sessions on 2 cores, each on a fresh machine, so its lines are committed under results/
  # (runs/ is not in git); MovieLens finishes in one sitting.
  c.workdir = 'results/table_compression_criteo_runs' if criteo else 'runs/table_compression'
  c.results = 'results/table_compression' + ('_criteo' if criteo else '')  # writes .json, .md, .png (memory mode: _memory.json/.md)

  c.criteo = mlc.ConfigDict()  # the synthetic Criteo-shaped data (dataset 'criteo_synthetic')
  c.criteo.rows = 5_000_000  # rows generated
  c.criteo.total_ids = 2_000_000  # ids over the 26 fields (Kaggle cardinalities scaled)
  c.criteo.seed = 0  # the generator's seed (data, label model)
  c.criteo.test_fraction = 0.1  # rows held out for the test split (seeded by criteo.seed)
  c.criteo.valid_fraction = 0.1  # of the rest, held out for early stopping

  c.data = mlc.ConfigDict()  # MovieLens-100k as CTR
  c.data.split = 'u1'  # MovieLens-100k official 80/20 split (u1.base / u1.test)
  c.data.valid_fraction = 0.1  # of u1.base, held out for early stopping and OptEmbed's search
  c.data.valid_seed = 0  # seed of that holdout

  c.dim = 16  # embedding width of every field
  c.model = 'fm'  # the model under every table in the main grid (lr, fm, deepfm, dlrm)
  c.model_sweep = () if criteo else ('lr', 'fm', 'deepfm', 'dlrm')  # full table only, seed 0: the models side by side
  c.methods = (  # table families compared (embedjax.tables.methods.BUDGETED)
      'full', 'hashing', 'qr', 'mixed_dim', 'tt', 'dhe', 'unified', 'optembed', 'int8', 'lpt',
      'robe', 'dedup', 'pep', 'adaembed', 'mgqe', 'autodim')
  c.budgets = (1.0, 0.5, 0.1, 0.01, 0.001)  # fractions of the full float32 table's bytes
  c.seeds = (0, 1, 2)  # one run per seed; mean and std reported
  c.epochs = 1 if criteo else 8  # the epoch with the best validation AUC is kept (early stopping)
  c.batch_size = 2048 if criteo else 512  # training rows per step
  c.optimizer = 'adam'  # optax optimizer of the table and the model
  # Its learning rate. Criteo-shaped: chosen by the full table's validation AUC (seed 0, 1 epoch)
  # over 3e-4 / 1e-3 / 3e-3 / 1e-2: 0.7811 / 0.7888 / 0.7742 / 0.6864
  # (results/table_compression_criteo_lr_check*.json and the lr-3e-3 records kept in
  # results/table_compression_criteo_lr3e-3_runs/). Dense Adam keeps moving a row its batch did
  # not read with the row's momentum, ~30 lr per coordinate after one read, so most of 2M ids,
  # seen a few times, drift far from their init std of 0.01 when lr is large. MovieLens: 3e-3.
  c.lr = 1e-3 if criteo else 3e-3
  c.eval_batch_size = 4096  # rows per evaluation call

  c.optembed = mlc.ConfigDict()  # OptEmbed's pruning and evolutionary width search
  c.optembed.alpha = 1e-2  # weight of sum_f exp(-threshold_f): larger prunes more rows (1e-2 keeps ~83%)
  c.optembed.supernet_epochs = 1 if criteo else 8  # epochs of the supernet the search samples from
  c.optembed.population = 12  # evolutionary search over per-field widths, scored on validation
  c.optembed.generations = 4  # rounds of that search

  c.dedup = mlc.ConfigDict()  # deduplication: pre-train full, deduplicate to the budget, fine-tune
  c.dedup.pretrain_epochs = 1 if criteo else 4  # epochs of the full table before deduplicating
  c.dedup.tolerance = 0.01  # entries closer than this count as equal (the benchmark's fp) ...
  c.dedup.attempts = 12  # ... tried at this many tolerances, doubling, until the budget is met (1: fixed)
  c.dedup.similarity = 0.7  # share of equal entries that makes a block a duplicate (its sim)

  c.pep = mlc.ConfigDict()  # PEP: threshold search, mask cut to the budget, retrain
  c.pep.search_epochs = 1 if criteo else 8  # epochs of the soft-threshold search stage

  c.autodim = mlc.ConfigDict()  # AutoDim: width search, widths by alpha in the budget, retrain
  c.autodim.search_epochs = 1 if criteo else 4  # epochs of the supernet (alpha and all widths)

  # Per-method hyperparameters passed to for_budget (ones not listed keep the module defaults).
  # DHE's hidden width is capped at 96 (~29% of the full table's bytes): every lookup runs the whole
  # MLP, and wider ones cost minutes per run on 2 CPU cores; larger budgets reuse the capped size.
  # One entry per method (an empty one keeps the module defaults).
  c.method_kw = mlc.ConfigDict({m: {} for m in c.methods})
  # AdaEmbed re-allocates its rows every `period` steps: ~3 times per epoch.
  c.method_kw.update({'adaembed': {'period': 600 if criteo else 50}})
  c.method_kw.update({'unified': {'probes': 2},
                      'dhe': {'num_hashes': 64, 'layers': 2, 'max_hidden': 96},
                      'qr': {'max_parts': 4}})
  if criteo:
    # TT's rank is capped at 64 (the 10% budget's rank is 111): per step a TT lookup contracts
    # cores 1 and 2 over the whole (n1 n2) grid, n1 n2 d1 d2 r^2 FLOPs, ~0.4 s per step forward
    # and backward at rank 64 and 1.7 s at 256 on 2 CPU cores (1,980 steps per epoch).
    c.method_kw.update({'tt': {'max_rank': 64}})

  c.memory = mlc.ConfigDict()  # the 10M-id peak-memory check (mode 'memory')
  # 10,000,000 ids over 8 fields, 64 dims: the full float32 table alone is 2.56 GB.
  c.memory.vocab_sizes = (  # ids per field
      5_000_000, 2_500_000, 1_500_000, 700_000, 200_000, 80_000, 15_000, 5_000)
  c.memory.dim = 64  # embedding width
  c.memory.rows = 1_000_000  # synthetic rows generated (Zipf a = 1.1, planted logistic truth)
  c.memory.steps = 20  # training steps per method: enough for peak memory and steps/s
  c.memory.batch_size = 4096  # rows per step
  c.memory.budgets = (0.1, 0.01)  # fractions of the full table's bytes
  # Families measured. Not here: dedup, PEP and MGQE train a full-size table (dedup and PEP
  # before they prune, MGQE its query vectors), so their training peak is the full table's
  # (the probes below); AutoDim's supernet holds every candidate width, more than the full table.
  c.memory.methods = ('hashing', 'qr', 'mixed_dim', 'tt', 'dhe', 'unified', 'robe', 'adaembed')
  # The full table measured at these smaller vocabularies (scaled-down copies of the 8 fields)
  # and extrapolated linearly to 10M ids; not run at 10M beside other people's jobs.
  c.memory.full_probe_ids = (500_000, 1_000_000, 2_000_000)
  # Caps that keep the compute of the per-step MLP / TT contraction short on 2 CPU cores.
  c.memory.method_kw = mlc.ConfigDict({m: {} for m in c.memory.methods})
  # AdaEmbed re-allocates every 5 steps here, so that rows are held within the 20 steps.
  c.memory.method_kw.update({'dhe': {'max_hidden': 128}, 'tt': {'max_rank': 16},
                             'adaembed': {'period': 5}})
  c.memory.only = ''  # internal: 'method:fraction' runs one child process
  return c
