"""Trunk features (VGG16 ``block4_pool``) computed once and cached on disk.

The cache is a folder per *configuration* (input size, masking, backbone
weights) holding one ``float16`` ``.npy`` file per image, named by the SHA-1 of
the image file's bytes. Renaming or moving images keeps their features;
changing a pixel does not. Extraction resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .atomic import atomic_open
from .backbone import preprocess
from .io import ImageLoadError, load_image


def file_digest(path) -> str:
    """SHA-1 hex digest of a file's bytes (the cache key of an image)."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Pad ``rgb`` (H, W, 3) to a square by edge replication, then resize to ``size``."""
    h, w = rgb.shape[:2]
    if h != w:
        d = abs(h - w)
        a, b = d // 2, d - d // 2
        pad = ((a, b), (0, 0)) if h < w else ((0, 0), (a, b))
        rgb = cv2.copyMakeBorder(rgb, *pad[0], *pad[1], cv2.BORDER_REPLICATE)
    interp = cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def prepare_image(rgb: np.ndarray, size: int, masked: bool) -> np.ndarray:
    """The model's view of an image: optionally masked, then square at ``size`` px."""
    if masked:
        from .segmentation import segment

        rgb = segment(rgb).masked_image
    return to_square(rgb, size)


@dataclass(frozen=True)
class TrunkConfig:
    """What trunk features depend on."""

    input_size: int
    masked: bool
    weights_id: str
    layer: str = "block4_pool"

    @property
    def key(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


class FeatureCache:
    """On-disk store of trunk features for one :class:`TrunkConfig`."""

    def __init__(self, root, config: TrunkConfig):
        self.config = config
        self.dir = Path(root) / f"trunk-{config.input_size}px-{'masked' if config.masked else 'raw'}-{config.key}"
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
        except (ValueError, OSError):  # a torn write from a killed run
            return None

    def put(self, digest: str, features: np.ndarray) -> None:
        """Store features atomically (write to a temporary file, then rename)."""
        with atomic_open(self._path(digest), "wb") as fh:
            np.save(fh, features.astype(np.float16))


@dataclass
class ExtractionResult:
    """Trunk features for the images that could be read, and why others could not."""

    features: np.ndarray  # (n_ok, h, w, 512) float16
    ok: np.ndarray  # (n_paths,) bool: which paths have a row in ``features``
    errors: dict = field(default_factory=dict)  # path -> reason


def _load_prepared(path, size, masked):
    """``(image, None)`` or ``(None, reason)``: one bad file never stops a batch."""
    try:
        return prepare_image(load_image(path), size, masked), None
    except ImageLoadError as exc:
        return None, exc.reason
    except Exception as exc:  # noqa: BLE001 - e.g. an image too small to segment
        return None, f"cannot prepare image: {type(exc).__name__}: {exc}"


def extract_trunk_features(paths, trunk, config: TrunkConfig, cache: FeatureCache | None = None,
                           batch_size: int = 32, progress=None) -> ExtractionResult:
    """Trunk features for ``paths``, read from ``cache`` where present.

    Decoding and resizing run in a thread pool while the trunk runs on the
    previous batch. ``progress(n)`` is called with the number of images done.
    """
    import tensorflow as tf

    paths = [str(p) for p in paths]
    n = len(paths)
    shape = tuple(int(d) for d in trunk.output.shape[1:])
    out = np.zeros((n,) + shape, dtype=np.float16)
    ok = np.zeros(n, dtype=bool)
    errors: dict = {}
    digests = [None] * n
    todo = []
    for i, p in enumerate(paths):
        try:
            digests[i] = file_digest(p)
        except OSError as exc:
            errors[p] = f"cannot read file ({exc.strerror})"
            continue
        cached = cache.get(digests[i]) if cache is not None else None
        if cached is not None and cached.shape == shape:
            out[i] = cached
            ok[i] = True
        else:
            todo.append(i)
    if progress:
        progress(n - len(todo))
    forward = tf.function(lambda x: trunk(x, training=False))
    batches = [todo[k:k + batch_size] for k in range(0, len(todo), batch_size)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        def submit(batch):
            return [pool.submit(_load_prepared, paths[i], config.input_size, config.masked) for i in batch]

        pending = submit(batches[0]) if batches else []
        for b, batch in enumerate(batches):
            loaded = [f.result() for f in pending]
            pending = submit(batches[b + 1]) if b + 1 < len(batches) else []
            good = [i for i, (img, _) in zip(batch, loaded) if img is not None]
            for i, (img, reason) in zip(batch, loaded):
                if img is None:
                    errors[paths[i]] = reason
            if good:
                x = preprocess(np.stack([img for img, _ in loaded if img is not None]))
                feats = forward(tf.constant(x)).numpy().astype(np.float16)
                for i, f in zip(good, feats):
                    out[i] = f
                    ok[i] = True
                    if cache is not None:
                        cache.put(digests[i], f)
            if progress:
                progress(len(batch))
    return ExtractionResult(features=out[ok], ok=ok, errors=errors)
