"""embedjax: learn, compress and evaluate embeddings with pure JAX functions."""

__version__ = "0.1.0"
