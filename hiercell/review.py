"""Know when the model does not know: a review score per cell, a domain check per folder.

Built only from what classification already computes (no second network pass):

* **novelty**: mean cosine distance to the ``k`` nearest training cells in a
  descriptor of the VGG16 trunk's ``block4_pool`` map -- mean and standard
  deviation over the central 6x6 positions (the cell, in the canonical frame),
  square-rooted and L2-normalised (:func:`trunk_descriptor`). These are frozen
  ImageNet features, not trained to separate the 8 classes, so a cell unlike
  every training cell stays far from them (fine-tuned features map it onto a
  class);
* **ambiguity**: one minus the top stage-1 probability;
* stage 2 answering ``Others`` (``uncertain``).

Each signal is turned into its percentile among in-lab validation cells
(:class:`ReviewScorer`, fit at training time and stored in the bundle), and the
``review_score`` is essentially their maximum (0.98 x maximum + 0.02 x mean;
1.0 for uncertain cells): a cell novel *or* ambiguous scores high, and where
every cell is novel (another lab) the mean term still ranks them by
ambiguity; ``review`` is
``review_score >= threshold``, the threshold being the validation quantile
that flags ``target_rate`` (5 %) of in-lab cells.

Per folder, :func:`domain_shift` is the share of cells whose novelty is
above the 95th in-lab percentile (about 0.05 for images like the training
data) and warns when it is far above that. Records carry the novelty as a
percentile (``Prediction.novelty``), so the check runs on results files too.
"""

from __future__ import annotations

import math

import numpy as np

#: Share of in-lab validation cells flagged for review at the default threshold.
TARGET_RATE = 0.05
#: Nearest neighbours averaged in the novelty score.
K_NEIGHBOURS = 10
#: Weight of the mean of the two percentiles in the score (the rest is their maximum):
#: the maximum flags a cell that is either novel or ambiguous; the small mean
#: term keeps ranking cells by ambiguity where every cell is novel (another lab).
MIX = 0.02
#: Domain-shift warning: share of novel cells that fires it (in-lab: ~0.05).
SHIFT_WARN_SHARE = 0.25


def trunk_descriptor(maps: np.ndarray) -> np.ndarray:
    """``(n, h, w, c)`` trunk maps -> ``(n, 2c)`` float32 novelty descriptors.

    Mean and standard deviation over the central ``0.6 h x 0.6 w`` positions
    (all positions for maps smaller than 5x5), square root, L2 normalisation.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 4:
        raise ValueError(f"trunk maps must be (n, h, w, c), got shape {maps.shape}")
    h, w = maps.shape[1:3]
    mh, mw = (round(0.2 * h), round(0.2 * w)) if min(h, w) >= 5 else (0, 0)
    centre = maps[:, mh:h - mh, mw:w - mw]
    d = np.concatenate([centre.mean((1, 2)), centre.std((1, 2))], axis=1)
    d = np.sqrt(np.maximum(d, 0.0))
    return d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-8)


def knn_distance(reference: np.ndarray, queries: np.ndarray, k: int = K_NEIGHBOURS,
                 chunk: int = 512) -> np.ndarray:
    """Mean cosine distance of each L2-normalised query row to its ``k`` nearest reference rows."""
    reference = np.asarray(reference, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    k = int(min(k, len(reference)))
    out = np.empty(len(queries), dtype=np.float32)
    for i in range(0, len(queries), chunk):
        dist = 1.0 - queries[i:i + chunk] @ reference.T
        out[i:i + chunk] = np.partition(dist, k - 1, axis=1)[:, :k].mean(1)
    return out


def _percentile_of(sorted_ref: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Share of ``sorted_ref`` below each value, in [0, 1]."""
    return np.searchsorted(sorted_ref, values, side="right") / max(len(sorted_ref), 1)


class ReviewScorer:
    """Review score from trunk novelty and stage-1 ambiguity (see module doc).

    ``fit(reference, val_descriptors, val_top_proba)``: ``reference`` are
    training-cell descriptors (:func:`trunk_descriptor`); the validation
    arrays (in-lab cells not in ``reference``) calibrate the percentiles and
    the threshold. ``score(descriptors, top_proba, uncertain)`` returns
    ``(review_score, novelty)``: novelty as its percentile among in-lab cells.
    """

    def __init__(self, k=K_NEIGHBOURS, target_rate=TARGET_RATE):
        self.k = k
        self.target_rate = target_rate

    def fit(self, reference, val_descriptors, val_top_proba):
        self.reference_ = np.asarray(reference, dtype=np.float16)
        self.val_novelty_ = knn_distance(self.reference_, val_descriptors, self.k)
        self.val_ambiguity_ = 1.0 - np.asarray(val_top_proba, dtype=np.float32)
        self.extra_novelty_ = np.zeros(0, dtype=np.float32)
        self._calibrate()
        return self

    def _calibrate(self):
        """Percentile tables and threshold from the paired validation signals."""
        self.novelty_ref_ = np.sort(np.concatenate([self.val_novelty_, self.extra_novelty_]))
        self.ambiguity_ref_ = np.sort(self.val_ambiguity_)
        score = self._combine(_percentile_of(self.novelty_ref_, self.val_novelty_),
                              _percentile_of(self.ambiguity_ref_, self.val_ambiguity_))
        self.threshold_ = float(np.quantile(score, 1.0 - self.target_rate))

    @staticmethod
    def _combine(nov, amb):
        return (1.0 - MIX) * np.maximum(nov, amb) + MIX * 0.5 * (nov + amb)

    def with_reference(self, descriptors) -> "ReviewScorer":
        """A copy that also knows the cells ``descriptors`` (e.g. a new lab's labelled
        cells): they join the reference, and their leave-one-out novelty joins the
        novelty distribution that percentiles are read from."""
        import copy

        new = copy.copy(self)
        d = np.asarray(descriptors, dtype=np.float32)
        new.reference_ = np.concatenate([self.reference_, d.astype(np.float16)])
        if len(d) > self.k:
            own = 1.0 - d @ d.T
            np.fill_diagonal(own, np.inf)
            old = 1.0 - d @ self.reference_.astype(np.float32).T
            both = np.concatenate([old, own], axis=1)
            loo = np.partition(both, self.k - 1, axis=1)[:, :self.k].mean(1)
            new.extra_novelty_ = np.concatenate([self.extra_novelty_, loo]).astype(np.float32)
            new._calibrate()
        return new

    def novelty(self, descriptors):
        """Raw novelty (mean cosine distance to the k nearest reference cells)."""
        return knn_distance(self.reference_, descriptors, self.k)

    def score(self, descriptors, top_proba, uncertain=None):
        """``(review_score, novelty)`` per cell, both in [0, 1]; ``novelty`` is the
        percentile of the cell's novelty among in-lab validation cells."""
        nov = _percentile_of(self.novelty_ref_, self.novelty(descriptors))
        amb = _percentile_of(self.ambiguity_ref_, 1.0 - np.asarray(top_proba, dtype=np.float32))
        score = self._combine(nov, amb)
        if uncertain is not None:
            score = np.where(np.asarray(uncertain, bool), 1.0, score)
        return score.astype(np.float32), nov.astype(np.float32)

    def flag(self, review_score):
        """``review_score >= threshold_``."""
        return np.asarray(review_score) >= self.threshold_

    def to_arrays(self) -> dict:
        return {"reference": self.reference_,
                "val_novelty": self.val_novelty_.astype(np.float32),
                "val_ambiguity": self.val_ambiguity_.astype(np.float32),
                "extra_novelty": self.extra_novelty_.astype(np.float32),
                "params": np.array([self.k, self.target_rate], dtype=np.float64)}

    @classmethod
    def from_arrays(cls, arrays) -> "ReviewScorer":
        k, rate = (float(v) for v in arrays["params"][:2])
        self = cls(k=int(k), target_rate=rate)
        self.reference_ = np.asarray(arrays["reference"], dtype=np.float16)
        self.val_novelty_ = np.asarray(arrays["val_novelty"], dtype=np.float32)
        self.val_ambiguity_ = np.asarray(arrays["val_ambiguity"], dtype=np.float32)
        self.extra_novelty_ = np.asarray(arrays["extra_novelty"], dtype=np.float32)
        self._calibrate()
        return self


def _binomial_tail(n: int, k: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``, summed in log space (no float overflow
    for folders of thousands of cells)."""
    if k <= 0 or p >= 1.0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
            + j * math.log(p) + (n - j) * math.log1p(-p) for j in range(k, n + 1)]
    top = max(logs)
    return math.exp(top) * sum(math.exp(v - top) for v in logs)


def domain_shift(novelty, novel_above=0.95, warn_share=SHIFT_WARN_SHARE) -> dict:
    """Folder-level domain check from the cells' novelty percentiles (``None`` skipped).

    ``score``: share of cells whose novelty is above ``novel_above`` (the
    in-lab 95th percentile: about 0.05 for images like the training data).
    ``warning`` when that share is at least ``warn_share`` and its excess over
    0.05 is significant (one-sided binomial tail below 0.001), so a few odd
    cells in a small folder do not fire it.
    """
    values = np.array([v for v in novelty if v is not None], dtype=np.float64)
    n = int(len(values))
    if n == 0:
        return {"score": None, "warning": False, "n": 0,
                "message": "no cell with a novelty score: no domain check"}
    k = int(np.count_nonzero(values > novel_above))
    share = k / n
    base = 1.0 - novel_above
    tail = _binomial_tail(n, k, base)
    warning = bool(share >= warn_share and tail < 1e-3)
    if warning:
        message = (f"these images look unlike the training data (score {share:.2f}: "
                   f"{k} of {n} cells are novel): expect lower accuracy; see `hiercell adapt`")
    else:
        message = f"images look like the training data (score {share:.2f}: {k} of {n} cells novel)"
    return {"score": round(share, 4), "warning": warning, "n": n, "message": message}


def fit_reviewer(hierarchy, X, reference_rows, val_rows, max_reference=4000,
                 seed=0) -> ReviewScorer:
    """A :class:`ReviewScorer` for ``hierarchy`` from trunk maps ``X``: at most
    ``max_reference`` of the training cells ``reference_rows`` (drawn at random) are the
    reference, the validation cells ``val_rows`` calibrate percentiles and threshold."""
    rng = np.random.default_rng(seed)
    reference_rows = np.asarray(reference_rows)
    pick = np.sort(rng.permutation(len(reference_rows))[:max_reference])
    reference = trunk_descriptor(X[reference_rows[pick]])
    X_val = X[np.asarray(val_rows)]
    p1 = hierarchy.stage1.predict_proba(X_val)
    return ReviewScorer().fit(reference, trunk_descriptor(X_val), p1.max(1))
