"""Hardened, drop-in session engines for Django."""

__version__ = "0.1.0"
