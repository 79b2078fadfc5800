"""embedjax.data"""
