"""Refit a bundle's review scorer (``review.npz``) on its training data; the network and
the SVMs are untouched.

    python tools/refit_review.py --pbc ../shared/data/pbc --cache .cache/features \\
        [--model models/pbc-robust-vgg16-svm] [--views 3]

The reference is 4,000 random training cells (seed 0; only their trunk maps are read,
:func:`hiercell.review.reference_draw`); the learned combination
(:func:`hiercell.review.fit_reviewer`) is fit on the validation cells and on
``--views`` augmented views of them (:func:`hiercell.preprocess.augment_view`).
Other labs' images are never read. Trunk features are cached (``--cache``).

With ``--answers-only`` the scorer is kept as it is and only learns what the model
answers on the validation cells (:meth:`hiercell.review.ReviewScorer.novel_rates`, which
the folder domain check expects per class); the cells are checked to be the ones it was
calibrated on, in the same order.
"""

import argparse

import numpy as np

import hiercell
from hiercell.bundle import default_bundle_path, replace_reviewer
from hiercell.data import read_dataset
from hiercell.features import model_features
from hiercell.review import (fit_reviewer, knn_distance, reference_draw, review_inputs,
                             trunk_descriptor)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pbc", required=True, help="PBC folder with splits.csv")
    ap.add_argument("--model", default=None, help="bundle folder (default: the bundled model)")
    ap.add_argument("--cache", default=None, help="trunk-feature cache folder")
    ap.add_argument("--views", type=int, default=3, help="shifted views of the validation cells")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--answers-only", action="store_true",
                    help="keep the scorer; record the model's answers on the validation cells")
    a = ap.parse_args()
    a.model = a.model or str(default_bundle_path())
    model = hiercell.load(a.model, precision="auto")
    everything = [s for s in read_dataset(a.pbc) if s.main is not None]
    train_samples = [s for s in everything if s.split == "train"]
    # the reference cells fit_reviewer draws: the same draw from these few as from all
    samples = ([train_samples[i] for i in reference_draw(len(train_samples), seed=a.seed)]
               + [s for s in everything if s.split == "val"])

    def maps(subset, view=0):
        res = model_features(model, [s.path for s in subset], view, a.cache, progress=True,
                             label=f"trunk features, view {view}")
        if not res.ok.all():
            raise SystemExit(f"{(~res.ok).sum()} images could not be read: {res.errors}")
        return res.features

    X = maps(samples)
    split = np.array([s.split for s in samples])
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if a.answers_only:
        return record_answers(a.model, model, X[val])
    val_samples = [samples[i] for i in val]
    shifted = [maps(val_samples, v) for v in range(1, a.views + 1)]
    reviewer = fit_reviewer(model.hierarchy, X, train, val, seed=a.seed,
                            labels=[s.main for s in samples], shifted=shifted)
    replace_reviewer(a.model, reviewer)
    print(f"{a.model}: review scorer refit; threshold {reviewer.threshold_:.4f}; weights "
          + ", ".join(f"{n} {w:+.2f}" for n, w in zip(reviewer.signals_, reviewer.coef_)))


def record_answers(path, model, X_val):
    """Store the model's answers on the validation cells ``X_val`` in the bundle's
    scorer, after checking that their novelties are the ones it holds, in order."""
    reviewer = model.hierarchy.reviewer
    novelty = knn_distance(reviewer.reference_, trunk_descriptor(X_val), reviewer.k)
    gap = np.abs(novelty - reviewer.val_novelty_).max() if len(novelty) == len(
        reviewer.val_novelty_) else np.inf
    if not gap < 1e-3:
        raise SystemExit(f"{path}: the validation cells are not those the review scorer was "
                         f"calibrated on (largest novelty difference {gap})")
    reviewer.val_answers_ = review_inputs(model.hierarchy.decide(X_val)[1])["answers"].astype(str)
    replace_reviewer(path, reviewer)
    print(f"{path}: answers on {len(X_val)} validation cells recorded (novelty within "
          f"{gap:.2g} of the stored); in-lab novel share per class: {reviewer.novel_rates()}")


if __name__ == "__main__":
    main()
