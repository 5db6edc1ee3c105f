"""Inference Pyro programs that pair with the models: one file a variant, each defining ``guide``."""
