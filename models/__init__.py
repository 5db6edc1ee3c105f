"""Generative Pyro programs of the CW-VAE: one file a variant, each defining ``model``."""
