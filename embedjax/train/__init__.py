"""embedjax.train"""
