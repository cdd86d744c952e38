"""Test-split accuracy of a bundle in each trunk precision, side by side.

    python bench/bench_precision.py --data ../shared/data/pbc --model BUNDLE [--subset test]
                                    [--precisions float32,bfloat16,bfloat16@keras]
                                    [--json out.json]

For each precision the bundle is loaded with ``hiercell.load(BUNDLE, precision=...)``
(``PRECISION@ENGINE``: with ``engine=ENGINE``; rows are named ``precision@engine``),
the trunk features of the subset are computed afresh (no feature cache unless
``--cache`` is given; the cache keys features by precision anyway), and
:func:`hiercell.training.evaluate_hierarchy` gives stage 1, stage 2 and end-to-end
accuracy / macro-F1, exactly as ``hiercell evaluate`` does. The last table gives each
precision's difference to float32 in points, and how many predictions changed.

Works with any bundle (``--model``; default: the bundled model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# measure the hiercell of this checkout, not whichever one is installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def evaluate(model_path, precision, samples, cache=None, others_per_class=150, seed=0,
             engine=None):
    """``(name, metrics, seconds, images/s of the trunk)`` of one precision."""
    import hiercell
    from hiercell.features import model_features
    from hiercell.training import evaluate_hierarchy

    model = hiercell.load(model_path, precision=precision, engine=engine)
    t0 = time.perf_counter()
    res = model_features(model, [s.path for s in samples], cache_dir=cache, progress=True,
                         label=f"trunk ({model.info['precision']})")
    seconds = time.perf_counter() - t0
    kept = res.kept(samples)
    metrics = evaluate_hierarchy(model, res.features, kept, others_per_class, seed)
    used = f"{model.info['precision']}@{model.info['engine']}"
    return used, metrics, seconds, len(kept) / seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="Labelled data set (PBC folder, class "
                                                  "folders or CSV manifest).")
    ap.add_argument("--model", default=None, help="Bundle (default: the bundled model).")
    ap.add_argument("--subset", default="test", help="Split to evaluate ('all': every image).")
    ap.add_argument("--split-csv", default=None)
    ap.add_argument("--precisions", default="float32,bfloat16",
                    help="Comma-separated trunk precisions, each optionally @keras or "
                         "@openvino (default: the engine hiercell.load picks); the first is "
                         "the reference.")
    ap.add_argument("--limit", type=int, default=None, help="At most N images (quick check).")
    ap.add_argument("--cache", default=None, help="Feature cache folder (default: none).")
    ap.add_argument("--json", default=None, help="Also write the headline figures here.")
    args = ap.parse_args(argv)

    from hiercell.data import load_samples
    from hiercell.training import headline

    samples = load_samples(args.data, args.split_csv)
    if args.subset != "all":
        samples = [s for s in samples if s.split == args.subset]
    samples = samples[:args.limit] if args.limit else samples
    if not samples:
        sys.exit(f"no images in subset {args.subset!r} of {args.data}")
    print(f"{len(samples)} images ({args.subset}), model {args.model or 'bundled default'}",
          flush=True)

    results = {}
    for requested in args.precisions.split(","):
        precision, _, engine = requested.strip().partition("@")
        used, metrics, seconds, rate = evaluate(args.model, precision, samples, args.cache,
                                                engine=engine or None)
        results[used] = {"metrics": metrics, "seconds": seconds, "trunk_images_per_s": rate}
        print(f"{used}: trunk features in {seconds:.0f} s ({rate:.1f} images/s)", flush=True)

    print(f"\n{'precision':<18} {'evaluation':<11} {'accuracy':>9} {'macro-F1':>9} {'n':>6}")
    for used, r in results.items():
        for name, h in headline(r["metrics"]).items():
            print(f"{used:<18} {name:<11} {h['accuracy']:>9.4f} {h['macro_f1']:>9.4f} {h['n']:>6}")
    ref_name = next(iter(results))
    ref = results[ref_name]["metrics"]
    print(f"\ndifference to {ref_name} (points; changed predictions)")
    for used, r in list(results.items())[1:]:
        for name, m in r["metrics"].items():
            if name not in ref:
                continue
            changed = sum(a != b for a, b in zip(ref[name]["y_pred"], m["y_pred"]))
            print(f"{used:<18} {name:<11} accuracy {100 * (m['accuracy'] - ref[name]['accuracy']):+.2f}"
                  f"  macro-F1 {100 * (m['macro_f1'] - ref[name]['macro_f1']):+.2f}"
                  f"  changed {changed}/{m['n']}")
    if args.json:
        slim = {used: {"headline": headline(r["metrics"]), "seconds": round(r["seconds"], 1),
                       "trunk_images_per_s": round(r["trunk_images_per_s"], 2)}
                for used, r in results.items()}
        with open(args.json, "w") as fh:
            json.dump({"subset": args.subset, "model": args.model, "results": slim}, fh, indent=2)


if __name__ == "__main__":
    main()
