"""Write a bundle whose stage 1 comes from one trained bundle and stage 2 from another.

    python tools/combine_stages.py --stage1-from A --stage2-from B --out C \\
        [--pbc ../shared/data/pbc --cache CACHE]

Both bundles must be trained ones (not aligned to or adapted for a lab) on
the same data split, and share the trunk (same VGG16 blocks 1-4), input
size, masking and preprocessing, so that one trunk pass serves both stages.
C keeps A's stage 1, lab reference (``alignment.npz``) and training record,
and takes B's stage 2 (head, SVM and adaptation sample); ``bundle.json``
adds ``training.stage2`` (B's name and training record) and
``composed_from`` (both bundles' names and ``bundle.json`` digests). C has
no review scorer: A's read A's stage 2, so refit one for C with
``tools/refit_review.py --model C``. With ``--pbc``, C is evaluated on the PBC test split and the
headline goes into ``bundle.json`` as ``hiercell train`` does (metrics and
confusion matrices in ``C-evaluation/``).
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
    ap.add_argument("--stage2-from", required=True, help="bundle giving stage 2")
    ap.add_argument("--out", required=True, help="bundle folder to write")
    ap.add_argument("--pbc", default=None, help="PBC folder with splits.csv: evaluate the test split")
    ap.add_argument("--cache", default=None, help="trunk-feature cache folder")
    a = ap.parse_args()
    first, second = Path(a.stage1_from), Path(a.stage2_from)
    info1, info2 = verify_bundle(first), verify_bundle(second)
    for path, info in ((first, info1), (second, info2)):
        tuned = [k for k in ("base_stages", "adaptation", "alignment") if k in info]
        if tuned:
            raise SystemExit(f"{path} is aligned to or adapted for a lab ({', '.join(tuned)} in "
                             "bundle.json): combine the trained bundles, then align or adapt")
    splits = [(i.get("training_data") or {}).get("counts", {}).get("split") for i in (info1, info2)]
    if splits[0] != splits[1]:
        raise SystemExit(f"the bundles were trained on different splits ({splits[0]} against "
                         f"{splits[1]}): a test figure of the result would be no test")
    for key in ("input_size", "masked", "preprocess"):
        if info1.get(key) != info2.get(key):
            raise SystemExit(f"the bundles differ in {key}: {info1.get(key)!r} against {info2.get(key)!r}")
    if file_digest(first / "trunk.npz") != file_digest(second / "trunk.npz"):
        raise SystemExit("the bundles have different trunks (trunk.npz): one trunk pass cannot serve both")
    if "stage2" not in info2.get("stages", {}):
        raise SystemExit(f"{second} has no stage 2")
    model = hiercell.load(first, precision="float32", engine="keras")
    model.hierarchy.stage2 = hiercell.load(second, precision="float32", engine="keras").hierarchy.stage2
    model.hierarchy.reviewer = None  # it read the first bundle's stage 2: refit it for this one
    # the first bundle's training record stays the bundle's; stage 2 says where it differs
    training = {**info1.get("training", {}),
                "stage2": {"from": second.name, **info2.get("training", {})}}
    meta = {"training": training, "name": Path(a.out).name, "composed_from": {
        "stage1": {"bundle": first.name, "bundle_json": _digest(first / "bundle.json")},
        "stage2": {"bundle": second.name, "bundle_json": _digest(second / "bundle.json")}}}
    model.info.pop("metrics", None)  # the first bundle's figures are not this model's
    save_bundle(model, a.out, meta)
    print(f"{a.out}: stage 1 from {first}, stage 2 from {second}; no review scorer yet: "
          f"python tools/refit_review.py --model {a.out} --pbc PBC --cache CACHE")
    if a.pbc:
        from hiercell.data import read_dataset
        from hiercell.features import FeatureCache, extract_trunk_features
        from hiercell.training import evaluate_hierarchy, headline, save_metrics

        test = [s for s in read_dataset(a.pbc) if s.split == "test"]
        config = model.trunk_config()
        res = extract_trunk_features([s.path for s in test], model.trunk, config,
                                     FeatureCache(a.cache, config) if a.cache else None,
                                     progress=True, label="PBC test split")
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
