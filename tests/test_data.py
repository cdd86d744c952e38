"""Dataset readers and splits on tiny trees (files are empty: readers never open images)."""

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hiercell.data import (Sample, assign_splits, read_class_folders, read_dataset,
                           read_manifest, read_pbc_folder, stratified_split, subset, summarize)
from hiercell.taxonomy import Label

PBC = Path(__file__).parent / "data" / "pbc"


def touch(root: Path, *names):
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    return root


# --------------------------------------------------------------------------- #
# The committed PBC fixture

def test_pbc_fixture_with_its_splits_csv():
    samples = read_dataset(PBC)
    assert len(samples) == 32
    assert all(isinstance(s, Sample) and s.path.is_file() for s in samples)
    summary = summarize(samples)
    assert summary["main"] == {m: 4 for m in summary["main"]} and len(summary["main"]) == 8
    assert {"BNE", "SNE", "MY", "MMY", "PMY"} <= set(summary["sub"])
    assert summary["unmapped"] == {}
    assert set(summary["split"]) == {"train", "val", "test"}
    by_name = {s.path.name: s for s in samples}
    ig = [s for s in samples if s.raw_label == "IG"]
    assert len(ig) == 1 and ig[0].main == "ig" and ig[0].sub is None and ig[0].fine is None
    neut = [s for s in samples if s.raw_label == "NEUTROPHIL"]
    assert len(neut) == 1 and neut[0].main == "neutrophil" and neut[0].sub is None
    # The split in splits.csv is the one attached to each sample.
    for line in (PBC / "splits.csv").read_text().splitlines()[1:]:
        path, _, label, split = line.split(",")
        s = by_name[Path(path).name]
        assert s.raw_label == label and s.split == split


def test_pbc_fixture_as_manifest_gives_same_samples():
    from_folder = read_dataset(PBC)
    from_csv = read_dataset(PBC / "splits.csv")
    key = lambda s: s.path.as_posix()  # noqa: E731
    assert sorted(from_folder, key=key) == sorted(from_csv, key=key)


# --------------------------------------------------------------------------- #
# Readers

def test_read_pbc_folder(tmp_path):
    touch(tmp_path, "neutrophil/BNE_1.jpg", "neutrophil/SNE_2.JPG", "ig/MY_3.jpg",
          "ig/weird.jpg", "ig/.DS_Store", "notes.txt", "PLATELET_9.png")
    samples = read_pbc_folder(tmp_path)
    got = {s.path.relative_to(tmp_path).as_posix(): (s.raw_label, s.main, s.sub) for s in samples}
    assert got == {"neutrophil/BNE_1.jpg": ("BNE", "neutrophil", "BNE"),
                   "neutrophil/SNE_2.JPG": ("SNE", "neutrophil", "SNE"),
                   "ig/MY_3.jpg": ("MY", "ig", "MY"),
                   "ig/weird.jpg": ("", None, None),
                   "PLATELET_9.png": ("PLATELET", "platelet", None)}
    assert all(s.split is None for s in samples)


def test_read_class_folders_raabin(tmp_path):
    touch(tmp_path, "Basophil/1.jpg", "neutrophil/2.jpg", "Neutrophil/sub/3.jpg",
          "Unknown/4.jpg", ".cache/5.jpg", "loose.jpg")
    samples = read_class_folders(tmp_path, source="raabin")
    got = sorted((s.path.name, s.raw_label, s.main) for s in samples)
    assert got == [("1.jpg", "Basophil", "basophil"), ("2.jpg", "neutrophil", "neutrophil"),
                   ("3.jpg", "Neutrophil", "neutrophil"), ("4.jpg", "Unknown", None)]


def test_read_class_folders_munich(tmp_path):
    touch(tmp_path, "NGS/a.tiff", "MYB/b.tiff", "KSC/c.tiff", "MYO/d.tiff", "PMB/e.tiff")
    samples = {s.raw_label: s for s in read_class_folders(tmp_path, source="munich")}
    assert samples["NGS"].label == Label("neutrophil", "SNE")
    assert samples["MYB"].label == Label("ig", "MY")
    assert samples["PMB"].fine == "PMY"
    assert samples["KSC"].main is None and samples["MYO"].main is None
    assert summarize(samples.values())["unmapped"] == {"KSC": 1, "MYO": 1}


def test_read_manifest(tmp_path):
    touch(tmp_path, "imgs/a.jpg")
    csv = tmp_path / "lists" / "m.csv"
    csv.parent.mkdir()
    csv.write_text("\ufeffPath,Label,Split\n"
                   "../imgs/a.jpg,BNE,train\n"
                   f"{tmp_path / 'abs.jpg'},eosinophil,Validation\n"
                   "b.jpg,KSC,\n"
                   "c.jpg,NGS,test\n", encoding="utf-8")
    samples = read_manifest(csv)
    assert [s.path for s in samples] == [csv.parent / "../imgs/a.jpg", tmp_path / "abs.jpg",
                                         csv.parent / "b.jpg", csv.parent / "c.jpg"]
    assert [s.split for s in samples] == ["train", "val", None, "test"]
    assert [(s.main, s.sub) for s in samples] == [
        ("neutrophil", "BNE"), ("eosinophil", None), (None, None), ("neutrophil", "SNE")]
    assert read_manifest(csv, root=tmp_path / "imgs")[2].path == tmp_path / "imgs" / "b.jpg"


def test_read_manifest_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.jpg,BA\n")
    with pytest.raises(ValueError, match="missing column"):
        read_manifest(bad)
    bad.write_text("path,label,split\na.jpg,BA,train\nb.jpg,BA,holdout\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: unknown split 'holdout'"):
        read_manifest(bad)
    bad.write_text("path,label\n,BA\n")
    with pytest.raises(ValueError, match="empty path"):
        read_manifest(bad)


def test_read_dataset_picks_reader(tmp_path, caplog):
    pbc = touch(tmp_path / "pbc", "BA_1.jpg", "x/EO_2.jpg")
    assert {s.main for s in read_dataset(pbc)} == {"basophil", "eosinophil"}
    classes = touch(tmp_path / "raabin", "Monocyte/1.jpg", "Eosinophil/2.jpg", "Other/3.jpg")
    with caplog.at_level(logging.WARNING, logger="hiercell.data"):
        samples = read_dataset(classes)
    assert sorted(s.raw_label for s in samples) == ["Eosinophil", "Monocyte", "Other"]
    assert "Other (1)" in caplog.text
    munich = touch(tmp_path / "munich", "NGB/1.tiff")
    assert read_dataset(munich, source="munich")[0].label == Label("neutrophil", "BNE")
    # A stray file does not turn a PBC tree into class folders (subclasses kept).
    mostly = touch(tmp_path / "mostly", *[f"neutrophil/SNE_{i}.jpg" for i in range(10)],
                   "neutrophil/scan.jpg")
    assert Counter(s.sub for s in read_dataset(mostly)) == {"SNE": 10, None: 1}
    # A folder of PBC-named files read explicitly as class folders.
    assert read_dataset(touch(tmp_path / "p2", "ig/MY_1.jpg"), source="auto")[0].raw_label == "ig"
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        read_dataset(tmp_path / "empty")


def test_read_dataset_explicit_split_csv(tmp_path):
    root = touch(tmp_path / "d", "a/BA_1.jpg", "a/BA_2.jpg", "b/LY_3.jpg")
    split_csv = tmp_path / "my_splits.csv"
    split_csv.write_text("path,split\na/BA_1.jpg,test\nb/LY_3.jpg,train\nzz/gone.jpg,val\n")
    samples = {s.path.name: s.split for s in read_dataset(root, split_csv=split_csv)}
    assert samples == {"BA_1.jpg": "test", "BA_2.jpg": None, "LY_3.jpg": "train"}


# --------------------------------------------------------------------------- #
# Splits

def make_labels(seed=0):
    rng = np.random.default_rng(seed)
    counts = {"a": 100, "b": 37, "c": 3, "d": 4, "e": 2, "f": 1, "g": 10}
    labels = [lab for lab, n in counts.items() for _ in range(n)]
    keys = [f"img_{i:04d}.jpg" for i in rng.permutation(len(labels))]
    return np.array(labels), np.array(keys), counts


def test_split_is_deterministic_and_seeded():
    labels, keys, _ = make_labels()
    a = stratified_split(labels, seed=0, keys=keys)
    assert a.dtype.kind == "U" and set(a) == {"train", "val", "test"}
    np.testing.assert_array_equal(a, stratified_split(labels, seed=0, keys=keys))
    assert (a != stratified_split(labels, seed=1, keys=keys)).any()


def test_split_is_stratified():
    labels, keys, counts = make_labels()
    parts = stratified_split(labels, (0.7, 0.1, 0.2), seed=3, keys=keys)
    for lab, n in counts.items():
        c = Counter(parts[labels == lab])
        if n >= 3:
            assert c["train"] >= 1 and c["val"] >= 1 and c["test"] >= 1, (lab, c)
        assert sum(c.values()) == n
    c = Counter(parts[labels == "a"])
    assert (c["train"], c["val"], c["test"]) == (70, 10, 20)
    assert Counter(parts[labels == "f"]) == {"train": 1}
    assert Counter(parts[labels == "e"]) == {"train": 1, "test": 1}


def test_split_is_independent_of_input_order_and_of_other_labels():
    labels, keys, _ = make_labels()
    base = dict(zip(keys, stratified_split(labels, seed=5, keys=keys)))
    perm = np.random.default_rng(9).permutation(len(labels))
    shuffled = dict(zip(keys[perm], stratified_split(labels[perm], seed=5, keys=keys[perm])))
    assert base == shuffled
    keep = labels != "b"
    fewer = dict(zip(keys[keep], stratified_split(labels[keep], seed=5, keys=keys[keep])))
    assert all(base[k] == v for k, v in fewer.items())


def test_split_other_fractions_and_errors():
    labels = ["x"] * 10 + ["y"] * 5
    parts = stratified_split(labels, (0.8, 0.0, 0.2))
    assert "val" not in set(parts)
    assert Counter(parts[:10]) == {"train": 8, "test": 2}
    assert len(stratified_split([], seed=0)) == 0
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(labels, (0.7, 0.1, 0.1))
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(labels, (0.5, 0.5))
    with pytest.raises(ValueError, match="keys"):
        stratified_split(labels, keys=range(3))


def test_assign_splits_and_subset(tmp_path):
    root = touch(tmp_path, *[f"BA_{i}.jpg" for i in range(10)], *[f"LY_{i}.jpg" for i in range(5)])
    samples = read_pbc_folder(root)
    samples[0] = Sample(samples[0].path, "BA", "basophil", None, "test")
    out = assign_splits(samples, seed=0)
    assert out[0].split == "test" and all(s.split in ("train", "val", "test") for s in out)
    assert assign_splits(samples, seed=0) == out
    assert assign_splits(samples, overwrite=True)[0].path == samples[0].path
    train, test = subset(out, "train"), subset(out, "test")
    assert train and test and all(s.split == "train" for s in train)
    assert len(subset(out, ("train", "val", "test"))) == 15
    assert subset(samples, None) == samples[1:]


def test_split_csv_that_matches_no_image_is_an_error(tmp_path):
    touch(tmp_path, "data/BA_1.jpg", "data/EO_2.jpg")
    csv_path = tmp_path / "splits.csv"
    csv_path.write_text("path,split\nelsewhere/BA_1.jpg,train\nelsewhere/EO_2.jpg,test\n")
    with pytest.raises(ValueError, match="none of its paths"):
        read_dataset(tmp_path / "data", split_csv=csv_path)


def test_a_split_file_beside_a_manifest_is_refused_not_ignored(tmp_path):
    # evaluate --split-csv F on a manifest had read the manifest's splits and said nothing
    root = touch(tmp_path / "img", "LY_1.jpg", "LY_2.jpg")
    images = sorted(root.iterdir())
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\n" + "".join(f"{p},LY,test\n" for p in images))
    split_csv = tmp_path / "splits.csv"
    split_csv.write_text("path,split\n" + "".join(f"{p.name},train\n" for p in images))
    assert {s.split for s in read_dataset(manifest)} == {"test"}
    with pytest.raises(ValueError, match="own 'split' column"):
        read_dataset(manifest, split_csv=split_csv)
