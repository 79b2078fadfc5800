"""Random token batches for the train-step tests (and the sharded-step script they start)."""

from __future__ import annotations

import numpy as np

# XLA options for tests that compare values: far quicker compiles of the step (about half on two
# cores), the same arithmetic up to float rounding; never for memory or speed measurements.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def random_batch(rng: np.random.Generator, b: int, lq: int, ld: int, h: int = 0) -> dict:
  """A batch of b pairs as the train step takes it: right-padded ids in [1, 50) (valid for every
  tiny test vocabulary) with random lengths >= 2, h hard negatives per row, distinct doc keys."""
  def toks(shape):
    ids = rng.integers(1, 50, size=shape).astype(np.int32)
    lengths = rng.integers(2, shape[-1] + 1, size=shape[:-1])
    mask = (np.arange(shape[-1]) < lengths[..., None]).astype(np.int32)
    return ids * mask, mask
  batch = {}
  batch['query_ids'], batch['query_mask'] = toks((b, lq))
  batch['doc_ids'], batch['doc_mask'] = toks((b, ld))
  if h:
    batch['neg_ids'], batch['neg_mask'] = toks((b, h, ld))
  batch['doc_key'] = np.arange(b, dtype=np.int32)
  return batch
