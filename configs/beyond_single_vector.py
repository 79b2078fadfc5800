r"""The cells of the beyond-single-vector study (experiments/beyond_single_vector.py): one config
per cell; docs/beyond_single_vector.md reads the results.

python -m experiments.beyond_single_vector --cells bm25,single_pretrained --seeds 0
python -m experiments.beyond_single_vector --cells multi_vector,sparse --seeds 0,1   # (resumable)
python -m experiments.beyond_single_vector --summarize

Every cell is evaluated on LIMIT-small (recall@2/@10/@20 over its 46 documents) and on SciFact's
300 test queries (nDCG@10), with the storage its documents need (bytes per document).
  bm25               BM25 (bm25s, Lucene scoring), no training.
  single_pretrained  the packaged all-MiniLM-L6-v2, one 384-d vector per text (seed 0 only).
  single_finetuned   all-MiniLM-L6-v2 fine-tuned on the mixture below with in-batch InfoNCE.
  multi_vector       a ColBERT from all-MiniLM-L6-v2 (a new 384 -> 128 projection of every token
                     state, queries padded to 32 tokens with [MASK], document punctuation left
                     out of MaxSim) trained on the same mixture with InfoNCE over MaxSim; searched
                     exactly over float32 token vectors, and PLAID-style over ColBERTv2 residual
                     compression at 4, 2 and 1 bits per coordinate.
  sparse             a SPLADE from all-MiniLM-L6-v2 (a new MLM head tied to the word embeddings:
                     the model ships none) trained on the same mixture with InfoNCE over dot
                     products plus SPLADE's FLOPS regulariser; searched through an inverted index.

The mixture, the same for every trained cell and seed: the generated LIMIT-style training set
(embedjax.limit.training_sources 'limit_gen': other names and attributes than LIMIT-small, 2,000
(query, person) rows) plus SciFact's train qrels (919 (claim, abstract) rows); never LIMIT-small
or SciFact test qrels. One epoch at batch 32, the same optimiser for all three.
"""

import ml_collections as mlc

from embedjax.train.base_config import base_config

CELLS = {
    'bm25': 'bm25',
    'single_pretrained': 'single',
    'single_finetuned': 'single',
    'multi_vector': 'multi_vector',
    'sparse': 'sparse',
}
UNTRAINED = ('bm25', 'single_pretrained')  # nothing random: seed 0 only
SEEDS = (0, 1)
MIXTURE = 'limit_gen,scifact'   # 2,000 + 919 rows
MIXTURE_ROWS = 2919


def _train(representation: str):
  """The training run of a trained cell (every field: embedjax/train/base_config.py)."""
  c = base_config()
  c.model.init = 'pretrained:all-MiniLM-L6-v2'  # every trained cell starts from the same model
  c.model.representation = representation  # 'single' | 'multi_vector' | 'sparse'
  c.data.train = MIXTURE         # the same rows for every trained cell
  c.data.batch_size = 32         # in-batch negatives = 31
  c.data.query_len = 32          # ColBERT's query length; "Who likes X?" and SciFact claims fit
  c.data.doc_len = 256           # the model's max_seq_length; LIMIT people are ~200 word pieces
  c.optim.lr = 5e-5              # one rate for all three: the new heads need more than 2e-5
  c.optim.warmup_steps = 10      # linear warmup, then linear decay to 0
  c.steps = -(-MIXTURE_ROWS // c.data.batch_size)  # one epoch: 92 steps
  c.log_every = 4                # loss logged every 4 steps
  c.eval_every = 0               # no in-run evals (the study evaluates the export)
  c.ckpt_every = 23              # four checkpoints per run (resumable)
  c.evals = mlc.ConfigDict()     # evaluated by the study, not in the run
  if representation == 'multi_vector':
    c.model.token_dim = 128
    c.loss.scale = 1.0           # ColBERT's raw MaxSim scores (sums over 32 query tokens)
  elif representation == 'sparse':
    c.loss.similarity = 'dot'    # SPLADE: InfoNCE over dot products of the weights, scale 1
    c.loss.scale = 1.0
    c.loss.flops_query = 3e-4    # SPLADE v2's regulariser weights (lambda_q, lambda_d)
    c.loss.flops_doc = 1e-4
  return c


def get_config(cell='multi_vector'):
  if cell not in CELLS:
    raise ValueError(f'unknown beyond_single_vector cell {cell!r}; cells: {sorted(CELLS)}')
  c = mlc.ConfigDict()
  c.cell = cell                  # results/beyond_single_vector/runs/CELL/seedN.json
  c.method = CELLS[cell]         # 'bm25' | 'single' | 'multi_vector' | 'sparse'
  c.model = 'all-MiniLM-L6-v2'   # the pretrained model (single_pretrained, and every init)
  c.seed = 0                     # the training run's seed (init of new heads, data order)
  c.trained = cell not in UNTRAINED  # whether the cell trains (then per seed)
  # the training run of a trained cell (its seed is the cell's: experiments/... training_config)
  c.train = _train(c.method) if c.trained else mlc.ConfigDict()
  c.tasks = ('limit_small', 'scifact')  # retrieval tasks of embedjax.evals.tasks (test splits)
  c.bm25 = dict(k1=1.5, b=0.75, method='lucene')
  # multi_vector: the compressed variants (ColBERTv2 residual codes; PLAID-style search at its
  # defaults). k-means on a sample of the corpus' tokens, 4 Lloyd steps, as ColBERTv2.
  c.plaid = dict(bits=(4, 2, 1), kmeans_sample=262_144, kmeans_iters=4)
  c.lock()
  return c
