"""The ``hiercell`` command line (click)."""

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hiercell")
def main():
    """Classify peripheral blood cell images with a two-stage VGG16 + SVM model."""


if __name__ == "__main__":
    main()
