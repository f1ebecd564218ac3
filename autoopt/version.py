"""The version of autoopt (its own module: a module of the package can read it without importing the package)."""

__version__ = "0.1.0"
