"""Write a bundle whose stages come from trained bundles: stage 1 from one, stage 2 from
another, and optionally a second, in-lab stage 1 from a third.

    python tools/combine_stages.py --stage1-from A [--stage2-from B] [--inlab-from D
        [--inlab-gate 0.95]] [--inlab-network-weight V] [--stage1-network-weight W] --out C
        [--pbc ../shared/data/pbc --cache CACHE]

All bundles must be trained ones (not aligned to or adapted for a lab) on
the same data split, and share the trunk (same VGG16 blocks 1-4), input
size, masking and preprocessing, so that one trunk pass serves all stages.
C keeps A's stage 1, lab reference (``alignment.npz``) and training record,
and takes B's stage 2 (head, SVM and adaptation sample; without B, A's);
``bundle.json`` adds ``training.stage2`` (B's name and training record) and
``composed_from`` (the bundles' names and ``bundle.json`` digests). With D,
D's stage 1 answers the cells whose novelty percentile is at most the gate
(:attr:`hiercell.hierarchy.HierarchicalClassifier.inlab`; ``training.inlab``
says where it came from), with its SVM alone (``network_weight`` 0, whatever
D's) or, with V, with ``(1 - V) x`` its SVM's probabilities ``+ V x`` its
network head's softmax (V also resets the weight of an in-lab stage A has;
``training.inlab_network_weight`` records it). With W, C's (main) stage 1
answers with ``(1 - W) x`` its SVM's probabilities ``+ W x`` its network
head's softmax
(:attr:`hiercell.stage.StageClassifier.network_weight`;
``training.stage1_network_weight`` records it). A's own ``composed_from``, if
any, is kept inside C's. A's review scorer read A's stages, so C's must be
refit with ``tools/refit_review.py --model C``: without an in-lab stage (D's
or A's own), C has none until then; with one, C keeps A's, whose novelty
(unchanged by a refit on the same reference) picks the in-lab cells, refit
included. With ``--pbc``, C is
evaluated on the PBC test split and the headline goes into ``bundle.json``
as ``hiercell train`` does (metrics and confusion matrices in
``C-evaluation/``).
"""

import argparse
from pathlib import Path

import hiercell
from hiercell.bundle import BundleError, save_bundle, verify_bundle
from hiercell.fileutil import file_digest


def _digest(path: Path) -> str:
    """A short name of a file's contents for ``bundle.json`` (as its backbone weights)."""
    return "sha256:" + file_digest(path)[:16]


def main():
    try:
        combine()
    except BundleError as exc:  # a folder that is no bundle, or an --out that is not one
        raise SystemExit(str(exc)) from None


def combine():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage1-from", required=True, help="bundle giving stage 1 (and the rest)")
    ap.add_argument("--stage2-from", default=None, help="bundle giving stage 2 (default: A's)")
    ap.add_argument("--inlab-from", default=None,
                    help="bundle whose stage 1 answers the cells like the training lab's")
    ap.add_argument("--inlab-gate", type=float, default=None,
                    help="novelty percentile at most which a cell is one of those "
                         "(default: hiercell.hierarchy.INLAB_GATE)")
    ap.add_argument("--stage1-network-weight", type=float, default=None,
                    help="share of stage 1's network head softmax in its probabilities "
                         "(default: A's)")
    ap.add_argument("--inlab-network-weight", type=float, default=None,
                    help="share of the in-lab stage 1's network head softmax in its "
                         "probabilities (default: 0 for D's, as stored for A's)")
    ap.add_argument("--out", required=True, help="bundle folder to write")
    ap.add_argument("--pbc", default=None, help="PBC folder with splits.csv: evaluate the test split")
    ap.add_argument("--cache", default=None, help="trunk-feature cache folder")
    a = ap.parse_args()
    first = Path(a.stage1_from)
    second = Path(a.stage2_from) if a.stage2_from else first
    inlab_path = Path(a.inlab_from) if a.inlab_from else None
    if (a.stage2_from is None and inlab_path is None and a.stage1_network_weight is None
            and a.inlab_network_weight is None):
        raise SystemExit("give --stage2-from, --inlab-from, --stage1-network-weight or "
                         "--inlab-network-weight")
    for flag, weight in (("--stage1-network-weight", a.stage1_network_weight),
                         ("--inlab-network-weight", a.inlab_network_weight)):
        if weight is not None and not 0.0 <= weight <= 1.0:
            raise SystemExit(f"{flag} must be in [0, 1], got {weight}")
    if a.inlab_gate is not None and not 0.0 < a.inlab_gate <= 1.0:
        raise SystemExit(f"--inlab-gate must be in (0, 1], got {a.inlab_gate}")
    info1 = verify_bundle(first)
    info2 = info1 if second == first else verify_bundle(second)
    given = [(first, info1), (second, info2)]
    if inlab_path is not None:
        given.append((inlab_path, verify_bundle(inlab_path)))
    for path, info in given:
        tuned = [k for k in ("base_stages", "adaptation", "alignment") if k in info]
        if tuned:
            raise SystemExit(f"{path} is aligned to or adapted for a lab ({', '.join(tuned)} in "
                             "bundle.json): combine the trained bundles, then align or adapt")
    for path, info in given[1:]:
        splits = [(i.get("training_data") or {}).get("counts", {}).get("split") for i in (info1, info)]
        if splits[0] != splits[1]:
            raise SystemExit(f"the bundles were trained on different splits ({splits[0]} against "
                             f"{splits[1]}): a test figure of the result would be no test")
        for key in ("input_size", "masked", "preprocess"):
            if info1.get(key) != info.get(key):
                raise SystemExit(f"the bundles differ in {key}: {info1.get(key)!r} against {info.get(key)!r}")
        if file_digest(first / "trunk.npz") != file_digest(path / "trunk.npz"):
            raise SystemExit(f"the bundles have different trunks (trunk.npz of {path} and "
                             f"{first}): one trunk pass cannot serve both")
    if (a.inlab_network_weight is not None and inlab_path is None
            and not info1.get("inlab_stages")):
        raise SystemExit(f"--inlab-network-weight: {first} has no in-lab stage 1; give "
                         "--inlab-from")
    if "stage2" not in info2.get("stages", {}):
        raise SystemExit(f"{second} has no stage 2")
    model = hiercell.load(first, precision="float32", engine="keras")
    hier = model.hierarchy
    training = dict(info1.get("training", {}))
    composed = {"stage1": {"bundle": first.name, "bundle_json": _digest(first / "bundle.json")}}
    if info1.get("composed_from"):
        composed["stage1"]["composed_from"] = info1["composed_from"]
    if a.stage1_network_weight is not None:
        hier.stage1.network_weight = float(a.stage1_network_weight)
        training["stage1_network_weight"] = float(a.stage1_network_weight)
    if a.stage2_from:
        hier.stage2 = hiercell.load(second, precision="float32", engine="keras").hierarchy.stage2
        training["stage2"] = {"from": second.name, **info2.get("training", {})}
        composed["stage2"] = {"bundle": second.name, "bundle_json": _digest(second / "bundle.json")}
    if inlab_path is not None:
        hier.inlab = hiercell.load(inlab_path, precision="float32", engine="keras").hierarchy.stage1
        hier.inlab.network_weight = 0.0  # the in-lab stage answers with its SVM (the recipe)
        training.pop("inlab_network_weight", None)  # A's in-lab stage's, unless V below
        from hiercell.hierarchy import INLAB_GATE

        hier.inlab_gate = INLAB_GATE if a.inlab_gate is None else a.inlab_gate  # recorded
        training["inlab"] = {"from": inlab_path.name, **given[-1][1].get("training", {})}
        composed["inlab"] = {"bundle": inlab_path.name,
                             "bundle_json": _digest(inlab_path / "bundle.json")}
    elif hier.inlab is None:
        hier.reviewer = None  # it read the first bundle's stages: refit it for this one
    if a.inlab_network_weight is not None:
        hier.inlab.network_weight = float(a.inlab_network_weight)
        training["inlab_network_weight"] = float(a.inlab_network_weight)
    meta = {"training": training, "name": Path(a.out).name, "composed_from": composed}
    model.info.pop("metrics", None)  # the first bundle's figures are not this model's
    save_bundle(model, a.out, meta)
    print(f"{a.out}: stage 1 from {first}, stage 2 from {second}"
          + (f", in-lab stage 1 from {inlab_path}" if inlab_path else "")
          + (f", stage 1 network weight {a.stage1_network_weight}"
             if a.stage1_network_weight is not None else "")
          + (f", in-lab network weight {a.inlab_network_weight}"
             if a.inlab_network_weight is not None else "")
          + f"; refit its review scorer: python tools/refit_review.py --model {a.out} "
          "--pbc PBC --cache CACHE")
    if a.pbc:
        from hiercell.data import read_dataset
        from hiercell.features import model_features
        from hiercell.training import evaluate_hierarchy, headline, save_metrics

        test = [s for s in read_dataset(a.pbc) if s.split == "test"]
        res = model_features(model, [s.path for s in test], cache_dir=a.cache, progress=True,
                             label="PBC test split")
        if not res.ok.all():
            raise SystemExit(f"{(~res.ok).sum()} test images could not be read: {res.errors}")
        metrics = evaluate_hierarchy(model, res.features, test)
        out_dir = Path(a.out).parent / (Path(a.out).name + "-evaluation")
        save_metrics(metrics, out_dir)
        meta["metrics"] = {"split": "test", **headline(metrics)}
        save_bundle(model, a.out, meta)
        print(f"test split: {headline(metrics)}; metrics and confusion matrices in {out_dir}")


if __name__ == "__main__":
    main()
