"""embedjax.quant"""
