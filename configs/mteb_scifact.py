r"""SciFact through MTEB: embedjax's encoder run by mteb, embedjax's own evaluator, and
sentence-transformers run by mteb, on the full SciFact test set (300 queries, 5,183 documents),
read offline from the shared data folder.

python -m experiments.mteb_scifact --config configs/mteb_scifact.py
(`...:quick` takes 20 queries, their documents and 500 others, and writes
results/mteb_scifact.quick.json)

Writes results/mteb_scifact.json: the three routes' scores (nDCG@k, recall@k, MRR@10, MAP@10),
their differences and whether they agree within ``tolerance``, and the run's provenance.
"""

import ml_collections as mlc


def get_config(arg=None):
  c = mlc.ConfigDict()
  c.model = 'all-MiniLM-L6-v2'  # packaged model name or a local sentence-transformers folder
  c.num_queries = 0             # 0 = every test query; else the first n by id
  c.num_other_docs = 0          # 0 = the whole corpus; else judged documents + the first n others
  c.rows_per_batch = 16         # rows per device call of embedjax's packed encoder
  c.batch_size = 64             # mteb's encode batch size (sentence-transformers uses it)
  c.tolerance = 1e-4            # largest |difference| of a score that counts as equal
  c.out = ''                    # '' = results/mteb_scifact{suffix}.json in the repository
  c.cache_dir = ''              # mteb's cache folder (MTEB_CACHE); '' = runs/cache/mteb
  c.suffix = ''                 # appended to the result file name ('.quick' for the smoke run)
  if arg == 'quick':
    c.num_queries, c.num_other_docs, c.suffix = 20, 500, '.quick'
  return c
