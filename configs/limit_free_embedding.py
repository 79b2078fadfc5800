r"""Free-embedding critical-n sweep (LIMIT, k = 2): the largest n whose C(n, 2) top-2 sets free
unit vectors can realise in d dimensions, for d = 4 ... 32, with a cubic fit and extrapolation.

python -m experiments.limit_free_embedding --config configs/limit_free_embedding.py
(`...:quick` sweeps d = 4 ... 8 with a smaller budget and writes results/limit/critical_n.quick.*;
`...:48` sweeps d = 4 ... 48 under the same protocol and into the same files, continuing a finished
d = 4 ... 32 sweep; `...:m2` gives every document 2 vectors scored by MaxSim, d = 4 ... 10, into
results/beyond_single_vector/critical_n_m2.*, and likewise `:m1` and `:m4`)

Writes results/limit/critical_n.{json,md,png}; the JSON is rewritten after every dimension, so an
interrupted sweep resumes where it stopped (dimensions already done with the same protocol are
kept).
"""

import ml_collections as mlc


def get_config(arg=None):
  c = mlc.ConfigDict()
  c.name = 'critical_n'           # results/limit/<name>.{json,md,png}
  c.out_dir = ''                  # '' = results/limit in the repository
  c.seed = 0                      # n's probe in dimension d uses fold_in(fold_in(key(seed), d), n)
  c.dims = list(range(4, 33))     # dimensions swept, in order
  c.doc_vectors = 1               # m vectors per document (> 1: MaxSim scores); queries have one
  c.extrapolate = [384, 512, 768, 1024, 3072, 4096]  # d at which the cubic fit is extrapolated
  c.protocol = dict(              # embedjax.limit.free_embedding.Protocol: one probe's optimisation
      learning_rate=0.01,         # Adam
      temperature=0.1,            # InfoNCE logits = cosine / temperature
      patience=1000,              # give up after 1000 steps without progress ...
      stop_on='violations',       # ... = fewer violated queries than ever (the paper: loss)
      min_delta=1e-4,             # (only for stop_on='loss': relative loss improvement)
      max_steps=10_000,           # hard cap per attempt
      check_every=50,             # success and patience checked every 50 steps
      restarts=4,                 # vmapped random initialisations; any success counts
  )
  c.start = 3                     # first n tried at the first dimension; later ones start from
                                  # the previous dimension's critical-n
  c.redo = ()                     # dimensions searched again although the results file has them
                                  # (e.g. (32,) to replace a hand-assembled record)
  if arg and arg.isdigit():
    c.dims = list(range(4, int(arg) + 1))
  elif arg == 'quick':
    c.name = 'critical_n.quick'
    c.dims = list(range(4, 9))
    c.protocol.update(patience=300, max_steps=3000, restarts=2)
  elif arg and arg[0] == 'm' and arg[1:].isdigit():
    # The multi-vector curve of the beyond-single-vector study (docs/beyond_single_vector.md):
    # the same protocol and seeds as the single-vector sweep, m vectors per document.
    c.doc_vectors = int(arg[1:])
    c.name = f'critical_n_m{c.doc_vectors}'
    c.out_dir = 'results/beyond_single_vector'
    c.dims = list(range(4, 11))
  elif arg:
    raise ValueError("limit_free_embedding takes ':quick', ':<largest d>' or ':m<vectors per "
                     f"document>', got {arg!r}")
  return c
