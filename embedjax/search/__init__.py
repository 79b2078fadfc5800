"""embedjax.search"""
