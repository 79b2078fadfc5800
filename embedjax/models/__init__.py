"""embedjax.models: embedding models as a spec + a params pytree, and loading / saving them.

  load(name_or_folder)      an EmbeddingModel: encode, similarity, save (``model.py``)
  load_pretrained           the same weights as a plain Pretrained record (``pretrained.py``)
  EmbedderSpec, BertConfig  what defines a model besides its weights (``spec.py``, ``bert.py``)
  DecoderConfig, Decoder    Llama / Mistral / Qwen2 / Qwen3 backbones (``decoder.py``,
                            import/export in ``hf_decoder.py``)
  LoraConfig, init_lora ... LoRA over params pytrees (``lora.py``)
  latent_attention_pool     NV-Embed's latent-attention pooling (``latent_attention.py``)
  PromptConfig, prompteol   instructions and prompt templates for decoder embedders (``prompts.py``)
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
    'embed': 'embedder', 'embed_packed': 'embedder', 'embed_layers': 'layerwise',
    'POOLING_MODES': 'pooling', 'pool': 'pooling', 'pool_segments': 'pooling',
    'SIMILARITIES': 'similarity',
    'DecoderConfig': 'decoder', 'Decoder': 'decoder',
    'LoraConfig': 'lora', 'init_lora': 'lora', 'apply_lora': 'lora', 'merge_lora': 'lora',
    'lora_scope': 'lora',
    'init_latent_attention': 'latent_attention', 'latent_attention_pool': 'latent_attention',
    'latent_attention_pool_segments': 'latent_attention',
    'PromptConfig': 'prompts', 'prompteol': 'prompts', 'instruct_query': 'prompts',
    'instruction_pool_mask': 'prompts',
}
_SUBMODULES = ('bert', 'decoder', 'embedder', 'hf_decoder', 'latent_attention', 'layerwise',
               'lora', 'model', 'pooling', 'pretrained', 'prompts', 'similarity', 'spec', 'tokenizer')

__all__ = sorted(_ATTRIBUTES) + list(_SUBMODULES)
__getattr__, __dir__ = lazy_exports(globals(), _ATTRIBUTES, _SUBMODULES)
