"""Shared test fixtures."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "data" / "pbc"

#: ``hiercell train``/``ablate`` options for a tiny, fast, weight-free run (random VGG16, 32 px).
TINY = ["--image-size", "32", "--backbone-weights", "none", "--head-epochs", "2",
        "--finetune-epochs", "1", "--batch-size", "8", "--others-per-class", "3", "--quiet"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A PBC-style folder: 6 rotated/flipped copies of each fixture image (no generic labels)."""
    root = tmp_path_factory.mktemp("pbc_tiny")
    for src in sorted(FIXTURES.glob("*/*.jpg")):
        if src.name.startswith(("NEUTROPHIL_", "IG_")):
            continue
        img = cv2.imread(str(src))
        for k in range(6):
            view = np.rot90(img, k % 4)
            view = view[:, ::-1] if k >= 4 else view
            cv2.imwrite(str(root / f"{src.stem}_{k}.jpg"), np.ascontiguousarray(view))
    return root




@pytest.fixture(scope="session")
def tiny_bundle(tiny_data, tmp_path_factory):
    """A bundle trained once per test run by ``hiercell train`` on ``tiny_data`` (32 px,
    random VGG16), with its feature cache."""
    from click.testing import CliRunner

    from hiercell.cli import main

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    cache = tmp_path_factory.mktemp("cache")
    result = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(out), "--cache",
                                       str(cache), *TINY])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_bundle):
    """The tiny bundle, loaded once in float32 (the same numbers on every machine; tests
    must not modify it)."""
    from hiercell.bundle import load

    return load(tiny_bundle, precision="float32")


def rgb_images(paths):
    """The images at ``paths`` as RGB uint8 arrays."""
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def rehash_bundle(path):
    """Rewrite the ``SHA256SUMS`` of the bundle folder ``path`` for its current files (as
    the maker of an edited bundle would), so that a test reaches the check it means."""
    import hashlib

    path = Path(path)
    lines = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(path).as_posix()}"
             for f in sorted(path.rglob("*")) if f.is_file() and f.name != "SHA256SUMS"]
    (path / "SHA256SUMS").write_text("\n".join(lines) + "\n")
