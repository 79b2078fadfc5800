"""embedjax.limit: the LIMIT dataset (Weller et al. 2025) and its theory: qrel patterns, corpora, free embeddings."""
