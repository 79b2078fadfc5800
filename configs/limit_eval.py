r"""LIMIT evaluations: the packaged MiniLM (full dim, truncated, quantized) and BM25 on LIMIT-small,
and on the project's generated LIMIT-style corpora with the four qrel patterns.

python -m experiments.limit_eval --config configs/limit_eval.py
(`...:quick` uses 2,000-document, 100-query generated corpora and writes results/limit/*.quick.*)

Writes results/limit/limit_small.{json,md} and results/limit/patterns.{json,md}. Embeddings are
cached under runs/cache (keyed by model and texts), so a rerun skips the encoding.
"""

import ml_collections as mlc


def get_config(arg=None):
  c = mlc.ConfigDict()
  c.model = 'all-MiniLM-L6-v2'     # packaged model name or a local sentence-transformers folder
  c.parts = 'limit_small,patterns'  # comma-separated: which evaluations to run
  c.out_dir = ''                   # '' = results/limit in the repository
  c.cache_dir = ''                 # '' = runs/cache
  c.ks = (2, 10, 20, 100)          # recall@k reported (LIMIT's headline is recall@2)
  c.dims = (384, 256, 128, 64, 32)  # truncated to the first d dims, then re-normalised
  # 'binary' scores the float query against the stored bits; 'binary_hamming' binarises the query too
  c.schemes = ('float16', 'float8_e4m3', 'int8', 'int4', 'binary', 'binary_hamming')
  c.bm25 = dict(k1=1.5, b=0.75, method='lucene')
  c.patterns = dict(              # generated LIMIT-style corpora (embedjax.limit.patterns)
      names=('dense', 'random', 'cycle', 'disjoint'),
      num_queries=1000,
      seed=0,
      num_docs=50_000,            # documents per generated corpus (the patterns share all but
                                  # their pool documents, so ~53k distinct texts are embedded)
  )
  c.suffix = ''                    # appended to result file names ('.quick' for the smoke run)
  if arg == 'quick':
    c.patterns.update(num_docs=2000, num_queries=100)
    c.suffix = '.quick'
  return c
