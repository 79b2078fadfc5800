"""embedjax.tables"""
