"""The label taxonomy: main classes, subclasses and how dataset labels map onto them.

Stage 1 predicts one of :data:`MAIN_CLASSES`. Cells called one of
:data:`ROUTED_MAIN` (neutrophil, immature granulocyte) go to stage 2, which
predicts one of :data:`STAGE2_CLASSES` (the five maturation stages or
``"Others"``). End to end a cell gets one of the 11 :data:`FINE_CLASSES`.

Dataset labels (PBC file-name prefixes, Munich AML-Cytomorphology_LMU codes,
Raabin-WBC folder names) are mapped with :func:`map_label`; labels outside the
taxonomy (smudge cells, blasts, atypical lymphocytes, unknown names) map to
``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

MAIN_CLASSES = ("neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte",
                "ig", "erythroblast", "platelet")
SUBCLASSES = ("BNE", "SNE", "MY", "MMY", "PMY")
OTHERS = "Others"
STAGE2_CLASSES = SUBCLASSES + (OTHERS,)
ROUTED_MAIN = ("neutrophil", "ig")
FINE_CLASSES = tuple(m for m in MAIN_CLASSES if m not in ROUTED_MAIN) + SUBCLASSES

#: The main class each subclass belongs to.
SUB_TO_MAIN = {"BNE": "neutrophil", "SNE": "neutrophil",
               "MY": "ig", "MMY": "ig", "PMY": "ig"}

SOURCES = ("pbc", "munich", "raabin", "auto")


@dataclass(frozen=True)
class Label:
    """A cell's class: ``main`` in MAIN_CLASSES, ``sub`` in SUBCLASSES or None."""

    main: str
    sub: str | None = None

    def __post_init__(self):
        if self.main not in MAIN_CLASSES:
            raise ValueError(f"unknown main class {self.main!r}")
        if self.sub is not None and SUB_TO_MAIN.get(self.sub) != self.main:
            raise ValueError(f"subclass {self.sub!r} does not belong to {self.main!r}")

    @property
    def fine(self) -> str | None:
        """The end-to-end class (see :func:`fine_label`)."""
        return fine_label(self)


def _table(pairs):
    return {k.upper(): (Label(*v) if v is not None else None) for k, v in pairs.items()}


# Canonical names, accepted for every source: the main classes and subclasses.
_CANONICAL = _table({**{m: (m,) for m in MAIN_CLASSES},
                     **{s: (m, s) for s, m in SUB_TO_MAIN.items()}})

# Barcelona PBC (Acevedo et al. 2020): file-name prefixes.
_PBC = _table({
    "BA": ("basophil",), "EO": ("eosinophil",), "ERB": ("erythroblast",),
    "LY": ("lymphocyte",), "MO": ("monocyte",), "PLATELET": ("platelet",),
    "NEUTROPHIL": ("neutrophil",), "BNE": ("neutrophil", "BNE"),
    "SNE": ("neutrophil", "SNE"), "IG": ("ig",), "MY": ("ig", "MY"),
    "MMY": ("ig", "MMY"), "PMY": ("ig", "PMY"),
})

# Munich AML-Cytomorphology_LMU (Matek et al. 2019): folder codes.
_MUNICH = _table({
    "BAS": ("basophil",), "EBO": ("erythroblast",), "EOS": ("eosinophil",),
    "LYT": ("lymphocyte",), "MON": ("monocyte",), "MMZ": ("ig", "MMY"),
    "MYB": ("ig", "MY"), "NGB": ("neutrophil", "BNE"), "NGS": ("neutrophil", "SNE"),
    "PMB": ("ig", "PMY"), "PMO": ("ig", "PMY"),
    # Known but outside the taxonomy.
    "KSC": None, "LYA": None, "MOB": None, "MYO": None,
})

# Raabin-WBC: class folder names.
_RAABIN = _table({
    "Basophil": ("basophil",), "Eosinophil": ("eosinophil",),
    "Lymphocyte": ("lymphocyte",), "Monocyte": ("monocyte",),
    "Neutrophil": ("neutrophil",),
})

_TABLES = {"pbc": (_PBC,), "munich": (_MUNICH,), "raabin": (_RAABIN,),
           "auto": (_PBC, _MUNICH, _RAABIN)}


def map_label(raw: str, source: str = "pbc") -> Label | None:
    """Map a dataset label to a :class:`Label`; ``None`` if it is outside the taxonomy.

    ``source`` is ``"pbc"`` (file-name prefixes such as ``BNE`` or ``PLATELET``),
    ``"munich"`` (AML-Cytomorphology_LMU codes such as ``NGS``), ``"raabin"``
    (Raabin-WBC folder names such as ``Neutrophil``) or ``"auto"`` (any of them).
    Matching ignores case and surrounding white space. The canonical names
    (``"neutrophil"``, ``"ig"``, ``"BNE"``, ...) are accepted for every source.
    """
    if source not in _TABLES:
        raise ValueError(f"unknown label source {source!r}; expected one of {SOURCES}")
    if raw is None:
        return None
    key = str(raw).strip().upper()
    if key in _CANONICAL:
        return _CANONICAL[key]
    for table in _TABLES[source]:
        if key in table:
            return table[key]
    return None


def pbc_label_from_filename(name) -> str | None:
    """The PBC label of a file name: the prefix before the first ``_``.

    ``"BNE_12345.jpg"`` -> ``"BNE"``, ``"neutrophil/PLATELET_1.jpg"`` -> ``"PLATELET"``.
    Returns ``None`` when the name has no ``_``-separated prefix.
    """
    base = PurePath(str(name)).name
    prefix, sep, _ = base.partition("_")
    return prefix if sep and prefix else None


def fine_label(label: Label | None) -> str | None:
    """The end-to-end (11-class) name of a label.

    The main class for non-routed mains, the subclass for neutrophil/ig;
    ``None`` for ``None`` or a routed main without a subclass (e.g. PBC ``IG``).
    """
    if label is None:
        return None
    if label.main in ROUTED_MAIN:
        return label.sub
    return label.main
