"""embedjax.models: embedding models as a spec + a params pytree, and loading / saving them.

  load(name_or_folder)      an EmbeddingModel: encode, similarity, save (``model.py``)
  load_pretrained           the same weights as a plain Pretrained record (``pretrained.py``)
  EmbedderSpec, BertConfig  what defines a model besides its weights (``spec.py``, ``bert.py``)
  embed, embed_packed       the pure forward functions (``embedder.py``)
  pool, pool_segments       pooling modes (``pooling.py``)
  SIMILARITIES              similarity functions by name (``similarity.py``)

Names are imported on first use, so ``import embedjax.models`` does not import jax.
"""

from __future__ import annotations

from embedjax.lazy import lazy_exports

_ATTRIBUTES = {
    'EmbeddingModel': 'model', 'load': 'model',
    'Pretrained': 'pretrained', 'PACKAGED_MODELS': 'pretrained', 'load_pretrained': 'pretrained',
    'load_spec': 'pretrained', 'export_sentence_transformers': 'pretrained',
    'resolve_model_dir': 'pretrained', 'init_params': 'pretrained',
    'EmbedderSpec': 'spec', 'BertConfig': 'bert', 'BertEncoder': 'bert',
    'TextTokenizer': 'tokenizer',
    'embed': 'embedder', 'embed_packed': 'embedder',
    'POOLING_MODES': 'pooling', 'pool': 'pooling', 'pool_segments': 'pooling',
    'SIMILARITIES': 'similarity',
}
_SUBMODULES = ('bert', 'embedder', 'model', 'pooling', 'pretrained', 'similarity', 'spec',
               'tokenizer')

__all__ = sorted(_ATTRIBUTES) + list(_SUBMODULES)
__getattr__, __dir__ = lazy_exports(globals(), _ATTRIBUTES, _SUBMODULES)
