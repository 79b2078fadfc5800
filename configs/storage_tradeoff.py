r"""Storage vs quality of all-MiniLM-L6-v2 embeddings on SciFact (retrieval) and STS-B (STS).

python -m experiments.storage_tradeoff --config configs/storage_tradeoff.py
(`--config configs/storage_tradeoff.py:quick` runs a handful of schemes as a smoke test and writes
results/storage_tradeoff.quick.*)

Writes results/storage_tradeoff.{json,md,png}. Scheme names follow ``embedjax.quant.get`` plus the
search-mode suffixes of the experiment: a scheme ending in a binary quantizer is searched by
Hamming distance (query binarised too); ``_asym`` scores the float query against the stored bits
(on STS-B: the first sentence in float32 against the second's stored bits);
``_rescore`` retrieves rescore_multiplier x 10 by Hamming distance, then rescores with the float
query against the same bits; ``_rescore_int8`` rescores from int8 codes kept beside the bits;
``int8_sym`` quantizes the query too and ranks by the integer inner product; ``rb<u>_untrained`` is
the recurrent binarizer before training (greedy residual sign bits of the centred embedding).
"""

import ml_collections as mlc

_TRUNC = [f'trunc{d}_{p}' for d in (256, 192, 128, 64) for p in ('float32', 'float8', 'int8',
                                                                   'binary')]
_PCA = [f'pca{f}_{p}' for f in (25, 50, 75) for p in ('float32', 'float8', 'int8')]


def get_config(arg=None):
  c = mlc.ConfigDict()
  c.name = 'storage_tradeoff'    # results/<name>.{json,md,png}
  c.model = 'all-MiniLM-L6-v2'   # the model whose float32 embeddings are compressed
  c.seed = 0                     # PRNG seed: random projections, PQ k-means++, binarizer training
  c.cache_dir = ''               # float32 embedding cache ('' = runs/cache in the repository)
  c.out_dir = ''                 # where results go ('' = results/ in the repository)
  c.scifact = dict(              # the retrieval task
      split='test',              # queries judged in qrels/<split>.tsv
      k=100,                     # depth of every first-stage run (nDCG@10 / recall@10 reported)
      calibration='corpus',      # fit every scheme (ranges, PCA, codebooks, binarizer) on the corpus
  )
  c.stsb = dict(                 # the STS task
      split='test',
      calibration='train',       # fit on the STS-B train split's sentences (held out from test)
  )
  c.rescore_multiplier = 4       # binary first stage keeps 4 x 10 candidates (HF write-up)
  c.pq = dict(iters=25, opq_iters=25)      # Lloyd iterations; OPQ alternations (faiss: 25, 50)
  c.rb = dict(hidden=384, steps=600, batch_size=256, lr=1e-3,   # recurrent-binarizer training
              temperature=0.3)  # softmax temperature of its similarity-matching loss
  c.schemes = [                  # storage schemes (names: module docstring)
      'float32', 'float16', 'bfloat16', 'float8_e4m3', 'float8_e4m3_noscale', 'float8_e5m2',
      'int8', 'int8_sym', 'uint8', 'int4',
      'binary', 'binary_asym', 'binary_rescore', 'binary_rescore_int8', 'binary_centered',
      *_TRUNC, *_PCA,
      'pca50_int4', 'pca25_int4', 'grp50_float32', 'srp50_float32', 'grp50_float8',
      'pq8', 'pq16', 'pq32', 'pq48', 'pq96', 'opq16', 'opq48',
      'rb1', 'rb2', 'rb4',
      # also available: 'rb1_untrained', 'rb2_untrained', 'rb4_untrained' (not in the committed
      # results/storage_tradeoff.json, whose run predates them)
  ]
  if arg == 'quick':
    c.schemes = ['float32', 'float8_e4m3', 'int8', 'binary', 'binary_rescore', 'pca50_float8',
                 'pq16', 'rb1']
    c.rb.steps = 50
    c.name = 'storage_tradeoff.quick'
  return c
