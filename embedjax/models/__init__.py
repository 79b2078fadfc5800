"""embedjax.models"""
