"""hiercell: two-stage VGG16 + SVM classification of peripheral blood cell images.

>>> import hiercell
>>> model = hiercell.load()                 # the bundled default model
>>> records = model.predict_records(["cell.jpg"])
>>> result = hiercell.classify_folder("folder/", out="results.csv")
"""

from .version import __version__


def _map_checkout_folders():
    """In a source checkout, serve ``hiercell.segmentation`` and ``hiercell.models`` from
    the repo's root folders, as an installation does (``setup.cfg``'s ``package_dir``).

    Without this, running from the repo root (``python -m pytest``, ``python cli.py``)
    imports this folder as ``hiercell`` and those two sub-packages do not exist.
    Installed copies (site-packages) hold them inside the package and skip this.
    """
    import importlib.machinery
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    root = here.parent
    folders = {f"{__name__}.segmentation": root / "segmentation",
               f"{__name__}.models": root / "models"}
    if not (root / "setup.cfg").is_file() or any((here / p.name).exists() for p in folders.values()):
        return

    class CheckoutFinder:
        @staticmethod
        def find_spec(fullname, path=None, target=None):
            folder = folders.get(fullname)
            if folder is None or not (folder / "__init__.py").is_file():
                return None
            return importlib.util.spec_from_file_location(
                fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])

    if not any(type(f).__name__ == "CheckoutFinder" for f in sys.meta_path):
        sys.meta_path.insert(0, CheckoutFinder())


_map_checkout_folders()


def load(path=None, precision="auto", engine=None):
    """The :class:`~hiercell.model.ImageClassifier` of a bundle (default: the bundled model).

    ``precision``: the VGG16 trunk's inference precision, ``"auto"`` (default: bfloat16
    on a CPU with native bf16, mixed float16 on a GPU, float32 elsewhere),
    ``"float32"``, ``"bfloat16"`` or ``"float16"`` (see :func:`hiercell.bundle.load_bundle`);
    ``model.info["precision"]`` is the one used. ``engine``: ``"keras"``, ``"openvino"``
    or ``None`` (``$HIERCELL_ENGINE``, else OpenVINO where installed, on a CPU);
    ``model.info["engine"]`` is the one used.
    """
    from .bundle import load as _load

    return _load(path, precision, engine)


def classify_folder(*args, **kwargs):
    """Classify every image under the given paths; see :func:`hiercell.classify.classify_folder`."""
    from .classify import classify_folder as _classify_folder

    return _classify_folder(*args, **kwargs)


__all__ = ["load", "classify_folder", "__version__"]
