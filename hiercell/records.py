"""The per-image result record shared by the Python API and ``hiercell classify``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

#: Column order of the CSV written by ``hiercell classify``.
RECORD_COLUMNS = (
    "path", "label", "probability", "main_class", "main_probability", "subclass",
    "subclass_probability", "top3", "uncertain", "status", "error",
)


@dataclass
class Prediction:
    """What the hierarchical classifier decided for one image.

    ``label`` is the finest class decided: the stage-2 subclass (BNE, SNE, MY,
    MMY, PMY) when stage 2 ran and was confident enough, else the stage-1 main
    class. ``top`` holds the ``top_k`` most probable end-to-end classes with
    their probabilities. ``uncertain`` is set when stage 2 answered "Others"
    (the cell did not look like any subclass, so the main class stands).
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
    status: str = "ok"  # "ok" or "error"
    error: str | None = None

    @classmethod
    def failed(cls, path, reason: str) -> "Prediction":
        """The record of an image that could not be classified."""
        return cls(path=str(path), label=None, probability=None, main_class=None,
                   main_probability=None, status="error", error=reason)

    @property
    def top3(self) -> str:
        """``top`` as ``CLASS:prob;CLASS:prob;...`` (the CSV column)."""
        return ";".join(f"{c}:{p:.4f}" for c, p in self.top)

    def to_row(self) -> dict:
        """A flat dict with :data:`RECORD_COLUMNS` as keys (CSV-ready)."""
        d = asdict(self)
        d["top3"] = self.top3
        return {k: d[k] for k in RECORD_COLUMNS}

    def to_json(self) -> dict:
        """A JSON-ready dict (``top`` kept as a list of ``[class, prob]`` pairs)."""
        d = self.to_row()
        d["top3"] = [[c, float(p)] for c, p in self.top]
        return d
