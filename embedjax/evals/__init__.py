"""embedjax.evals"""
