"""The package version (one place; ``setup.cfg`` and ``hiercell.__version__`` read it)."""

__version__ = "0.1.0"
