"""The ``hiercell`` sub-commands (one module per command)."""
