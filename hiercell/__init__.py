"""hiercell: two-stage VGG16 + SVM classification of peripheral blood cell images.

>>> import hiercell
>>> model = hiercell.load()                 # the bundled default model
>>> records = model.predict_paths(["cell.jpg"])
>>> result = hiercell.classify_folder("folder/", out="results.csv")
"""

__version__ = "0.1.0"


def load(path=None):
    """The :class:`~hiercell.hierarchy.HierarchicalClassifier` of a bundle (default: bundled)."""
    from .bundle import load as _load

    return _load(path)


def classify_folder(*args, **kwargs):
    """Classify every image under the given paths; see :func:`hiercell.classify.classify_folder`."""
    from .classify import classify_folder as _classify_folder

    return _classify_folder(*args, **kwargs)


__all__ = ["load", "classify_folder", "__version__"]
