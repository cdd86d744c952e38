"""Repo-root entry point: ``python cli.py ...`` is the same as ``hiercell ...``.

The command-line interface itself lives in :mod:`hiercell.cli` so that
installing the package does not put a bare top-level ``cli`` module into
site-packages.
"""

from hiercell.cli import main

if __name__ == "__main__":
    main()
