"""One-off experiment (not part of hiercell): would a stage-2 signal help the review score?

    python docs/experiments/review_stage2_signal.py PBC_FOLDER CACHE [BUNDLE]

Adds log(stage 2's probability mass on the answered main class's subclasses; 1 where
stage 2 did not run) to the review regression's signals, refits both regressions on the
validation cells and 3 shifted views as tools/refit_review.py does, and prints PBC test
AUROC wrong vs right and the flagged share / accuracy of the unflagged at thresholds
flagging 5, 7.5 and 10 % of val (lifting as the scorer does).
"""
import sys
import numpy as np
import hiercell
from hiercell.data import read_dataset
from hiercell.features import model_features
from hiercell.review import fit_reviewer, trunk_descriptor, review_inputs, _percentile_of
from hiercell.taxonomy import SUB_TO_MAIN
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

CACHE = sys.argv[2]
model = hiercell.load(sys.argv[3] if len(sys.argv) > 3 else None, precision="auto")
samples = [s for s in read_dataset(sys.argv[1]) if s.main is not None]
def maps(subset, view=0):
    res = model_features(model, [s.path for s in subset], view, CACHE)
    assert res.ok.all()
    return res.features
tv = [s for s in samples if s.split in ("train", "val")]
test = [s for s in samples if s.split == "test"]
X = maps(tv)
split = np.array([s.split for s in tv])
train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
vs = [tv[i] for i in val]
shifted = [maps(vs, v) for v in (1, 2, 3)]
Xt = maps(test)
H = model.hierarchy
rev = fit_reviewer(H, X, train, val, labels=[s.main for s in tv], shifted=shifted)
s2c = [str(c) for c in H.stage2.classes_]
def info(M, truth):
    p1, p2, n1 = H._stage_probas(M)
    _, dec = H.decide(M)
    g = review_inputs(dec)
    d = trunk_descriptor(M)
    sig = rev.signals(d, g["answers"], g["proba"], g["network_proba"], g["network_energy"])
    s2 = np.ones(len(M))
    for i, dd in enumerate(dec):
        if p2 is not None and not np.isnan(p2[i]).any() and dd.main in ("neutrophil", "ig"):
            s2[i] = sum(p2[i, j] for j, c in enumerate(s2c) if SUB_TO_MAIN.get(c) == dd.main)
    unc = np.array([dd.uncertain for dd in dec])
    nov = _percentile_of(rev.novelty_ref_, sig[:, 0] * 0 + np.exp(sig[:, 0]) - 1e-6)
    wrong = g["answers"] != truth
    return sig, np.log(np.clip(s2, 0, 1) + 1e-4), unc, nov > rev.novel_gate, wrong
sets = [info(M, np.array([s.main for s in vs])) for M in [X[val], *shifted]]
tst = info(Xt, np.array([s.main for s in test]))
def run(extra):
    F = lambda s: np.column_stack([s[0], s[1]]) if extra else s[0]
    A = np.vstack([F(s) for s in sets]); y = np.concatenate([s[4] for s in sets])
    mu, sd = A.mean(0), A.std(0) + 1e-9
    lr = LogisticRegression(C=1.0, max_iter=1000).fit((A - mu) / sd, y)
    def w(s):
        z = ((F(s) - mu) / sd) @ lr.coef_[0] + lr.intercept_[0]
        return 0.5 + 0.5 * z / (1 + np.abs(z))
    wv, wt = w(sets[0]), w(tst)
    liftv = sets[0][2] | sets[0][3]; liftt = tst[2] | tst[3]
    print("extra" if extra else "base ", "coef", np.round(lr.coef_[0], 2),
          "test AUROC %.4f" % roc_auc_score(tst[4], np.where(liftt, 1 + wt, wt)))
    for rate in (0.05, 0.075, 0.10):
        # threshold flags `rate` of val incl. lifted
        need = int(round(rate * len(wv))) - liftv.sum()
        t = np.sort(wv[~liftv])[::-1][max(need, 1) - 1]
        flag = liftt | (wt >= t)
        print(f"   val {rate:.3f}: test flagged {flag.mean():.4f} unflagged acc {1 - tst[4][~flag].mean():.4f}")
run(False); run(True)
