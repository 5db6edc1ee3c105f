"""Clockwork Variational Autoencoders (Saxena, Ba & Hafner, 2021) as Pyro programs."""

__version__ = "0.1.0"
