"""Trunk features (VGG16 ``block4_pool``) computed once and cached on disk.

The cache is a folder per *configuration* (input size, masking, backbone
weights, preprocessing, and the segmentation's version where masks or the
canonical frame are used) holding one ``float16`` ``.npy`` file per image, named
by the SHA-1 of the image file's bytes. Renaming or moving images keeps their
features; changing a pixel does not. Extraction resumes where it stopped, and
a file torn by a killed run is recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_open
from .backbone import run_trunk, trunk_output_shape
from .fileutil import file_digest
from .io import try_load_image
from .prefetch import chunks, ordered_map
from .preprocess import augment_view, prepare_image
from .progress import tracker

CACHE_ENV = "HIERCELL_CACHE"


def default_cache_dir() -> Path:
    """``$HIERCELL_CACHE`` or ``~/.cache/hiercell``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hiercell")


@dataclass(frozen=True)
class TrunkConfig:
    """What trunk features depend on."""

    input_size: int
    masked: bool
    weights_id: str
    layer: str = "block4_pool"
    preprocess: dict | None = None  # the bundle's preprocessing options
    view: int = 0  # 0: the image itself; k > 0: the k-th augmented training view

    @property
    def key(self) -> str:
        d = dict(self.__dict__)
        if not d["preprocess"]:  # keeps the keys of caches written before the option existed
            del d["preprocess"]
        if d["masked"] or (d.get("preprocess") or {}).get("framing"):
            from .segmentation import VERSION

            if VERSION > 1:  # keeps the keys of caches written with the first masks
                d["segmentation_version"] = VERSION
        if not d["view"]:
            del d["view"]
        else:
            from .augment import AUGMENT_VERSION

            d["augment_version"] = AUGMENT_VERSION
        text = json.dumps(d, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


class FeatureCache:
    """On-disk store of trunk features for one :class:`TrunkConfig`."""

    def __init__(self, root, config: TrunkConfig):
        self.config = config
        kind = "masked" if config.masked else "raw"
        view = f"-view{config.view}" if config.view else ""
        self.dir = Path(root) / f"trunk-{config.input_size}px-{kind}{view}-{config.key}"
        self.dir.mkdir(parents=True, exist_ok=True)
        info = self.dir / "config.json"
        if not info.exists():
            info.write_text(json.dumps(config.__dict__, indent=2))

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.npy"

    def get(self, digest: str):
        """Cached features for an image digest, or ``None``."""
        path = self._path(digest)
        if not path.exists():
            return None
        try:
            return np.load(path)
        except (ValueError, OSError, EOFError):  # a torn write from a killed run
            return None

    def put(self, digest: str, features: np.ndarray) -> None:
        """Store features atomically (write to a temporary file, then rename)."""
        with atomic_open(self._path(digest), "wb") as fh:
            np.save(fh, features.astype(np.float16))


class RowView:
    """Rows ``rows`` of ``array`` without copying them: indexing with an int or a slice
    gives arrays, indexing with an array of positions gives another ``RowView``.

    Lets training pass a subset of several large feature arrays (augmented views)
    without holding a copy of each.
    """

    def __init__(self, array, rows):
        self.array = array
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows),) + tuple(array.shape[1:])
        self.dtype = array.dtype

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.array[self.rows[key]]
        if isinstance(key, slice):
            return self.array[self.rows[key]]
        return RowView(self.array, self.rows[np.asarray(key)])


@dataclass
class ExtractionResult:
    """Trunk features for the images that could be read, and why others could not."""

    features: np.ndarray  # (n_ok, h, w, 512) float16
    ok: np.ndarray  # (n_paths,) bool: which paths have a row in ``features``
    errors: dict = field(default_factory=dict)  # path -> reason

    def kept(self, items) -> list:
        """The ``items`` (one per path, in order: samples, labels...) whose image was read."""
        return [item for item, ok in zip(items, self.ok) if ok]


def load_prepared(path, config: TrunkConfig, digest: str | None = None):
    """``(prepared uint8 image, None)`` or ``(None, reason)``: one bad file never stops a batch.

    For an augmented view (``config.view > 0``) the augmentation is seeded by the
    view and the image's ``digest``, so a view is the same on every run.
    """
    rgb, reason = try_load_image(path)
    if rgb is None:
        return None, reason
    try:
        if config.view:
            seed = [config.view, int((digest or file_digest(path, "sha1"))[:12], 16)]
            return augment_view(rgb, config.input_size, seed, config.masked,
                                config.preprocess), None
        return prepare_image(rgb, config.input_size, config.masked, config.preprocess), None
    except Exception as exc:  # noqa: BLE001 - e.g. an image too small to segment
        return None, f"cannot prepare image: {type(exc).__name__}: {exc}"


def extract_trunk_features(paths, trunk, config: TrunkConfig, cache: FeatureCache | None = None,
                           batch_size: int = 32, progress=None,
                           label: str = "VGG16 trunk features") -> ExtractionResult:
    """Trunk features for ``paths``, read from ``cache`` where present.

    Decoding and preparing run in background threads while the trunk runs on
    the previous batch. ``progress``: see :mod:`hiercell.progress`.
    """
    paths = [str(p) for p in paths]
    n = len(paths)
    shape = trunk_output_shape(trunk)
    out = np.zeros((n,) + shape, dtype=np.float16)
    ok = np.zeros(n, dtype=bool)
    errors: dict = {}
    digests = [None] * n
    todo = []
    for i, p in enumerate(paths):
        try:
            digests[i] = file_digest(p, "sha1")
        except OSError as exc:
            errors[p] = f"cannot read file ({exc.strerror})"
            continue
        cached = cache.get(digests[i]) if cache is not None else None
        if cached is not None and cached.shape == shape:
            out[i] = cached
            ok[i] = True
        else:
            todo.append(i)
    with tracker(progress, n, label) as update:
        update(n - len(todo))
        loaded = ordered_map(lambda i: (i, *load_prepared(paths[i], config, digests[i])), todo,
                             workers=2,
                             ahead=2 * batch_size)
        with closing(loaded):
            for batch in chunks(loaded, batch_size):
                good = [(i, img) for i, img, _ in batch if img is not None]
                errors.update({paths[i]: reason for i, img, reason in batch if img is None})
                if good:
                    feats = run_trunk(trunk, np.stack([img for _, img in good]), batch_size)
                    for (i, _), f in zip(good, feats.astype(np.float16)):
                        out[i] = f
                        ok[i] = True
                        if cache is not None:
                            cache.put(digests[i], f)
                update(len(batch))
    return ExtractionResult(features=out[ok], ok=ok, errors=errors)


def model_features(model, paths, view: int = 0, cache_dir=None, progress=None,
                   label: str = "VGG16 trunk features") -> ExtractionResult:
    """Trunk features of ``paths`` as ``model`` (an :class:`~hiercell.model.ImageClassifier`)
    computes them: of the images themselves (``view`` 0) or of their ``view``-th augmented
    training view; read from and written to the feature cache under ``cache_dir`` (none:
    no cache)."""
    config = dataclasses.replace(model.trunk_config(), view=view)
    cache = FeatureCache(cache_dir, config) if cache_dir else None
    return extract_trunk_features(paths, model.trunk, config, cache, progress=progress,
                                  label=label)


def trunk_views(model, paths, views=4, progress=None, cache_dir=None,
                label="adaptation images"):
    """Trunk maps of ``paths`` as ``model`` sees them (view 0) and of ``views`` augmented
    views: ``(maps (1 + views, n_ok, h, w, 512), ok mask, errors)``; cached in
    ``cache_dir`` when given; ``label`` names view 0 in the progress bar."""
    results = [model_features(model, paths, view, cache_dir, progress,
                              label if view == 0 else f"augmented view {view}/{views}")
               for view in range(views + 1)]
    return np.stack([r.features for r in results]), results[0].ok, results[0].errors
