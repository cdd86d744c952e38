#!/usr/bin/env python
"""Cheap in-lab levers tried on the CPU against the bundled model's cached trunk features
(none adopted; figures in the closing note of developer session 12).

    python docs/experiments/cpu_levers.py ../shared/data/pbc --cache CACHE [--model BUNDLE] \\
        [--only tta-maps,tta-image,mix,gate,review-signal]

* ``tta-maps``: stage outputs averaged over flipped / transposed block4 maps (val, test);
* ``tta-image``: the same with the trunk run on horizontally flipped images (val only);
* ``mix``: in-lab cells answered by the mean of the in-lab and the main stage 1, and
  the in-lab gate's percentile;
* ``gate``: the review flag's novelty lift (99th percentile, per class, none) at the 5 %
  validation rate, applied to the test split;
* ``review-signal``: the other stage 1's probability of the answer as a review signal
  (the review regression refit on validation cells only, with and without it).
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score

import hiercell
from hiercell.data import read_dataset
from hiercell.features import model_features
from hiercell.review import _percentile_of, review_inputs, trunk_descriptor


def split_features(model, pbc, split, cache):
    samples = [s for s in read_dataset(pbc) if s.split == split and s.main is not None]
    res = model_features(model, [s.path for s in samples], cache_dir=cache)
    samples = res.kept(samples)
    return (res.features.astype(np.float32), np.array([s.main for s in samples]),
            np.array([s.sub or "" for s in samples]), samples)


def outputs(h, X):
    return h.stage1.predict_outputs(X)[0], h.inlab.predict_outputs(X)[0], h.stage2.predict_outputs(X)[0]


def report(h, name, inlab, views, y, ysub):
    C = np.array([str(c) for c in h.stage1.classes_])
    C2 = np.array([str(c) for c in h.stage2.classes_])
    pm, pi, p2 = (np.mean([v[j] for v in views], 0) for j in range(3))
    a1 = np.where(inlab, C[pi.argmax(1)], C[pm.argmax(1)])
    rows = ysub != ""
    s2 = C2[p2[rows].argmax(1)]
    print(f"  {name:14s} stage 1 {(a1 == y).mean():.4f}  stage 2 (alone, subclass cells) macro-F1 "
          f"{f1_score(ysub[rows], s2, labels=sorted(set(ysub[rows])), average='macro'):.4f}")


def tta_maps(model, data):
    h = model.hierarchy
    flips = {"id": lambda X: X, "h": lambda X: X[:, :, ::-1], "v": lambda X: X[:, ::-1],
             "hv": lambda X: X[:, ::-1, ::-1], "t": lambda X: X.transpose(0, 2, 1, 3)}
    for split, (X, y, ysub, _) in data.items():
        print(f"tta-maps, {split}")
        out = {k: outputs(h, np.ascontiguousarray(f(X))) for k, f in flips.items()}
        inlab = h.inlab_rows(X)
        for combo in (["id"], ["id", "h"], ["id", "v"], ["id", "h", "v", "hv"], ["id", "t"]):
            report(h, "+".join(combo), inlab, [out[c] for c in combo], y, ysub)


def tta_image(model, data):
    h = model.hierarchy
    X, y, ysub, samples = data["val"]
    flipped = []
    for k in range(0, len(samples), 64):
        imgs = [cv2.cvtColor(cv2.imread(str(s.path)), cv2.COLOR_BGR2RGB)[:, ::-1].copy()
                for s in samples[k:k + 64]]
        flipped.append(model.features(imgs))
    Xh = np.concatenate(flipped).astype(np.float32)
    inlab = h.inlab_rows(X)
    plain, mirrored = outputs(h, X), outputs(h, Xh)
    print("tta-image, val")
    for name, views in (("id", [plain]), ("h", [mirrored]), ("id+h", [plain, mirrored])):
        report(h, name, inlab, views, y, ysub)


def mix(model, data):
    h = model.hierarchy
    C = np.array([str(c) for c in h.stage1.classes_])
    for split, (X, y, _, _) in data.items():
        inlab = h.inlab_rows(X)
        pm, pi = h.stage1.predict_outputs(X)[0], h.inlab.predict_outputs(X)[0]
        print(f"mix, {split}: shipped rule {(np.where(inlab, C[pi.argmax(1)], C[pm.argmax(1)]) == y).mean():.4f}")
        for w in (0.5, 0.7, 0.9):
            both = w * pi + (1 - w) * pm
            print(f"  in-lab weight {w}: {(np.where(inlab, C[both.argmax(1)], C[pm.argmax(1)]) == y).mean():.4f}")
        for gate in (0.9, 0.95, 0.99, 1.0):
            h.inlab_gate = gate
            rows = h.inlab_rows(X)
            print(f"  gate {gate}: {(np.where(rows, C[pi.argmax(1)], C[pm.argmax(1)]) == y).mean():.4f} "
                  f"(in-lab share {rows.mean():.3f})")
        h.inlab_gate = None


def _review_parts(model, X, y):
    h, R = model.hierarchy, model.hierarchy.reviewer
    _, decisions = h.decide(X)
    given = review_inputs(decisions)
    d = trunk_descriptor(X)
    u, nov = R.wrongness_and_novelty(d, given["answers"], given["proba"], None,
                                     given["network_proba"], given["network_energy"])
    C = [str(c) for c in h.stage1.classes_]
    other = [h.stage1.predict_outputs(X)[0], h.inlab.predict_outputs(X)[0]]
    idx = np.array([C.index(a) for a in given["answers"]])
    return dict(u=u, nov=nov, raw=R.novelty(d), ans=given["answers"], wrong=given["answers"] != y,
                unc=np.array([x.uncertain for x in decisions]),
                sig=R.signals(d, given["answers"], given["proba"], given["network_proba"],
                              given["network_energy"]),
                pm=other[0][np.arange(len(X)), idx], pi=other[1][np.arange(len(X)), idx])


def gate(model, data):
    R = model.hierarchy.reviewer
    V, T = (_review_parts(model, data[s][0], data[s][1]) for s in ("val", "test"))

    def per_class(S):
        out = np.empty(len(S["raw"]))
        for c in np.unique(S["ans"]):
            ref = R.val_novelty_[R.val_answers_ == c]
            out[S["ans"] == c] = _percentile_of(np.sort(ref if len(ref) > 20 else R.val_novelty_),
                                                S["raw"][S["ans"] == c])
        return out
    print("gate (5 % of val flagged; test split)")
    for name, pct in (("in-lab", lambda S: S["nov"]), ("per class", per_class)):
        for g in (0.99, 0.995, 1.01):
            lv, lt = (pct(V) > g) | V["unc"], (pct(T) > g) | T["unc"]
            room = int(round(0.05 * len(V["u"]))) - lv.sum()
            t = np.sort(V["u"][~lv])[::-1][room - 1]
            flag = lt | (T["u"] >= t)
            print(f"  {name} lift above {g}: flagged {flag.mean():.4f}, accuracy of the others "
                  f"{1 - T['wrong'][~flag].mean():.4f}")


def review_signal(model, data):
    V, T = (_review_parts(model, data[s][0], data[s][1]) for s in ("val", "test"))
    print("review-signal (regression refit on val cells only; test split)")
    for extra in ([], ["pm"], ["pi"], ["pm", "pi"]):
        def design(S):
            return np.hstack([S["sig"]] + [np.log(np.clip(S[e], 1e-6, 1))[:, None] for e in extra])
        Xv, Xt = design(V), design(T)
        mu, sd = Xv.mean(0), Xv.std(0) + 1e-9
        lr = LogisticRegression(max_iter=2000).fit((Xv - mu) / sd, V["wrong"])
        zv, zt = lr.decision_function((Xv - mu) / sd), lr.decision_function((Xt - mu) / sd)
        flag = zt >= np.quantile(zv, 0.95)
        print(f"  extra {extra or 'none'}: AUROC {roc_auc_score(T['wrong'], zt):.3f}; flagged "
              f"{flag.mean():.4f}, accuracy of the others {1 - T['wrong'][~flag].mean():.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pbc")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--only", default="tta-maps,tta-image,mix,gate,review-signal")
    args = ap.parse_args()
    model = hiercell.load(args.model, precision="auto")
    if model.hierarchy.inlab is None or model.hierarchy.reviewer is None:
        ap.error("the model needs an in-lab stage 1 and a review scorer")
    data = {s: split_features(model, args.pbc, s, args.cache) for s in ("val", "test")}
    runs = {"tta-maps": tta_maps, "tta-image": tta_image, "mix": mix, "gate": gate,
            "review-signal": review_signal}
    for name in args.only.split(","):
        runs[name](model, data)


if __name__ == "__main__":
    main()
