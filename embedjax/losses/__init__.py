"""embedjax.losses"""
