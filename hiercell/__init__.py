"""hiercell: two-stage VGG16 + SVM classification of peripheral blood cell images."""

__version__ = "0.1.0"
