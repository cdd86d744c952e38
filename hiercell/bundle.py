"""Model bundles: a folder holding a trained :class:`~hiercell.model.ImageClassifier`.

Layout (format 2; format 3 is format 2 with ``ensemble/``)::

    bundle.json           classes, input size, masking, backbone, training data,
                          metrics, package and format version; per stage its
                          parameters and fitted state; any further keys (e.g.
                          "preprocess") pass through to ``model.info``
    trunk.npz             VGG16 blocks 1-4 weights (float16)
    stage1/head.npz       block5 + dense head weights (float16)
    stage1/svm.joblib     the fitted scikit-learn pipeline (StandardScaler + calibrated SVC)
    stage2/...            the same for stage 2 (optional)
    inlab/stage1/...      optional: a second stage 1 for the cells that look like the
                          training lab's (bundle.json "inlab_stages", "inlab_gate":
                          hiercell.hierarchy.HierarchicalClassifier.inlab)
    base/stageN/...       adapted bundles only: the base model's stages (bundle.json's
                          "stage2_crossing": false when the adapted stage 1 keeps the
                          base's stage 2: see hiercell.hierarchy)
    ensemble/K/stage1/... format 3 only: members 1, 2, ... of a stage 1 that is a
                          hiercell.ensemble.StageEnsemble (member 0 in stage1/;
                          bundle.json "stage1_ensemble" holds their states): an adapted
                          bundle made from a base with an in-lab stage 1
    alignment.npz         the training lab's mean trunk features and, in a bundle
                          aligned to a new lab (hiercell align), that lab's
                          (hiercell.alignment)
    gate.npz              adapted bundles only: the domain gate that picks, per
                          cell, the adapted stages or the base's (hiercell.domain)
    SHA256SUMS            digest of every file above

Only scikit-learn objects are pickled: the stage is rebuilt from
``bundle.json`` (:meth:`StageClassifier.from_fitted_state`), so hiercell's
classes can move without breaking bundles. Format 1 (the bundled
``pbc-vgg16-svm``) pickled the whole ``hiercell.stage.StageClassifier`` in
``svm.joblib``; :func:`_load_stage_v1` still reads it, which needs that class
at that import path (``tests/test_bundled_model.py`` loads one).

``load_bundle`` checks every digest in ``SHA256SUMS`` (and that no file is
missing) *before* anything is unpickled, and refuses a bundle whose format
version it does not know.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .version import __version__
from .fileutil import file_digest, json_text

FORMAT_VERSION = 2
#: The format of a bundle whose stage 1 is a :class:`~hiercell.ensemble.StageEnsemble`
#: (``stage1_ensemble``: format 2 plus the other members), so that a hiercell that would
#: read its first member alone refuses it instead.
ENSEMBLE_FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
MANIFEST = "SHA256SUMS"
DEFAULT_MODEL = "pbc-robust-vgg16-svm"
#: bundle.json keys the loader interprets; every other key goes to ``model.info``.
_STRUCTURE_KEYS = ("input_size", "masked", "stages", "base_stages", "preprocess",
                   "stage2_crossing", "inlab_stages", "inlab_gate", "stage1_ensemble")
#: ``model.info`` keys that describe a loaded model, not the bundle (never saved).
_RUNTIME_KEYS = ("trunk_sha256", "precision", "engine", "tag")


class BundleError(RuntimeError):
    """A model bundle is missing, tampered with, or from an incompatible version."""


def _sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def _save_weights(model, path: Path) -> None:
    arrays = {f"w{i:03d}": w.astype(np.float16) for i, w in enumerate(model.get_weights())}
    np.savez_compressed(path, **arrays)


def _read_weights(path: Path, last: int | None = None) -> list:
    """The weight arrays of ``path`` in Keras order, float32; only the ``last`` ones
    when given (the others are not decompressed)."""
    with np.load(path, allow_pickle=False) as data:
        keys = sorted(data.files)
        return [data[k].astype(np.float32) for k in (keys[-last:] if last else keys)]


def check_bundle_target(path, base=None) -> Path:
    """``path`` as a folder :func:`save_bundle` may write (a new one, or a bundle it
    replaces), checked before a long job; :class:`BundleError` naming it otherwise, and
    when it is the bundle ``base`` the new model is made from."""
    path = Path(path)
    if path.exists() and not (path / MANIFEST).is_file():
        raise BundleError(f"{path} exists and is not a model bundle; refusing to overwrite it")
    if base is not None and os.path.realpath(path) == os.path.realpath(base):
        raise BundleError(f"{path} is the model it starts from; write the new model to "
                          "another folder")
    return path


def save_bundle(model, path, metadata: dict | None = None, extra_files: dict | None = None) -> Path:
    """Write ``model`` (a fitted :class:`~hiercell.model.ImageClassifier`) as a bundle
    folder at ``path``. ``metadata`` adds (or replaces) top-level ``bundle.json`` keys;
    ``extra_files`` maps file names to text written into the bundle (e.g. a model card).

    The folder is assembled next to ``path`` and moved into place at the end.
    """
    path = check_bundle_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=path.parent))
    os.chmod(tmp, 0o755)
    try:
        _save_weights(model.trunk, tmp / "trunk.npz")
        members = getattr(model.hierarchy.stage1, "members", None)  # a StageEnsemble's
        stages = _save_stages(model.hierarchy if members is None else SimpleNamespace(
            stage1=members[0], stage2=model.hierarchy.stage2), tmp)
        ensemble = None if members is None else [
            _save_stages(SimpleNamespace(stage1=member, stage2=None),
                         tmp / "ensemble" / str(i))["stage1"]
            for i, member in enumerate(members[1:], 1)]
        reviewer = getattr(model.hierarchy, "reviewer", None)
        if reviewer is not None:
            np.savez_compressed(tmp / "review.npz", **reviewer.to_arrays())
        alignment = getattr(model.hierarchy, "alignment", None)
        if alignment is not None:
            np.savez_compressed(tmp / "alignment.npz", **alignment.to_arrays())
        inlab = getattr(model.hierarchy, "inlab", None)
        inlab_stages = (None if inlab is None else
                        _save_stages(SimpleNamespace(stage1=inlab, stage2=None), tmp / "inlab"))
        base_stages = None
        if getattr(model.hierarchy, "adapted", False):
            base_stages = _save_stages(model.hierarchy.base, tmp / "base")
            np.savez_compressed(tmp / "gate.npz", **model.hierarchy.gate.to_arrays())
        info = {k: v for k, v in model.info.items() if k not in _RUNTIME_KEYS}
        info.update(metadata or {})
        info.update({
            "format_version": FORMAT_VERSION if ensemble is None else ENSEMBLE_FORMAT_VERSION,
            "hiercell_version": __version__,
            "library_versions": library_versions(),
            "input_size": model.input_size,
            "masked": model.masked,
            "stages": stages,
        })
        info.pop("stage1_ensemble", None)
        if ensemble is not None:
            info["stage1_ensemble"] = ensemble
        info.pop("base_stages", None)
        if base_stages is not None:
            info["base_stages"] = base_stages
        if model.preprocess:
            info["preprocess"] = model.preprocess
        for key in ("inlab_stages", "inlab_gate"):
            info.pop(key, None)
        if inlab_stages is not None:
            info["inlab_stages"] = inlab_stages
            gate = model.hierarchy.inlab_gate
            if gate is not None:
                info["inlab_gate"] = float(gate)
        info.pop("stage2_crossing", None)
        if not getattr(model.hierarchy, "stage2_crossing", True):  # see HierarchicalClassifier
            info["stage2_crossing"] = False
        (tmp / "bundle.json").write_text(json_text(info, indent=2))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        lines = [f"{_sha256(p)}  {p.relative_to(tmp).as_posix()}" for p in files]
        (tmp / MANIFEST).write_text("\n".join(lines) + "\n")
        old = None
        if path.exists():  # an earlier bundle: move it aside, put the new one in, drop the old
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _save_stages(hierarchy, folder: Path) -> dict:
    """Write ``hierarchy``'s stages into ``folder/stageN/``; return their fitted states."""
    import joblib

    stages = {}
    for name, stage in (("stage1", hierarchy.stage1), ("stage2", hierarchy.stage2)):
        if stage is None:
            continue
        (folder / name).mkdir(parents=True)
        _save_weights(stage.head_, folder / name / "head.npz")
        joblib.dump(stage.svm_, folder / name / "svm.joblib")  # scikit-learn objects only
        if getattr(stage, "source_sample_", None) is not None:
            np.savez_compressed(folder / name / "source.npz", **stage.source_sample_)
        stages[name] = stage.fitted_state()
    return stages


def replace_arrays(path, name: str, arrays: dict) -> Path:
    """Write (or rewrite) the array file ``name`` (e.g. ``review.npz``) of the bundle at
    ``path`` and its line in ``SHA256SUMS``; the rest of the bundle is untouched
    (checked first)."""
    from .atomic import atomic_open

    path = Path(path)
    verify_bundle(path)
    with atomic_open(path / name, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    lines = [ln for ln in (path / MANIFEST).read_text().splitlines()
             if ln.strip() and ln.split(None, 1)[1].strip() != name]
    lines.append(f"{_sha256(path / name)}  {name}")
    with atomic_open(path / MANIFEST, "w") as fh:
        fh.write("\n".join(sorted(lines, key=lambda ln: ln.split(None, 1)[1])) + "\n")
    return path


def _read_reviewer(path: Path):
    """The bundle's :class:`~hiercell.review.ReviewScorer`, ``None`` when it has none."""
    if not (path / "review.npz").is_file():
        return None
    from .review import ReviewScorer

    with np.load(path / "review.npz", allow_pickle=False) as arrays:
        return ReviewScorer.from_arrays(arrays)


def load_reviewer(path=None):
    """The review scorer of the bundle at ``path`` (default: the bundled model), its
    digests checked, without loading the networks; ``None`` when it has none."""
    path = Path(path) if path is not None else default_bundle_path()
    verify_bundle(path)
    return _read_reviewer(path)


def replace_reviewer(path, reviewer) -> Path:
    """Rewrite the review scorer (``review.npz``) of the bundle at ``path``
    (:func:`replace_arrays`)."""
    return replace_arrays(path, "review.npz", reviewer.to_arrays())


def library_versions() -> dict:
    """Versions of the libraries whose objects a bundle pickles or whose weights it holds."""
    import sklearn

    out = {"numpy": np.__version__, "scikit-learn": sklearn.__version__}
    try:
        import keras
        import tensorflow as tf

        out.update({"tensorflow": tf.__version__, "keras": keras.__version__})
    except ImportError:  # pragma: no cover - tensorflow is a dependency
        pass
    return out


def bundle_tag(path=None) -> str:
    """The ``model`` column of results rows a bundle writes: ``NAME@DIGEST/segN``, its
    name, the first 12 hex digits of its ``bundle.json`` SHA-256 (any change of
    the model changes it) and :data:`hiercell.segmentation.VERSION` (the masks
    that frame its cells). ``path`` ``None``: the bundled default model."""
    from .segmentation import VERSION

    path = Path(path) if path is not None else default_bundle_path()
    name = json.loads((path / "bundle.json").read_text()).get("name") or path.name
    return f"{name}@{file_digest(path / 'bundle.json')[:12]}/seg{VERSION}"


def verify_bundle(path) -> dict:
    """Check ``SHA256SUMS`` and the format version; return the parsed ``bundle.json``."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a model bundle folder")
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise BundleError(f"{path}: no {MANIFEST} manifest; refusing to load an unverified bundle")
    listed = {}
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        if line.strip():
            parts = line.split(None, 1)
            if len(parts) != 2 or len(parts[0]) != 64:
                raise BundleError(f"{manifest}:{number}: not a 'SHA256  file' line")
            name = parts[1].strip()
            if not _inside(path, name):
                raise BundleError(f"{manifest}:{number}: {name!r} is not a file inside the "
                                  "bundle (absolute, '..' or a link out); refusing to load it")
            listed[name] = parts[0]
    for name, digest in listed.items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path}: {name} listed in {MANIFEST} is missing")
        if _sha256(f) != digest:
            raise BundleError(f"{path}: {name} does not match its SHA-256 in {MANIFEST} "
                              "(modified or corrupted); refusing to load it")
    for f in path.rglob("*"):
        rel = f.relative_to(path).as_posix()
        if f.is_file() and rel != MANIFEST and rel not in listed and f.suffix in (".joblib", ".npz", ".json"):
            raise BundleError(f"{path}: {rel} is not listed in {MANIFEST}; refusing to load it")
    if "bundle.json" not in listed:
        raise BundleError(f"{path}: bundle.json is not listed in {MANIFEST}")
    try:
        info = json.loads((path / "bundle.json").read_text())
    except ValueError as exc:
        raise BundleError(f"{path / 'bundle.json'}: not valid JSON ({exc})") from exc
    where = path / "bundle.json"
    if not isinstance(info, dict):
        raise BundleError(f"{where}: not a JSON object")
    version = info.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(f"{where}: format_version must be an integer, got "
                          f"{json.dumps(version)} ({type(version).__name__})")
    if version not in READABLE_FORMATS:
        raise BundleError(
            f"{path}: bundle format {version} (written by hiercell {info.get('hiercell_version')}) "
            f"is not supported by hiercell {__version__}, which reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}")
    missing = [k for k in ("input_size", "masked", "stages") if k not in info]
    if missing:
        raise BundleError(f"{where}: missing {', '.join(missing)}")
    size = info["input_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 1024 or size % 32:
        raise BundleError(f"{where}: input_size must be a multiple of 32 from 32 to 1024, got "
                          f"{json.dumps(size)}")
    if not isinstance(info["masked"], bool):
        raise BundleError(f"{where}: masked must be true or false, got {json.dumps(info['masked'])}")
    for key in ("stages", "base_stages", "inlab_stages"):
        stages = info.get(key)
        if key != "stages" and stages is None:
            continue
        if not isinstance(stages, dict) or "stage1" not in stages \
                or not set(stages) <= {"stage1", "stage2"} \
                or not all(isinstance(v, dict) for v in stages.values()):
            raise BundleError(f"{where}: {key} must map stage1 (and optionally stage2) to their "
                              f"state, got {sorted(stages) if isinstance(stages, dict) else stages!r}")
    members = info.get("stage1_ensemble")
    if members is not None and (not isinstance(members, list) or not members
                                or not all(isinstance(m, dict) for m in members)):
        raise BundleError(f"{where}: stage1_ensemble must be a non-empty list of stage "
                          f"states, got {json.dumps(members)[:80]}")
    if (members is not None) != (version == ENSEMBLE_FORMAT_VERSION):
        raise BundleError(f"{where}: format {ENSEMBLE_FORMAT_VERSION} goes with "
                          "stage1_ensemble and stage1_ensemble with format "
                          f"{ENSEMBLE_FORMAT_VERSION} (got format {version}"
                          f"{' with' if members is not None else ' without'} it)")
    if "inlab_stages" in info and set(info["inlab_stages"]) != {"stage1"}:
        raise BundleError(f"{where}: inlab_stages must hold stage1 alone, got "
                          f"{sorted(info['inlab_stages'])}")
    gate = info.get("inlab_gate")
    if gate is not None and (isinstance(gate, bool) or not isinstance(gate, (int, float))
                             or not 0 <= gate <= 1):
        raise BundleError(f"{where}: inlab_gate must be a number from 0 to 1, got "
                          f"{json.dumps(gate)}")
    if not isinstance(info.get("stage2_crossing", True), bool):
        raise BundleError(f"{where}: stage2_crossing must be true or false, got "
                          f"{json.dumps(info['stage2_crossing'])}")
    if ("base_stages" in info) != ("gate.npz" in listed):
        raise BundleError(f"{path}: an adapted bundle needs both base_stages in bundle.json "
                          "and gate.npz (one is missing)")
    return info


def _inside(root: Path, name: str) -> bool:
    """Whether the manifest name ``name`` is a relative path that stays inside ``root``."""
    if not name or "\\" in name or name.startswith("/") or Path(name).is_absolute():
        return False
    if ".." in Path(name).parts:
        return False
    try:
        return (root / name).resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def load_bundle(path, precision: str = "auto", engine: str | None = None):
    """Load a verified bundle as a :class:`~hiercell.model.ImageClassifier`.

    ``precision`` is the compute precision of the network at inference (the VGG16
    trunk and the stage heads; the SVMs are unchanged):
    ``"float32"``, ``"bfloat16"`` (about twice as fast on CPUs with native
    bf16, e.g. AVX512-BF16 or AMX), ``"float16"`` (mixed, for GPUs) or ``"auto"``
    (the default: float16 on a GPU, bfloat16 on a CPU with native bf16, else float32;
    see :func:`hiercell.backbone.inference_precision`), or ``"int8"`` (the OpenVINO
    trunk of :mod:`hiercell.fast`, made by ``hiercell quantize``). ``model.info["precision"]``
    says which one was used.

    ``engine``: what runs the network at inference, ``"keras"`` or ``"openvino"``
    (:mod:`hiercell.ovnet`, no TensorFlow); ``None`` = ``$HIERCELL_ENGINE`` or ``"auto"``
    (OpenVINO where installed, on a CPU; see :func:`hiercell.ovnet.resolve_engine`).
    ``model.info["engine"]`` says which one was used.
    """
    from .backbone import inference_precision
    from .hierarchy import HierarchicalClassifier
    from .model import ImageClassifier
    from .ovnet import resolve_engine

    path = Path(path)
    info = verify_bundle(path)
    _warn_on_version_mismatch(path, info.get("library_versions", {}))
    size = int(info["input_size"])
    precision = inference_precision(precision)
    trunk_sha256 = _sha256(path / "trunk.npz")
    # the heads of an int8 model run as "auto" would (on OpenVINO, which int8 needs anyway)
    head_precision = inference_precision("auto") if precision == "int8" else precision
    engine = resolve_engine(engine, head_precision)
    if precision == "int8":
        from .fast import load_int8_trunk

        trunk = load_int8_trunk(trunk_sha256)
    else:
        trunk = _load_trunk(path / "trunk.npz", size, precision, engine)
    load_stage = _load_stage_v1 if info["format_version"] == 1 else _load_stage_v2
    stages = _load_stages(path, info["stages"], load_stage, head_precision, engine)
    if "stage1_ensemble" in info:
        from .ensemble import StageEnsemble

        stages["stage1"] = StageEnsemble([stages["stage1"]] + [
            _load_stages(path / "ensemble" / str(i), {"stage1": state}, load_stage,
                         head_precision, engine)["stage1"]
            for i, state in enumerate(info["stage1_ensemble"], 1)])
    extra = {k: v for k, v in info.items() if k not in _STRUCTURE_KEYS}
    extra["trunk_sha256"] = trunk_sha256
    extra["tag"] = bundle_tag(path)
    extra["precision"] = precision
    extra["engine"] = engine
    reviewer = _read_reviewer(path)
    base = gate = None
    if "base_stages" in info:
        from .domain import DomainGate

        base_stages = _load_stages(path / "base", info["base_stages"], load_stage,
                                   head_precision, engine)
        base = HierarchicalClassifier(base_stages["stage1"], base_stages["stage2"])
        with np.load(path / "gate.npz", allow_pickle=False) as arrays:
            gate = DomainGate.from_arrays(arrays)
    alignment = None
    if (path / "alignment.npz").is_file():
        from .alignment import LabAlignment

        with np.load(path / "alignment.npz", allow_pickle=False) as arrays:
            alignment = LabAlignment.from_arrays(arrays)
    inlab = None
    if "inlab_stages" in info:
        inlab = _load_stages(path / "inlab", info["inlab_stages"], load_stage, head_precision,
                             engine)["stage1"]
    hierarchy = HierarchicalClassifier(stages["stage1"], stages["stage2"], reviewer, base, gate,
                                       alignment, stage2_crossing=info.get("stage2_crossing", True),
                                       inlab=inlab,
                                       inlab_gate=info.get("inlab_gate"))
    return ImageClassifier(trunk, hierarchy,
                           input_size=size, masked=bool(info["masked"]),
                           preprocess=info.get("preprocess") or None, info=extra)


def _load_stages(folder: Path, states: dict, load_stage, precision: str, engine: str) -> dict:
    """``{"stage1": ..., "stage2": ... or None}`` from ``folder/stageN/``; the heads
    run in ``precision`` (the trunk's) on ``engine``."""
    stages = {name: load_stage(folder / name, states[name]) if name in states else None
              for name in ("stage1", "stage2")}
    for stage in stages.values():
        if stage is not None:
            _set_head_precision(stage, precision, engine)
    return stages


def _load_trunk(path: Path, size: int, precision: str, engine: str):
    """The float32/bfloat16/float16 trunk of ``trunk.npz``, run by ``engine``."""
    if engine == "openvino":
        from .ovnet import Trunk

        return Trunk(_read_weights(path), size, precision)
    from .backbone import INFERENCE_POLICIES, precision_policy, vgg16_trunk

    with precision_policy(INFERENCE_POLICIES[precision]):
        trunk = vgg16_trunk(size)
    trunk.set_weights(_read_weights(path))
    return trunk


def _set_head_precision(stage, precision: str, engine: str) -> None:
    """Make ``stage`` embed in ``precision``: through OpenVINO (its Keras head, built on
    first use for Grad-CAM or training, stays float32) or through its Keras head."""
    from .backbone import INFERENCE_POLICIES

    if engine == "openvino":
        from .ovnet import Embedder

        stage._fast_embedder = Embedder(stage.__dict__.get("_head_source") or stage.head_
                                        .get_weights(), stage.feature_shape_, precision)
    else:
        stage._head_policy = INFERENCE_POLICIES[precision]


def _load_stage_v2(folder: Path, state: dict):
    import joblib

    from .stage import StageClassifier

    stage = StageClassifier.from_fitted_state(state, joblib.load(folder / "svm.joblib"),
                                              _WeightsFile(folder / "head.npz"))
    if (folder / "source.npz").is_file():
        with np.load(folder / "source.npz", allow_pickle=False) as data:
            stage.source_sample_ = {k: data[k] for k in data.files}
    return stage


def _load_stage_v1(folder: Path, state: dict):
    """Format 1: ``svm.joblib`` pickles a whole ``hiercell.stage.StageClassifier``.

    Unpickling needs that class at that path; the stage is then rebuilt the
    format-2 way from what the pickle holds.
    """
    import joblib

    old = joblib.load(folder / "svm.joblib")
    fitted = {k: getattr(old, k) for k in ("feature_shape_", "svm_best_params_", "svm_cv_score_",
                                            "precision_", "history_", "train_seconds_")
              if hasattr(old, k)}
    params = {k: v for k, v in old.__dict__.items() if not k.endswith("_") and not k.startswith("_")}
    params.pop("block5_weights", None)
    from .stage import StageClassifier

    return StageClassifier.from_fitted_state(
        {"params": params, "classes": [str(c) for c in old.classes_], **fitted}, old.svm_,
        _WeightsFile(folder / "head.npz"))


class _WeightsFile:
    """A weights file's bytes, read now (the ones whose digest was checked), decoded when
    called: a stage builds its head on first use."""

    def __init__(self, path: Path):
        self.data = path.read_bytes()

    def __call__(self) -> list:
        import io

        return _read_weights(io.BytesIO(self.data))

    def last(self, n: int) -> list:
        """Only the last ``n`` arrays (e.g. the dense layers after block5)."""
        import io

        return _read_weights(io.BytesIO(self.data), last=n)


def _warn_on_version_mismatch(path, saved: dict) -> None:
    """Warn when the pickled SVMs were written by another scikit-learn/numpy major.minor."""
    import warnings

    import sklearn

    now = {"numpy": np.__version__, "scikit-learn": sklearn.__version__}  # not TensorFlow's
    for lib in ("scikit-learn", "numpy"):
        if lib in saved and saved[lib].split(".")[:2] != now[lib].split(".")[:2]:
            warnings.warn(f"{path}: written with {lib} {saved[lib]}, running {lib} {now[lib]}; "
                          "if loading or predictions fail, install the version it was written with",
                          stacklevel=3)


def default_bundle_path() -> Path:
    """Where the bundled default model lives (inside the installed package)."""
    from importlib.resources import files

    return Path(str(files("hiercell.models"))) / DEFAULT_MODEL


def load(path=None, precision: str = "auto", engine: str | None = None):
    """The hierarchical classifier of bundle ``path`` (default: the bundled model)."""
    path = default_bundle_path() if path is None else Path(path)
    if not path.exists():
        raise BundleError(f"model bundle not found: {path}")
    return load_bundle(path, precision, engine)
