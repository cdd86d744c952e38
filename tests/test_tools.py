"""The maintenance scripts in tools/ that write bundles."""

import contextlib
import io
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from hiercell.bundle import load, save_bundle

from conftest import FIXTURES, rehash_bundle, rgb_images

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _combine_stages(*args, own_process=False):
    """``tools/combine_stages.py ARGS`` run as a user runs it; its completed process. In
    this interpreter unless ``own_process`` (a process of its own imports TensorFlow and
    loads the bundles again: seconds per run); the script's ``SystemExit`` gives the
    return code and its message goes to stderr, as Python's own handler does."""
    argv = [str(TOOLS / "combine_stages.py"), *map(str, args)]
    if own_process:
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            mock.patch.object(sys, "argv", argv):
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as exc:
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
            code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def _combine(first, second, out):
    return _combine_stages("--stage1-from", first, "--stage2-from", second, "--out", out)


def test_combine_stages_takes_stage2_from_the_second_bundle(tiny_bundle, tiny_data, tmp_path):
    from click.testing import CliRunner

    from hiercell.cli import main

    from conftest import TINY

    second = tmp_path / "second"  # shorter head training: other stages on the same trunk
    trained = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(second),
                                        "--cache", str(tmp_path / "cache"), *TINY,
                                        "--head-epochs", "1"])
    assert trained.exit_code == 0, trained.output
    done = _combine(tiny_bundle, second, tmp_path / "both")
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "both" / "bundle.json").read_text())
    first_info = json.loads((tiny_bundle / "bundle.json").read_text())
    assert info["training"]["stage2"]["from"] == "second"
    assert info["training"]["settings"] == first_info["training"]["settings"]
    assert set(info["composed_from"]) == {"stage1", "stage2"}
    assert "metrics" not in info  # the first bundle's figures are not the new model's
    assert not {"engine", "precision", "trunk_sha256"} & set(info)
    assert info["name"] == "both"
    # the first bundle's review scorer read the first bundle's stage 2: not carried over
    assert not (tmp_path / "both" / "review.npz").exists()
    first, other = load(tiny_bundle, precision="float32"), load(second, precision="float32")
    both = load(tmp_path / "both", precision="float32")
    X = first.features(rgb_images(sorted(tiny_data.glob("*.jpg"))[:8]))
    for stage, source in (("stage1", first), ("stage2", other)):
        np.testing.assert_allclose(getattr(both.hierarchy, stage).predict_proba(X),
                                   getattr(source.hierarchy, stage).predict_proba(X), atol=1e-6)
    assert not np.allclose(first.hierarchy.stage2.predict_proba(X),
                           other.hierarchy.stage2.predict_proba(X), atol=1e-3)
    # a second, in-lab stage 1 answers the cells whose novelty is at most the gate
    done = _combine_stages("--stage1-from", tiny_bundle, "--inlab-from", second,
                           "--inlab-gate", "0.9", "--out", tmp_path / "inlab")
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "inlab" / "bundle.json").read_text())
    assert set(info["inlab_stages"]) == {"stage1"} and info["inlab_gate"] == 0.9
    assert info["training"]["inlab"]["from"] == "second" and "inlab" in info["composed_from"]
    assert (tmp_path / "inlab" / "review.npz").exists()  # its novelty picks the in-lab cells
    # its training sample stays (bench/bench_review.py refits it without a class)
    assert (tmp_path / "inlab" / "inlab" / "stage1" / "source.npz").exists()
    inlab = load(tmp_path / "inlab", precision="float32").hierarchy
    assert inlab.inlab_gate == 0.9
    novelty = inlab.reviewer.novelty_percentile(__import__("hiercell.review").review
                                                .trunk_descriptor(X))
    np.testing.assert_array_equal(inlab.inlab_rows(X), novelty <= 0.9)
    answers = {name: h.stage_proba(1, X) for name, h in (("first", first.hierarchy),
                                                            ("second", other.hierarchy))}
    for gate, expected in ((1.0, "second"), (-1.0, "first")):
        inlab.inlab_gate = gate
        np.testing.assert_allclose(inlab.stage_proba(1, X), answers[expected], atol=1e-6)
    inlab.inlab_gate = 0.5
    rows = inlab.inlab_rows(X)
    np.testing.assert_allclose(inlab.stage_proba(1, X),
                               np.where(rows[:, None], answers["second"], answers["first"]),
                               atol=1e-5)
    # a bad gate in bundle.json is refused with the file named
    info["inlab_gate"] = "high"
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "inlab", bad)
    (bad / "bundle.json").write_text(json.dumps(info))
    from hiercell.bundle import BundleError, verify_bundle
    import pytest

    with pytest.raises(BundleError, match="inlab_gate must be a number"):
        _rehash_and_verify(bad, verify_bundle)


def test_combine_stages_sets_the_share_of_stage_1s_network_head(tiny_bundle, tiny_data,
                                                                   tmp_path):
    def run(weight, out):
        return _combine_stages("--stage1-from", tiny_bundle, "--stage1-network-weight", weight,
                               "--out", out)

    refused = run("1.5", tmp_path / "bad")
    assert refused.returncode != 0 and "must be in [0, 1]" in refused.stderr
    assert not (tmp_path / "bad").exists()
    done = run("0.75", tmp_path / "mixed")
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "mixed" / "bundle.json").read_text())
    assert info["training"]["stage1_network_weight"] == 0.75
    assert info["stages"]["stage1"]["params"]["network_weight"] == 0.75
    assert info["stages"]["stage2"]["params"]["network_weight"] == 0.0
    first = load(tiny_bundle, precision="float32").hierarchy.stage1
    mixed = load(tmp_path / "mixed", precision="float32").hierarchy.stage1
    X = load(tiny_bundle, precision="float32").features(
        rgb_images(sorted(tiny_data.glob("*.jpg"))[:8]))
    svm, net = first.predict_proba(X), first.network_proba(X)
    assert not np.allclose(svm, net, atol=1e-3)
    np.testing.assert_allclose(mixed.predict_proba(X), 0.25 * svm + 0.75 * net, atol=1e-5)
    np.testing.assert_allclose(mixed.svm_proba(X), svm, atol=1e-6)
    # without an in-lab stage the first bundle's scorer read other answers: dropped
    assert not (tmp_path / "mixed" / "review.npz").exists()
    assert "composed_from" not in info["composed_from"]["stage1"]  # a trained bundle
    # a composed bundle with an in-lab stage keeps its scorer (its novelty picks the in-lab
    # cells) and its history; an in-lab stage taken from a mixing bundle answers with its SVM
    inlab = tmp_path / "inlab"
    done = _combine_stages("--stage1-from", tiny_bundle, "--inlab-from", tmp_path / "mixed",
                           "--stage1-network-weight", "0.5", "--out", inlab)
    assert done.returncode == 0, done.stderr
    assert "stage 1 network weight 0.5" in done.stdout
    again = tmp_path / "again"
    done = _combine_stages("--stage1-from", inlab, "--stage1-network-weight", "0.25",
                           "--out", again)
    assert done.returncode == 0, done.stderr
    info = json.loads((again / "bundle.json").read_text())
    assert (again / "review.npz").exists()
    assert info["composed_from"]["stage1"]["composed_from"]["inlab"]["bundle"] == "mixed"
    assert info["stages"]["stage1"]["params"]["network_weight"] == 0.25
    assert info["inlab_stages"]["stage1"]["params"]["network_weight"] == 0.0


def test_combine_stages_sets_the_share_of_the_in_lab_stages_network_head(tiny_bundle, tiny_data,
                                                                         tmp_path):
    refused = _combine_stages("--stage1-from", tiny_bundle, "--inlab-network-weight", "0.5",
                              "--out", tmp_path / "none")
    assert refused.returncode != 0 and "has no in-lab stage 1" in refused.stderr
    assert not (tmp_path / "none").exists()
    refused = _combine_stages("--stage1-from", tiny_bundle, "--inlab-from", tiny_bundle,
                              "--inlab-network-weight", "-0.1", "--out", tmp_path / "bad")
    assert refused.returncode != 0 and "must be in [0, 1]" in refused.stderr
    inlab = tmp_path / "inlab"
    done = _combine_stages("--stage1-from", tiny_bundle, "--inlab-from", tiny_bundle,
                           "--inlab-network-weight", "0.6", "--out", inlab)
    assert done.returncode == 0, done.stderr
    assert "in-lab network weight 0.6" in done.stdout
    info = json.loads((inlab / "bundle.json").read_text())
    assert info["training"]["inlab_network_weight"] == 0.6
    assert info["inlab_stages"]["stage1"]["params"]["network_weight"] == 0.6
    assert info["stages"]["stage1"]["params"]["network_weight"] == 0.0
    source = load(tiny_bundle, precision="float32")
    X = source.features(rgb_images(sorted(tiny_data.glob("*.jpg"))[:8]))
    svm, net = source.hierarchy.stage1.svm_proba(X), source.hierarchy.stage1.network_proba(X)
    mixed = load(inlab, precision="float32").hierarchy.inlab
    np.testing.assert_allclose(mixed.predict_proba(X), 0.4 * svm + 0.6 * net, atol=1e-5)
    # composed again: kept as stored, reset by the option, dropped with a new in-lab stage
    for args, weight, recorded in (((), 0.6, 0.6), (("--inlab-network-weight", "0.2"), 0.2, 0.2),
                                   (("--inlab-from", tiny_bundle), 0.0, None)):
        out = tmp_path / f"again{len(args)}{weight}"
        done = _combine_stages("--stage1-from", inlab, "--stage1-network-weight", "0.1", *args,
                               "--out", out)
        assert done.returncode == 0, done.stderr
        info = json.loads((out / "bundle.json").read_text())
        assert info["inlab_stages"]["stage1"]["params"]["network_weight"] == weight
        assert info["training"].get("inlab_network_weight") == recorded


def _rehash_and_verify(path, verify):
    """Rewrite ``path``'s SHA256SUMS for its current files, then verify it."""
    rehash_bundle(path)
    return verify(path)


def test_combine_stages_refuses_bundles_that_cannot_share_a_trunk_pass(tiny_bundle, tiny_data,
                                                                     tmp_path):
    from click.testing import CliRunner

    from hiercell.cli import main

    from conftest import TINY

    other = load(tiny_bundle, precision="float32")
    other.preprocess = {}  # the same trunk, but images prepared another way
    save_bundle(other, tmp_path / "plain")
    done = _combine(tiny_bundle, tmp_path / "plain", tmp_path / "both")
    assert done.returncode != 0 and "differ in preprocess" in done.stderr
    done = _combine_stages("--stage1-from", tiny_bundle, "--stage2-from", tmp_path / "nothing",
                           "--out", tmp_path / "both", own_process=True)  # one line, no traceback
    assert done.returncode != 0 and "not a model bundle" in done.stderr
    assert "Traceback" not in done.stderr
    seeded = tmp_path / "seeded"  # random weights of another seed: another trunk
    trained = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(seeded),
                                        "--cache", str(tmp_path / "cache"), *TINY, "--seed", "1"])
    assert trained.exit_code == 0, trained.output
    done = _combine(tiny_bundle, seeded, tmp_path / "both")
    assert done.returncode != 0 and "different trunks" in done.stderr
    assert not (tmp_path / "both").exists()
    aligned = tmp_path / "aligned"  # a bundle tuned to a lab is no ingredient
    shutil.copytree(tiny_bundle, aligned)
    model = load(aligned, precision="float32")
    model.info["alignment"] = {"applied": True}
    save_bundle(model, aligned)
    done = _combine(aligned, tiny_bundle, tmp_path / "both")
    assert done.returncode != 0 and "aligned to or adapted for a lab" in done.stderr


def _torch_recipe():
    """tools/torch_recipe.py as a module (its pack and bundle steps need no PyTorch)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("torch_recipe", TOOLS / "torch_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_recipe_packs_train_and_val_frames_whose_views_are_the_canonical_frame(
        tiny_data, tmp_path):
    import csv

    import cv2

    from hiercell.data import load_samples
    from hiercell.framing import canonical_view
    from hiercell.io import load_image

    recipe = _torch_recipe()
    job = tmp_path / "job"
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    samples = {Path(s.path).stem: s for s in load_samples(data)}
    broken = next(s for s in samples.values() if s.split == "train")
    Path(broken.path).write_text("not an image")  # left out and named, not fatal
    lab = tmp_path / "lab"  # another lab's set, labelled at main-class level
    lab.mkdir()
    external = {"a.jpg": ("NEUTROPHIL", "neutrophil"), "b.jpg": ("LY", "lymphocyte"),
                "c.jpg": ("blast", None)}  # a cell outside the taxonomy is left out
    for (name, (code, _)), src in zip(external.items(), sorted(FIXTURES.glob("*/*.jpg"))):
        shutil.copy(src, lab / name)
    (lab / "manifest.csv").write_text("path,label\n" + "".join(
        f"{name},{code}\n" for name, (code, _) in external.items()))
    pack = [sys.executable, str(TOOLS / "torch_recipe.py"), "pack", str(data), "--out", str(job),
            "--backbone-weights", "none", "--val-share", "1", "--others-per-class", "3"]
    done = subprocess.run(pack + ["--external", f"lab={lab / 'manifest.csv'}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stderr and Path(broken.path).name in done.stderr
    rows = list(csv.DictReader(open(job / "manifest.csv")))
    # the other lab's cells: scored by train, never trained on (a split of their own)
    assert sorted((r["stage1"], r["stage2"]) for r in rows if r["split"] == "external:lab") == [
        ("lymphocyte", ""), ("neutrophil", "")]
    rows = [r for r in rows if r["split"] != "external:lab"]
    originals = [s for s in samples.values() if s.split in ("train", "val") and s != broken]
    assert len(rows) == len(originals) and {r["split"] for r in rows} == {"train", "val"}
    assert sorted(r["stage1"] for r in rows) == sorted(s.main for s in originals)
    assert {r["stage2"] for r in rows} >= {"Others", "BNE"}
    frames = np.fromfile(job / "frames.bin", np.uint8)
    blobs = [frames[int(r["offset"]):int(r["offset"]) + int(r["length"])] for r in rows]
    views = recipe.FrameViews(blobs, np.zeros(len(rows), int), np.ones(len(rows), bool), 224,
                              augment=False, clean_share=1.0)
    # the pack does not say which row is which image: match the first row by its content
    stored = cv2.cvtColor(cv2.imdecode(blobs[0], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    view, label = views[(0, 7)]
    assert view.shape == (224, 224, 3) and label == 0
    np.testing.assert_array_equal(view, stored)  # the stored frame's frame is the identity
    errors = [np.abs(canonical_view(load_image(s.path), 224).astype(int) - stored).mean()
              for s in originals]
    assert min(errors) < 4  # WebP-compressed canonical frame of one of the originals
    augmented = recipe.FrameViews(blobs, np.zeros(len(rows), int), np.ones(len(rows), bool),
                                  160, augment=True, clean_share=0.0)
    a, b = augmented[(0, 1)], augmented[(0, 2)]
    assert a[0].shape == (160, 160, 3) and not np.array_equal(a[0], b[0])
    np.testing.assert_array_equal(augmented[(0, 1)][0], a[0])  # the key's seed decides
    for bad, why in (("lab", "expected NAME=DATA"), (f"none={lab / 'none.csv'}", "none.csv")):
        done = subprocess.run(pack + ["--external", bad], capture_output=True, text=True)
        assert done.returncode != 0 and why in done.stderr and "Traceback" not in done.stderr


def test_torch_recipe_imports_hiercell_from_its_own_checkout(tmp_path):
    # the GPU machine has no hiercell installed: train's data workers import hiercell's
    # augment and framing from the checkout (a run without PYTHONPATH failed there with
    # "No module named 'hiercell'"). -S: no site, so no installed or editable hiercell
    # unless the script puts its checkout first; numpy comes from site-packages by path.
    site = os.pathsep.join(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    code = ("import runpy, sys; runpy.run_path(sys.argv[1]); "
            "import hiercell.augment, hiercell.framing; print(hiercell.augment.__file__)")
    done = subprocess.run([sys.executable, "-S", "-c", code, str(TOOLS / "torch_recipe.py")],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": site})
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve() == (TOOLS.parent / "hiercell" / "augment.py").resolve()


def test_torch_recipe_splits_a_deeper_heads_weights_before_block5():
    recipe = _torch_recipe()
    # Keras order of a head fine-tuned from block4: 3 convolutions of block4, 3 of block5,
    # then 3 dense layers (kernel and bias each)
    shapes = [(3, 3, 256 if k == 0 else 512, 512) for k in range(6)]
    weights = [w for shape in shapes for w in (np.zeros(shape), np.zeros(shape[-1]))]
    weights += [np.zeros((512, 1024)), np.zeros(1024), np.zeros((1024, 512)), np.zeros(512),
                np.zeros((512, 8)), np.zeros(8)]
    deeper, rest = recipe.deeper_split(weights, 4)
    assert [w.shape for w in deeper] == [(3, 3, 256, 512), (512,), (3, 3, 512, 512), (512,),
                                         (3, 3, 512, 512), (512,)]
    assert len(rest) == 12 and rest[0].shape == (3, 3, 512, 512) and rest[-1].shape == (8,)
    deeper, rest = recipe.deeper_split(weights[6:], 5)  # the recipe: nothing deeper
    assert deeper == [] and len(rest) == 12


@pytest.mark.parametrize("option", ["--randconv", "--statistics-p"])
@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_torch_recipe_refuses_a_share_outside_0_1(option, value, capsys):
    recipe = _torch_recipe()
    with pytest.raises(SystemExit) as stop:  # before any job is read or torch imported
        recipe.main(["train", "no-such-job", "--out", "heads", option, value])
    assert stop.value.code == 2
    assert f"must be between 0 and 1, got {value}" in capsys.readouterr().err
    assert recipe.share("0.25") == 0.25 and recipe.share("1") == 1.0


def test_torch_recipe_batches_cover_every_image_once_per_epoch_in_a_new_order():
    batches = _torch_recipe().EpochBatches(10, 4, seed=0, shuffle=True)
    first = [k for batch in batches for k in batch]
    batches.epoch = 1
    second = [k for batch in batches for k in batch]
    assert len(batches) == 3 and [len(b) for b in batches] == [4, 4, 2]
    assert sorted(i for i, _ in first) == list(range(10)) == sorted(i for i, _ in second)
    assert [i for i, _ in first] != [i for i, _ in second]
    batches.epoch = 0
    assert [k for batch in batches for k in batch] == first


def test_torch_recipe_bundle_fits_the_svms_on_heads_trained_elsewhere(tiny_bundle, tiny_data,
                                                                      tmp_path):
    """Heads in Keras order (what the GPU step writes) become a bundle whose networks are
    those heads: the same trunk (random VGG16, seed 0) and weights give the tiny bundle's
    network outputs."""
    tiny = load(tiny_bundle, precision="float32")
    heads = []
    for number, stage in ((1, tiny.hierarchy.stage1), (2, tiny.hierarchy.stage2)):
        path = tmp_path / f"s{number}-32.npz"
        np.savez(path, classes=np.array([str(c) for c in stage.classes_]),
                 history=json.dumps([{"epoch": 1, "val_loss": 0.5}]),
                 settings=json.dumps({"stage": number, "size": 32}),
                 **{f"w{k:02d}": w.astype(np.float16)
                    for k, w in enumerate(stage.head_.get_weights())})
        heads.append(path)
    command = [sys.executable, str(TOOLS / "torch_recipe.py"), "bundle", str(tiny_data),
               "--backbone-weights", "none", "--others-per-class", "3",
               "--cache", str(tmp_path / "cache")]
    done = subprocess.run(command + [str(p) for p in heads] + ["--out", str(tmp_path / "b")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert "tools/torch_recipe.py" in info["training"]["recipe"]
    assert info["stages"]["stage1"]["history_"]["external"][0]["val_loss"] == 0.5
    assert "metrics" in info and (tmp_path / "b" / "review.npz").is_file()
    imported = load(tmp_path / "b", precision="float32")
    X = tiny.features(rgb_images(sorted(tiny_data.glob("*.jpg"))[:8]))
    np.testing.assert_allclose(imported.features(rgb_images(sorted(tiny_data.glob("*.jpg"))[:8])),
                               X, atol=1e-5)
    for name in ("stage1", "stage2"):
        np.testing.assert_allclose(getattr(imported.hierarchy, name).network_proba(X),
                                   getattr(tiny.hierarchy, name).network_proba(X), atol=2e-3)
    # a stage-2 head alone is refused before any fitting: such a bundle could not be loaded
    done = subprocess.run(command + [str(heads[1]), "--out", str(tmp_path / "s2only")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "needs stage 1" in done.stderr
    assert not (tmp_path / "s2only").exists()
    # a head whose classes are not the stage's is refused
    z = dict(np.load(heads[1]))
    z["classes"] = z["classes"][::-1]
    np.savez(heads[1], **z)
    done = subprocess.run(command + [str(p) for p in heads] + ["--out", str(tmp_path / "c")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "are not this stage's" in done.stderr
    # a file that is no head, or none at all: one error line naming it
    (tmp_path / "notes.npz").write_text("not a head")
    for bad in (tmp_path / "notes.npz", tmp_path / "missing.npz"):
        done = subprocess.run(command + [str(heads[0]), str(bad), "--out", str(tmp_path / "d")],
                              capture_output=True, text=True)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert str(bad) in done.stderr and "not a head file" in done.stderr
        assert not (tmp_path / "d").exists()
    # a head trained deeper than block5 (train --first-trained 4): its block4 would not
    # fit the bundle's shared frozen trunk, so it is refused
    deeper = tmp_path / "s1-deeper.npz"
    np.savez(deeper, classes=np.load(heads[0])["classes"], history="[]",
             settings=json.dumps({"stage": 1, "size": 32, "first_trained": 4}))
    done = subprocess.run(command + [str(deeper), "--out", str(tmp_path / "e")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "trained from block 4" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "e").exists()


def test_bundle_tag_names_the_bundle_its_digest_and_the_segmentation_version(tiny_bundle,
                                                                             tmp_path,
                                                                             monkeypatch):
    import hiercell.segmentation
    from hiercell.bundle import bundle_tag

    tag = bundle_tag(tiny_bundle)
    name, rest = tag.split("@")
    assert name == json.loads((tiny_bundle / "bundle.json").read_text())["name"] == "tiny"
    assert rest.endswith(f"/seg{hiercell.segmentation.VERSION}") and len(rest.split("/")[0]) == 12
    assert load(tiny_bundle, precision="float32").info["tag"] == tag
    monkeypatch.setattr(hiercell.segmentation, "VERSION", hiercell.segmentation.VERSION + 1)
    assert bundle_tag(tiny_bundle) != tag
    monkeypatch.undo()
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, copy)
    info = json.loads((copy / "bundle.json").read_text())
    info["metrics"] = {"split": "test"}
    (copy / "bundle.json").write_text(json.dumps(info))
    assert bundle_tag(copy) != tag  # any change of the bundle changes it
    # records of the Python API name it too
    from conftest import FIXTURES

    record = load(tiny_bundle, precision="float32").predict_records(
        [sorted(FIXTURES.glob("*/*.jpg"))[0]])[0]
    assert record.status == "ok" and (record.model, record.precision) == (tag, "float32")


def test_torch_recipe_networks_split_vgg16_where_fine_tuning_starts():
    """The frozen trunk and the trained head together are VGG16 + the dense head whatever
    block fine-tuning starts at; the head holds the trained blocks' convolutions first."""
    torch = pytest.importorskip("torch", reason="the GPU step's networks need PyTorch")
    recipe = _torch_recipe()
    rng = np.random.default_rng(0)
    weights = _vgg16_like_weights(rng)
    x = torch.from_numpy(rng.normal(0, 50, (2, 3, 32, 32)).astype(np.float32))
    outputs = {}
    for first in (5, 4, 3):
        torch.manual_seed(0)  # the same dense head
        trunk, head = recipe._networks(weights, 8, 0.0, first)
        n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in head)
        assert n_convs == sum(recipe.BLOCKS[first - 1:])
        assert sum(isinstance(m, torch.nn.Conv2d) for m in trunk) == 13 - n_convs
        assert not any(p.requires_grad for p in trunk.parameters())
        with torch.no_grad():
            outputs[first] = head.eval()(trunk(x)).numpy()
        assert len(recipe.keras_order(head)) == 2 * n_convs + 6
    np.testing.assert_allclose(outputs[4], outputs[5], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs[3], outputs[5], rtol=1e-4, atol=1e-5)


def _vgg16_like_weights(rng):
    """Random weights in the packed job's VGG16 layout (float16, He-scaled)."""
    weights, n_in = {}, 3
    for block, n_convs in enumerate((2, 2, 3, 3, 3), 1):
        n_out = (64, 128, 256, 512, 512)[block - 1]
        for k in range(1, n_convs + 1):
            weights[f"block{block}_conv{k}/kernel"] = rng.normal(
                0, (2 / (9 * n_in)) ** 0.5, (3, 3, n_in, n_out)).astype(np.float16)
            weights[f"block{block}_conv{k}/bias"] = np.zeros(n_out, np.float16)
            n_in = n_out
    return weights


def test_torch_recipe_loads_a_heads_keras_order_weights_back():
    """``score`` reads bundle heads (Keras order): loading keras_order's list into a fresh
    head gives the same network; a list of the wrong length or shape is refused."""
    torch = pytest.importorskip("torch", reason="the GPU step's networks need PyTorch")
    recipe = _torch_recipe()
    weights = _vgg16_like_weights(np.random.default_rng(0))
    x = torch.from_numpy(np.random.default_rng(1).normal(0, 50, (2, 3, 32, 32)).astype(np.float32))
    torch.manual_seed(0)
    trunk, head = recipe._networks(weights, 8, 0.0)
    torch.manual_seed(1)  # another dense initialisation
    _, other = recipe._networks(weights, 8, 0.0)
    with torch.no_grad():
        maps = trunk(x)
        assert not np.allclose(head.eval()(maps).numpy(), other.eval()(maps).numpy())
        recipe.load_keras_order(other, recipe.keras_order(head))
        np.testing.assert_allclose(other(maps).numpy(), head(maps).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="weight arrays"):
        recipe.load_keras_order(other, recipe.keras_order(head)[:-2])
    swapped = recipe.keras_order(head)
    swapped[-2] = swapped[-2][:, :4]  # a 4-class top layer for an 8-class head
    with pytest.raises(ValueError, match="kernel of shape"):
        recipe.load_keras_order(other, swapped)


def test_torch_recipe_style_perturbations_keep_each_cells_normalised_maps():
    """DSU and MixStyle change each cell's channel means and spreads, nothing else: the maps
    standardised per cell and channel are the same before and after."""
    torch = pytest.importorskip("torch", reason="the GPU step's networks need PyTorch")
    recipe = _torch_recipe()
    maps = torch.from_numpy(np.random.default_rng(0).gamma(2.0, 1.0, (16, 8, 5, 5)).astype(np.float32))

    def standardised(m):
        return (m - m.mean((2, 3), keepdim=True)) / m.std((2, 3), keepdim=True)

    for kind in ("dsu", "mixstyle"):
        out = recipe.perturb_statistics(maps, kind, torch.Generator().manual_seed(0))
        assert out.shape == maps.shape
        assert not torch.allclose(out.mean((2, 3)), maps.mean((2, 3)), atol=1e-3)
        np.testing.assert_allclose(standardised(out).numpy(), standardised(maps).numpy(),
                                   atol=2e-3)
    with pytest.raises(ValueError, match="unknown"):
        recipe.perturb_statistics(maps, "adain", torch.Generator())


def test_torch_recipe_random_convolutions_are_linear_and_drawn_per_image():
    """RandConv: a linear map of each image (no bias: black stays black; twice the image,
    twice the output), with a filter and share of its own for every image of the batch."""
    torch = pytest.importorskip("torch", reason="the GPU step's networks need PyTorch")
    recipe = _torch_recipe()
    image = torch.from_numpy(np.random.default_rng(0).normal(0, 50, (1, 3, 16, 16)).astype(np.float32))
    batch = image.repeat(4, 1, 1, 1)
    for seed in range(4):  # several filter sizes
        out = recipe.random_convolutions(batch, torch.Generator().manual_seed(seed))
        twice = recipe.random_convolutions(2 * batch, torch.Generator().manual_seed(seed))
        assert out.shape == batch.shape
        np.testing.assert_allclose(twice.numpy(), 2 * out.numpy(), rtol=1e-4, atol=1e-3)
        assert not torch.allclose(out[0], out[1])  # the same image, another filter
        black = recipe.random_convolutions(torch.zeros_like(batch), torch.Generator().manual_seed(seed))
        assert float(black.abs().max()) == 0.0
