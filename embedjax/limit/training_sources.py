"""LIMIT training sources for the training loop (``{**train.data.SOURCES, **SOURCES}``).

  limit_small  LIMIT-small qrels: "Who likes X?" -> each of its two relevant people (the *test*
               set: training on it measures what the model can fit, not what it generalises)
  limit_gen    a generated LIMIT-style training set (dense pattern, 46 people, 1,000 queries,
               seed 1: other names and attribute assignments than LIMIT-small; needs no shared data)
"""

from __future__ import annotations

from pathlib import Path

from embedjax.data import synthetic
from embedjax.data.readers import read_limit
from embedjax.limit import patterns
from embedjax.train.data import Source, beir_rows


def _limit_small(data_dir: Path, cache: Path) -> list[dict]:
  # LIMIT ships qrels as JSON lines; written once as a BEIR folder so the same tfds builder reads it.
  folder = cache / 'limit_small_beir'
  if not (folder / 'qrels' / 'test.tsv').exists():
    synthetic.write_beir(read_limit(data_dir / 'limit' / 'limit-small'), folder)
  return beir_rows(folder, 'test', cache)


def _limit_gen(data_dir: Path | None, cache: Path) -> list[dict]:
  folder = cache / 'limit_gen_dense_46_1000_seed1'
  if not (folder / 'qrels' / 'test.tsv').exists():
    patterns.generate_corpus('dense', 46, 1000, seed=1).write_beir(folder)
  return beir_rows(folder, 'test', cache)


SOURCES = {
    'limit_small': Source(_limit_small, needs_shared_data=True, hard_negatives=False,
                          folders=('limit/limit-small',)),
    'limit_gen': Source(_limit_gen, needs_shared_data=False, hard_negatives=False),
}
