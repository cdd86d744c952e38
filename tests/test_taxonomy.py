import pytest

from hiercell.taxonomy import (FINE_CLASSES, MAIN_CLASSES, OTHERS, ROUTED_MAIN, STAGE2_CLASSES,
                               SUB_TO_MAIN, SUBCLASSES, Label, fine_label, map_label,
                               pbc_label_from_filename)


def test_class_lists():
    assert len(MAIN_CLASSES) == 8 and len(set(MAIN_CLASSES)) == 8
    assert STAGE2_CLASSES == SUBCLASSES + (OTHERS,)
    assert set(ROUTED_MAIN) <= set(MAIN_CLASSES)
    assert len(FINE_CLASSES) == 11
    assert set(FINE_CLASSES) == (set(MAIN_CLASSES) - set(ROUTED_MAIN)) | set(SUBCLASSES)
    assert set(SUB_TO_MAIN.values()) == set(ROUTED_MAIN)


@pytest.mark.parametrize("raw, main, sub", [
    ("BA", "basophil", None), ("EO", "eosinophil", None), ("ERB", "erythroblast", None),
    ("LY", "lymphocyte", None), ("MO", "monocyte", None), ("PLATELET", "platelet", None),
    ("BNE", "neutrophil", "BNE"), ("SNE", "neutrophil", "SNE"),
    ("NEUTROPHIL", "neutrophil", None), ("MY", "ig", "MY"), ("MMY", "ig", "MMY"),
    ("PMY", "ig", "PMY"), ("IG", "ig", None),
    ("bne", "neutrophil", "BNE"), (" Platelet ", "platelet", None),
])
def test_pbc(raw, main, sub):
    assert map_label(raw) == Label(main, sub)
    assert map_label(raw, "pbc") == Label(main, sub)


@pytest.mark.parametrize("raw, expected", [
    ("BAS", Label("basophil")), ("EBO", Label("erythroblast")), ("EOS", Label("eosinophil")),
    ("LYT", Label("lymphocyte")), ("MMZ", Label("ig", "MMY")), ("MON", Label("monocyte")),
    ("MYB", Label("ig", "MY")), ("NGB", Label("neutrophil", "BNE")),
    ("NGS", Label("neutrophil", "SNE")), ("PMB", Label("ig", "PMY")),
    ("PMO", Label("ig", "PMY")), ("ngs", Label("neutrophil", "SNE")),
    ("KSC", None), ("LYA", None), ("MOB", None), ("MYO", None),
])
def test_munich(raw, expected):
    assert map_label(raw, "munich") == expected


@pytest.mark.parametrize("raw", ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"])
def test_raabin(raw):
    expected = Label(raw.lower())
    assert map_label(raw, "raabin") == expected
    assert map_label(raw.upper(), "raabin") == expected


def test_canonical_names_and_unknown():
    for m in MAIN_CLASSES:
        assert map_label(m, "munich") == Label(m)
    for s, m in SUB_TO_MAIN.items():
        assert map_label(s, "raabin") == Label(m, s)
    assert map_label("NGS", "pbc") is None          # Munich code is not a PBC label
    assert map_label("NGS", "auto") == Label("neutrophil", "SNE")
    assert map_label("") is None and map_label("banana") is None and map_label(None) is None
    with pytest.raises(ValueError, match="source"):
        map_label("BA", "kaggle")


def test_label_validation_and_fine():
    with pytest.raises(ValueError):
        Label("neutrophil", "MY")
    with pytest.raises(ValueError):
        Label("blast")
    assert fine_label(Label("neutrophil", "BNE")) == "BNE"
    assert fine_label(Label("eosinophil")) == "eosinophil"
    assert fine_label(Label("ig")) is None and fine_label(None) is None
    assert Label("ig", "PMY").fine == "PMY"


@pytest.mark.parametrize("name, prefix", [
    ("BNE_12345.jpg", "BNE"), ("PLATELET_1.jpg", "PLATELET"),
    ("neutrophil/SNE_1_copy.jpg", "SNE"), ("noprefix.jpg", None), ("_x.jpg", None),
])
def test_pbc_label_from_filename(name, prefix):
    assert pbc_label_from_filename(name) == prefix
