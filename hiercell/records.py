"""The per-image result record shared by the Python API and ``hiercell classify``.

The fields of :class:`Prediction` *are* the columns of the results file, in
order (:data:`RECORD_COLUMNS`); only ``top`` is written under the name
``top_k``. Adding a column is adding a field here: the writers
(:mod:`hiercell.results`) and the reader (:meth:`Prediction.from_row`) follow
its type (``float``, ``int``, ``bool``, ``str``, each optionally ``None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

#: Field name -> column name, where they differ.
_COLUMN_NAMES = {"top": "top_k"}
#: Column names read back from older files: column -> earlier names.
_OLD_COLUMN_NAMES = {"top_k": ("top3",)}


@dataclass
class Prediction:
    """What the hierarchical classifier decided for one image.

    ``label`` is the finest class decided: the stage-2 subclass (BNE, SNE, MY,
    MMY, PMY) when stage 2 ran and was confident enough, else the stage-1 main
    class. ``top`` holds the ``top_k`` most probable end-to-end classes with
    their probabilities (column ``top_k``: ``CLASS:prob;CLASS:prob;...``).
    ``uncertain`` is set when stage 2 answered "Others" (the cell did not look
    like any subclass, so the main class stands). ``review_score`` (0-1, higher
    = a person should look) and ``review`` (the score at or above the model's
    threshold) say whether a person should look; ``novelty`` is how unlike the
    training cells it is, as a percentile among in-lab cells (0.95 and above:
    unusual). See :mod:`hiercell.review`; ``None``/``False`` for models without
    a review scorer. ``precision`` is the trunk precision the image was classified
    in (``float32``, ``bfloat16``, ...) and ``shard`` the ``K/N`` share of a
    ``hiercell classify --shard K/N`` run (see :mod:`hiercell.shard`). ``model``
    names what classified the image: the bundle's name, the start of its
    ``bundle.json`` digest and the segmentation version
    (:func:`hiercell.bundle.bundle_tag`); ``classify --resume`` keeps only rows
    of the same ``model``.
    """

    path: str | None
    label: str | None
    probability: float | None
    main_class: str | None
    main_probability: float | None
    subclass: str | None = None
    subclass_probability: float | None = None
    top: list = field(default_factory=list)  # [(class, probability), ...]
    uncertain: bool = False
    review_score: float | None = None
    review: bool = False
    novelty: float | None = None
    status: str = "ok"  # "ok" or "error"
    error: str | None = None
    precision: str | None = None
    shard: str | None = None
    model: str | None = None

    @classmethod
    def failed(cls, path, reason: str) -> "Prediction":
        """The record of an image that could not be classified."""
        return cls(path=str(path), label=None, probability=None, main_class=None,
                   main_probability=None, status="error", error=reason)

    @property
    def top_k(self) -> str:
        """``top`` as ``CLASS:prob;CLASS:prob;...`` (the CSV column)."""
        return ";".join(f"{c}:{p:.4f}" for c, p in self.top)

    def to_row(self) -> dict:
        """A flat dict with :data:`RECORD_COLUMNS` as keys (CSV-ready)."""
        return {_COLUMN_NAMES.get(f.name, f.name): (self.top_k if f.name == "top"
                                                    else getattr(self, f.name))
                for f in fields(self)}

    def to_json(self) -> dict:
        """A JSON-ready dict (``top_k`` kept as a list of ``[class, prob]`` pairs)."""
        row = self.to_row()
        row["top_k"] = [[c, float(p)] for c, p in self.top]
        return row

    @classmethod
    def from_row(cls, row: dict) -> "Prediction":
        """Rebuild a record from a CSV row or a JSON ``results`` item (older column
        names accepted). Raises ``ValueError``/``TypeError`` on unparsable values."""
        values = {}
        for f in fields(cls):
            column = _COLUMN_NAMES.get(f.name, f.name)
            value = row.get(column)
            for old in _OLD_COLUMN_NAMES.get(column, ()):
                if value is None:
                    value = row.get(old)
            values[f.name] = _parse(f.type, value)
        values["status"] = values["status"] or "ok"
        return cls(**values)


def stamp(records, info) -> list:
    """``records`` (:class:`Prediction`) with what classified them, from a model's
    ``info``: ``precision`` and ``model`` (a bundle's tag; ``None`` when not loaded from
    a bundle). Returns the same list."""
    info = info or {}
    for rec in records:
        rec.precision, rec.model = info.get("precision"), info.get("tag")
    return records


def _parse(kind: str, value):
    if kind == "list":
        if not value:
            return []
        pairs = ([item.rsplit(":", 1) for item in value.split(";") if item]
                 if isinstance(value, str) else value)
        return [(str(c), float(p)) for c, p in pairs]
    if kind == "bool":
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes")
        return bool(value)
    if value is None or value == "":
        return None
    if kind.startswith("float"):
        return float(value)
    return int(value) if kind.startswith("int") else str(value)


#: Column order of the results file written by ``hiercell classify``.
RECORD_COLUMNS = tuple(_COLUMN_NAMES.get(f.name, f.name) for f in fields(Prediction))
