"""The ``hiercell`` command line (click)."""

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hiercell")
def main():
    """Classify peripheral blood cell images with a two-stage VGG16 + SVM model."""


from .commands.ablate import ablate  # noqa: E402
from .commands.classify import classify  # noqa: E402
from .commands.train import evaluate, train  # noqa: E402
from .commands.segment import segment  # noqa: E402

main.add_command(classify)
main.add_command(train)
main.add_command(evaluate)
main.add_command(ablate)
main.add_command(segment)

if __name__ == "__main__":
    main()
