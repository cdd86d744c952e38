"""``python -m hiercell ...`` is the same as ``hiercell ...``."""

from hiercell.cli import main

main(prog_name="hiercell")
