"""hiercell: two-stage VGG16 + SVM classification of peripheral blood cell images.

>>> import hiercell
>>> model = hiercell.load()                 # the bundled default model
>>> records = model.predict(["cell.jpg"])
>>> result = hiercell.classify_folder("folder/", out="results.csv")
"""

__version__ = "0.1.0"


def load(path=None, precision="float32"):
    """The :class:`~hiercell.hierarchy.HierarchicalClassifier` of a bundle (default: bundled).

    ``precision``: the VGG16 trunk's inference precision, ``"float32"``,
    ``"bfloat16"`` or ``"auto"`` (see :func:`hiercell.bundle.load_bundle`).
    """
    from .bundle import load as _load

    return _load(path, precision)


def classify_folder(*args, **kwargs):
    """Classify every image under the given paths; see :func:`hiercell.classify.classify_folder`."""
    from .classify import classify_folder as _classify_folder

    return _classify_folder(*args, **kwargs)


__all__ = ["load", "classify_folder", "__version__"]
