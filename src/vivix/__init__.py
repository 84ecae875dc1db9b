"""Vivix: a self-hostable, multi-tenant API gateway for generative media."""

__version__ = "0.1.0"
