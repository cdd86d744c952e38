"""The ``hiercell`` command line (click): the group; each command is a module of
:mod:`hiercell.commands`."""

import logging
import os

import click

from .version import __version__
from .commands.ablate import ablate
from .commands.adapt import adapt
from .commands.align import align
from .commands.classify import classify
from .commands.evaluate import evaluate
from .commands.merge import merge
from .commands.quantize import quantize
from .commands.segment import segment
from .commands.train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hiercell")
def main():
    """Classify peripheral blood cell images with a two-stage VGG16 + SVM model."""
    # TensorFlow's informational notes (CPU features) and its retracing hints speak to
    # developers of hiercell, not to its users; errors still show (TF_CPP_MIN_LOG_LEVEL=0
    # in the environment brings the notes back; the oneDNN line is printed before
    # TensorFlow reads that setting and stays)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


for _command in (classify, merge, train, evaluate, ablate, segment, quantize, align, adapt):
    main.add_command(_command)

if __name__ == "__main__":
    main()
