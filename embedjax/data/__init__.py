"""embedjax.data: strict readers of benchmark files, synthetic data, CTR data and TFDS builders.

  readers         BEIR, STS-B, SICK, MRPC, Banking77, AG News, LIMIT, JSONL/CSV/TSV user files
  synthetic       small generated retrieval / STS / pair / classification sets (no files needed)
  ctr             MovieLens, Criteo and Avazu click logs; synthetic CTR data
  tfds_builders   TFDS (array_record) builders over the local files, read through grain
  files           a researcher's own JSONL/CSV/TSV training file: validated, converted, random access

Names are imported on first use (TFDS and grain are slow to import).
"""

from __future__ import annotations

from embedjax.lazy import lazy_exports

_ATTRIBUTES = {
    **dict.fromkeys(('RetrievalData', 'PairData', 'ClassificationData', 'QrelRow', 'read_jsonl',
                     'read_qrels_tsv', 'beir_splits', 'read_beir', 'read_limit', 'read_stsb',
                     'read_sick', 'read_mrpc', 'read_banking77', 'read_ag_news'), 'readers'),
    **dict.fromkeys(('synthetic_retrieval', 'synthetic_sts', 'synthetic_pairs',
                     'synthetic_classification', 'write_beir'), 'synthetic'),
    **dict.fromkeys(('CTRData', 'CTRRows', 'read_movielens_ctr', 'read_criteo_tsv',
                     'read_criteo_csv', 'read_avazu_csv', 'criteo_ctr', 'avazu_ctr',
                     'synthetic_ctr', 'build_vocabs'), 'ctr'),
    **dict.fromkeys(('load_pairs_source', 'pairs_loader'), 'tfds_builders'),
    **dict.fromkeys(('FileSpec', 'FileStats', 'validate', 'prepare', 'is_file_source'), 'files'),
}
_SUBMODULES = ('ctr', 'files', 'readers', 'synthetic', 'tfds_builders')

__all__ = sorted(_ATTRIBUTES) + list(_SUBMODULES)
__getattr__, __dir__ = lazy_exports(globals(), _ATTRIBUTES, _SUBMODULES)
