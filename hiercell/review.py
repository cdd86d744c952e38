"""Know when the model does not know: a review score per cell, a domain check per folder.

Built only from what classification already computes (no second network pass):
the stage-1 probabilities, the routed main class and a descriptor of the VGG16
trunk's ``block4_pool`` map -- mean and standard deviation over the central
6x6 positions (the cell, in the canonical frame), square-rooted and
L2-normalised (:func:`trunk_descriptor`). These are frozen ImageNet features,
not trained to separate the 8 classes, so a cell unlike every training cell
stays far from them (fine-tuned features map it onto a class). Against a
reference of training cells with their classes, per cell (:func:`neighbour_signals`):

* **novelty**: mean cosine distance to the ``k`` nearest reference cells;
* **class distance ratio**: mean distance to the ``k`` nearest cells of the
  answered class over that to the nearest other class (above 1: the cell looks
  more like another class than like its answer);
* **neighbour vote**: share of the ``k`` nearest cells of the answered class;
* **probability** of the answered main class (the stage's: its calibrated SVM's,
  mixed with its network head's softmax where the stage's ``network_weight`` says);
* **network probability**: stage 1's network head (its own softmax over the
  Dense(1024) embedding the SVM reads, computed in numpy from that embedding:
  no second pass) on the same answer. Where the head and the SVM disagree, or
  the head is unsure, the answer is often wrong;
* **network energy**: that head's free energy, minus the log-sum-exp of its
  logits (Liu et al., NeurIPS 2020): high where no class's logit is large,
  which the softmax hides when all are small alike.

:class:`ReviewScorer` (fit at training time, stored in the bundle) combines
them with a logistic regression that predicts a wrong answer, fit on in-lab
validation cells and, where given, on synthetically shifted views of them
(colour, scale, blur: :func:`hiercell.preprocess.augment_view`); other labs'
images are never used. The ``review_score`` is its log-odds ``z`` squashed
into (0, 1) as ``0.5 + 0.5 z / (1 + |z|)`` (:meth:`ReviewScorer.wrongness`:
no saturation, so cells far outside the in-lab range keep their ranking),
except that cells more novel than ``novel_gate`` (99 %) of in-lab
cells, and uncertain cells (stage 2 answered ``Others``), are lifted into the
flagged band: ``threshold + (1 - threshold) x wrongness``, so they are
always flagged and still ranked among themselves (in another lab's folder,
where nearly every cell is novel, the ranking is the learned one). ``review``
is ``review_score >= threshold``, the threshold flagging ``target_rate`` (5 %)
of in-lab validation cells, lifted ones included.

Scorers fit without classes (and ``review.npz`` files from before the learned
combination) use the earlier rule: novelty and ambiguity (1 - top stage-1
probability) as percentiles among validation cells, score 0.98 x maximum +
0.02 x mean, 1.0 for uncertain cells.

Per folder, :func:`domain_shift` is the share of cells whose novelty is
above the 95th in-lab percentile (about 0.05 for images like the training
data) and warns when it is far above what the folder's answered classes lead to
expect: some classes are more often novel in-lab than others (PBC validation:
about a fifth of the erythroblasts, an eighth of the platelets), so the
expected share is the mean, over the folder's cells, of their answered class's
in-lab rate (:meth:`ReviewScorer.novel_rates`, 0.05 where unknown). Records
carry the novelty as a percentile (``Prediction.novelty``) and the answered
class, so the check runs on results files too.
In a model adapted to a new lab (:mod:`hiercell.adapt`), the cells its domain
gate gives to the adapted stages read their novelty percentile among the new
lab's labelled cells instead (``score(..., own_lab=)``), and their flag has a
threshold of the lab's own (:meth:`ReviewScorer.calibrate_own_lab`, from the
adaptation's cross-validation): their ``review_score`` is rescaled so that this
threshold lands on the bundle's, and ``review`` stays ``score >= threshold``;
when the adaptation had no subclass labels (stage 2 is the base's), their stage-2
``Others`` no longer lifts them into the flagged band.
"""

from __future__ import annotations

import math

import numpy as np

#: Share of in-lab validation cells flagged for review at the default threshold.
TARGET_RATE = 0.05
#: Nearest neighbours averaged in the novelty and class-distance signals.
K_NEIGHBOURS = 10
#: Legacy rule: weight of the mean of the two percentiles in the score (the rest is
#: their maximum).
MIX = 0.02
#: Cells more novel than this share of in-lab cells are always flagged.
NOVEL_GATE = 0.99
#: Domain-shift warning: share of novel cells that fires it in a folder expected to
#: have 0.05; any folder needs this minus 0.05 (0.10) above its expected share
#: (docs/experiments/mild_shift.py).
SHIFT_WARN_SHARE = 0.15
#: Fewest wrong (and right) validation answers the learned combination is fit on.
MIN_ANSWERS = 5
#: What the learned combination reads, in order (see :func:`neighbour_signals`).
SIGNALS = ("log_novelty", "log_class_distance_ratio", "neighbour_vote", "log_probability",
           "log_network_probability", "network_energy")
#: The signals of scorers fit without the network head's outputs (and of
#: ``review.npz`` files that do not name theirs).
SIGNALS_WITHOUT_NETWORK = SIGNALS[:4]
#: The network head's signals and the argument each is computed from.
_NETWORK_SIGNALS = {"log_network_probability": "network_proba",
                    "network_energy": "network_energy"}


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


def neighbour_signals(reference, reference_labels, queries, answers, k=K_NEIGHBOURS,
                      chunk=512) -> np.ndarray:
    """``(n, 3)`` float64: novelty, class distance ratio and neighbour vote (module doc).

    ``reference_labels``: class per reference row (``""``: no class); ``answers``: the
    answered class per query. An answer without reference cells is 1.0 away (the
    largest cosine distance between descriptors) and gets no votes.
    """
    reference = np.asarray(reference, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    labels = np.asarray(reference_labels, dtype=str)
    answers = np.asarray(answers, dtype=str)
    classes = [c for c in np.unique(labels) if c]
    k = int(min(k, len(reference)))
    out = np.empty((len(queries), 3), dtype=np.float64)
    for i in range(0, len(queries), chunk):
        dist = 1.0 - queries[i:i + chunk] @ reference.T
        ans = answers[i:i + chunk]
        near = np.argpartition(dist, k - 1, axis=1)[:, :k]
        own = np.ones(len(dist))
        other = np.ones(len(dist))
        for c in classes:
            cols = labels == c
            kc = int(min(k, cols.sum()))
            d_c = np.partition(dist[:, cols], kc - 1, axis=1)[:, :kc].mean(1)
            own = np.where(ans == c, d_c, own)
            other = np.where(ans != c, np.minimum(other, d_c), other)
        out[i:i + chunk, 0] = np.take_along_axis(dist, near, 1).mean(1)
        out[i:i + chunk, 1] = np.maximum(own, 1e-6) / np.maximum(other, 1e-6)
        out[i:i + chunk, 2] = (labels[near] == ans[:, None]).mean(1)
    return out


def review_inputs(decisions) -> dict:
    """What :meth:`ReviewScorer.score` (and :meth:`~ReviewScorer.wrongness_and_novelty`)
    read from routed decisions (:class:`hiercell.hierarchy.Decision`), by keyword: the
    answered main classes, their probabilities, and stage 1's network head probability
    of each answer and its energy (``None`` entries where the routing had no head)."""
    return {"answers": np.array([d.main for d in decisions]),
            "proba": np.array([d.main_p for d in decisions], dtype=np.float64),
            "network_proba": [d.network_p for d in decisions],
            "network_energy": [d.network_energy for d in decisions]}


def _percentile_of(sorted_ref: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Share of ``sorted_ref`` below each value, in [0, 1]."""
    return np.searchsorted(sorted_ref, values, side="right") / max(len(sorted_ref), 1)


class ReviewScorer:
    """Review score from trunk neighbours and stage-1 probabilities (see module doc).

    ``fit(reference, val_descriptors, val_top_proba, reference_labels, val_answers,
    val_proba, val_wrong, shifted, val_uncertain, val_network_proba, val_network_energy)``:
    ``reference``
    are training-cell descriptors (:func:`trunk_descriptor`) with their classes
    ``reference_labels``; the validation arrays (in-lab cells not in ``reference``)
    calibrate the novelty percentiles and the threshold, and with ``shifted``
    (tuples ``(descriptors, answers, proba, wrong[, network_proba[, network_energy]])``
    of shifted views) train the logistic regression: ``*_answers`` the answered main
    classes, ``*_proba`` their probabilities, ``*_network_proba`` the network head's
    probabilities of the same answers and ``*_network_energy`` its energy per cell
    (each given everywhere or nowhere: the scorer reads the signals of what was given,
    :attr:`signals_`; with neither, :data:`SIGNALS_WITHOUT_NETWORK`), ``*_wrong`` whether
    the answers are
    wrong; ``val_uncertain`` marks the validation cells stage 2 called ``Others``
    (flagged anyway: counted in the threshold's share). Without ``reference_labels``
    the legacy rule is fit (module doc).

    ``score(descriptors, top_proba, uncertain, answers, proba, network_proba=...,
    network_energy=...)``
    returns ``(review_score, novelty)``: novelty as its percentile among in-lab cells.

    Parameters
    ----------
    k : int
        Nearest neighbours per signal.
    target_rate : float
        Share of validation cells the threshold flags.
    novel_gate : float
        Novelty percentile above which a cell is always flagged.
    C : float
        Inverse regularisation of the logistic regression.
    """

    def __init__(self, k=K_NEIGHBOURS, target_rate=TARGET_RATE, novel_gate=NOVEL_GATE, C=1.0):
        self.k = k
        self.target_rate = target_rate
        self.novel_gate = novel_gate
        self.C = C

    @property
    def learned(self) -> bool:
        """Whether the learned combination is used (else the legacy rule)."""
        return getattr(self, "coef_", None) is not None

    def fit(self, reference, val_descriptors, val_top_proba, reference_labels=None,
            val_answers=None, val_proba=None, val_wrong=None, shifted=(), val_uncertain=None,
            val_network_proba=None, val_network_energy=None):
        self.reference_ = np.asarray(reference, dtype=np.float16)
        self.val_novelty_ = knn_distance(self.reference_, val_descriptors, self.k)
        self.val_ambiguity_ = 1.0 - np.asarray(val_top_proba, dtype=np.float32)
        self.val_answers_ = None if val_answers is None else np.asarray(val_answers).astype(str)
        if self.val_answers_ is not None and len(self.val_answers_) != len(self.val_novelty_):
            raise ValueError("val_answers must give one class per validation cell")
        self.extra_novelty_ = np.zeros(0, dtype=np.float32)
        self.reference_labels_ = self.coef_ = self.own_threshold_ = None
        self.own_lifts_uncertain_ = True
        n = len(self.val_novelty_)
        self.val_uncertain_ = (np.zeros(n, bool) if val_uncertain is None
                               else np.asarray(val_uncertain, bool))
        if reference_labels is not None:
            self._fit_combination(reference_labels, val_descriptors, val_answers, val_proba,
                                  val_wrong, shifted, val_network_proba, val_network_energy)
        self._calibrate()
        return self

    def _fit_combination(self, reference_labels, val_descriptors, val_answers, val_proba,
                         val_wrong, shifted, val_network_proba=None,
                         val_network_energy=None):
        """The logistic regression over :data:`SIGNALS` that predicts a wrong answer."""
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(reference_labels, dtype=str)
        if len(labels) != len(self.reference_):
            raise ValueError("reference_labels must give one class per reference row")
        if val_answers is None or val_proba is None or val_wrong is None:
            raise ValueError("the learned combination needs val_answers, val_proba and val_wrong")
        self.reference_labels_ = labels
        sets = [(val_descriptors, val_answers, val_proba, val_wrong, val_network_proba,
                 val_network_energy),
                *[(*v[:4], *(v[j] if len(v) > j else None for j in (4, 5))) for v in shifted]]
        self.signals_ = SIGNALS_WITHOUT_NETWORK
        for j, (name, argument) in enumerate(_NETWORK_SIGNALS.items(), start=4):
            given = [v[j] is not None for v in sets]
            if any(given) and not all(given):
                raise ValueError(f"give {argument} for the validation cells and every "
                                 "shifted view, or for none")
            if all(given):
                self.signals_ += (name,)
        S = [self.signals(d, a, p, q, e) for d, a, p, _, q, e in sets]
        y = np.concatenate([np.asarray(v[3], bool) for v in sets])
        if y.all() or not y.any():
            raise ValueError("the learned combination needs right and wrong answers")
        X = np.vstack(S)
        self.signal_mean_, self.signal_scale_ = X.mean(0), X.std(0) + 1e-9
        lr = LogisticRegression(C=self.C, max_iter=1000).fit(
            (X - self.signal_mean_) / self.signal_scale_, y)
        self.coef_, self.intercept_ = lr.coef_[0].astype(np.float64), float(lr.intercept_[0])
        self.val_signals_ = S[0]

    def signals(self, descriptors, answers, proba, network_proba=None,
                network_energy=None) -> np.ndarray:
        """``(n, len(signals_))`` signals per cell (the learned combination's input,
        :attr:`signals_`: the first four of :data:`SIGNALS` and the network signals
        the fit was given)."""
        return self._signals(self._neighbours(descriptors, answers), proba, network_proba,
                             network_energy)

    def _neighbours(self, descriptors, answers):
        return neighbour_signals(self.reference_, self.reference_labels_, descriptors,
                                 answers, self.k)

    def _signals(self, nb, proba, network_proba=None, network_energy=None):
        p = np.asarray(proba, dtype=np.float64)
        columns = [np.log(nb[:, 0] + 1e-6), np.log(nb[:, 1]), nb[:, 2],
                   np.log(np.clip(p, 0, 1) + 1e-4)]
        given = {"network_proba": network_proba, "network_energy": network_energy}
        for name in self.signals_[len(columns):]:
            values = given[_NETWORK_SIGNALS[name]]
            if values is None or any(v is None for v in values):
                raise ValueError(f"this review scorer needs {_NETWORK_SIGNALS[name]} "
                                 "(the network head's outputs per cell)")
            q = np.asarray(values, dtype=np.float64)
            columns.append(np.log(np.clip(q, 0, 1) + 1e-4)
                           if name == "log_network_probability" else q)
        return np.column_stack(columns)

    def decision_function(self, signals) -> np.ndarray:
        """The logistic regression's log-odds of a wrong answer from :meth:`signals`."""
        z = ((np.asarray(signals) - self.signal_mean_) / self.signal_scale_) @ self.coef_
        return z + self.intercept_

    def wrongness(self, signals) -> np.ndarray:
        """:meth:`decision_function` squashed into (0, 1) by ``0.5 + 0.5 z / (1 + |z|)``:
        monotone, 0.5 where the odds are even, and slow enough in the tails (float64)
        that cells far outside the in-lab range keep distinct, ordered scores."""
        z = self.decision_function(signals)
        return 0.5 + 0.5 * z / (1.0 + np.abs(z))

    def _calibrate(self):
        """Percentile tables and threshold from the validation cells."""
        self.novelty_ref_ = np.sort(np.concatenate([self.val_novelty_, self.extra_novelty_]))
        self.ambiguity_ref_ = np.sort(self.val_ambiguity_)
        nov = _percentile_of(self.novelty_ref_, self.val_novelty_)
        if not self.learned:
            score = self._combine(nov, _percentile_of(self.ambiguity_ref_, self.val_ambiguity_))
            self.threshold_ = float(np.quantile(score, 1.0 - self.target_rate))
            return
        # the threshold t flags target_rate of val: the lifted cells (novel beyond the
        # gate, or uncertain: always flagged) plus the others whose wrongness reaches t
        self.threshold_ = _threshold_for_rate(self.wrongness(self.val_signals_),
                                              (nov > self.novel_gate) | self.val_uncertain_,
                                              self.target_rate)

    @staticmethod
    def _combine(nov, amb):
        return (1.0 - MIX) * np.maximum(nov, amb) + MIX * 0.5 * (nov + amb)

    def novel_rates(self, novel_above=0.95, prior=20) -> dict | None:
        """Per answered main class, the share of in-lab validation cells more novel than
        ``novel_above`` of them (what :func:`domain_shift` expects of a folder of that
        class), shrunk towards ``1 - novel_above`` by ``prior`` cells of that rate (a
        guard for small validation sets; it pulls the rates a little towards the
        middle); ``None`` when the scorer does not know the validation cells' answers,
        or knows a new lab's cells (:meth:`with_reference`: their novelty is read among
        that lab's, so the training lab's rates do not apply to them)."""
        if self.val_answers_ is None or len(self.extra_novelty_):
            return None
        novel = _percentile_of(np.sort(self.val_novelty_), self.val_novelty_) > novel_above
        base = 1.0 - novel_above
        return {str(c): round(float((novel[self.val_answers_ == c].sum() + prior * base)
                                    / ((self.val_answers_ == c).sum() + prior)), 4)
                for c in np.unique(self.val_answers_)}

    def with_reference(self, descriptors, labels=None) -> "ReviewScorer":
        """A copy that also knows the cells ``descriptors`` (e.g. a new lab's labelled
        cells, classes ``labels``; ``None`` entries: no class): they join the reference,
        and their leave-one-out novelty joins the novelty distribution that percentiles
        are read from."""
        import copy

        new = copy.copy(self)
        new.own_threshold_, new.own_lifts_uncertain_ = None, True  # a new lab: calibrate again
        d = np.asarray(descriptors, dtype=np.float32)
        new.reference_ = np.concatenate([self.reference_, d.astype(np.float16)])
        if self.learned:
            if labels is None:
                raise ValueError("this scorer knows the reference cells' classes: give labels")
            labels = np.array(["" if c is None else str(c) for c in labels])
            new.reference_labels_ = np.concatenate([self.reference_labels_, labels])
        if len(d) > self.k:
            own = 1.0 - d @ d.T
            np.fill_diagonal(own, np.inf)
            old = 1.0 - d @ self.reference_.astype(np.float32).T
            both = np.concatenate([old, own], axis=1)
            loo = np.partition(both, self.k - 1, axis=1)[:, :self.k].mean(1)
            new.extra_novelty_ = np.concatenate([self.extra_novelty_, loo]).astype(np.float32)
            new._calibrate()
        return new

    def at_rate(self, rate) -> "ReviewScorer":
        """A copy whose threshold flags ``rate`` (0 < rate < 1) of the in-lab validation
        cells instead of :attr:`target_rate`. An adapted-to lab's own threshold
        (:meth:`calibrate_own_lab`) is kept: its cells' scores are rescaled onto the new
        threshold, so their flag does not change."""
        import copy

        rate = float(rate)
        if not 0.0 < rate < 1.0:
            raise ValueError(f"the review rate must be between 0 and 1, got {rate!r}")
        new = copy.copy(self)
        new.target_rate = rate
        new._calibrate()
        return new

    def calibrate_own_lab(self, wrongness, wrong, uncertain=None, lift_uncertain=True,
                          novel=None, min_rate=None) -> dict:
        """Set the flag's threshold for the adapted-to lab's cells (``own_lab`` rows of
        :meth:`score`) from out-of-fold answers on its labelled cells.

        ``wrongness``: :meth:`wrongness` of each held-out cell, scored by a model adapted
        without it; ``wrong``: whether that answer was wrong; ``uncertain``: whether stage
        2 answered ``Others``; ``novel``: whether the cell was beyond the novelty gate
        (both flagged anyway, so counted in the share). The lab's flagged share is as
        many as were wrong (at least ``min_rate``, default :attr:`target_rate`). Without
        ``lift_uncertain`` (stage 2 not adapted: its ``Others`` on the lab's cells says
        nothing of the main class) uncertain cells keep ``uncertain`` but are no longer
        lifted into the flagged band. Learned scorers only. Returns a JSON-ready summary.
        """
        if not self.learned:
            raise ValueError("only a learned review scorer can be calibrated to a lab")
        u = np.asarray(wrongness, dtype=np.float64)
        wrong = np.asarray(wrong, dtype=bool)
        none = np.zeros(len(u), bool)
        uncertain = none if uncertain is None else np.asarray(uncertain, bool)
        novel = none if novel is None else np.asarray(novel, bool)
        if not len(u) or not len(u) == len(wrong) == len(uncertain) == len(novel):
            raise ValueError("give one wrongness, wrong and uncertain flag per held-out cell")
        if not np.isfinite(u).all():
            raise ValueError("wrongness must be finite (leave out the cells not scored)")
        min_rate = self.target_rate if min_rate is None else float(min_rate)
        rate = float(max(min_rate, wrong.mean()))
        lifted = novel | (uncertain & bool(lift_uncertain))
        threshold = _threshold_for_rate(u, lifted, rate)
        flagged = lifted | (u >= threshold)
        auroc = None
        if wrong.any() and not wrong.all():
            from sklearn.metrics import roc_auc_score
            auroc = round(float(roc_auc_score(wrong, u)), 4)
        self.own_threshold_, self.own_lifts_uncertain_ = threshold, bool(lift_uncertain)
        return {"n": int(len(u)), "wrong": int(wrong.sum()), "min_flag_rate": round(min_rate, 4),
                "target_flag_rate": round(rate, 4), "uncertain": int(uncertain.sum()),
                "uncertain_flagged": bool(lift_uncertain), "novel": int(novel.sum()),
                "flagged": round(float(flagged.mean()), 4),
                "accuracy_unflagged": (round(float(1.0 - wrong[~flagged].mean()), 4)
                                       if (~flagged).any() else None),
                "auroc_wrong_vs_right": auroc}

    def _own_scale(self, u):
        """Rescale the lab's wrongness so that :attr:`own_threshold_` lands on
        :attr:`threshold_` (monotone, piecewise linear, within [0, 1])."""
        t, t_own = self.threshold_, self.own_threshold_
        if t_own is None or t >= 1.0:
            return u
        if t_own >= 1.0:  # nothing but lifted cells flagged
            return u * t
        if t_own <= 0.0:
            return t + (1.0 - t) * u
        return np.where(u < t_own, u * t / t_own, t + (1.0 - t) * (u - t_own) / (1.0 - t_own))

    def wrongness_and_novelty(self, descriptors, answers, proba, own_lab=None,
                              network_proba=None, network_energy=None):
        """``(wrongness, novelty percentile)`` per cell (learned scorers): :meth:`wrongness`
        of the cells' :meth:`signals` and the percentile :meth:`score` reads the novelty
        gate from, before the lab's rescaling and the lifting; one neighbour search."""
        nb = self._neighbours(descriptors, answers)
        nov = self._novelty_percentile(nb[:, 0].astype(np.float32), own_lab)
        return self.wrongness(self._signals(nb, proba, network_proba, network_energy)), nov

    def novelty(self, descriptors):
        """Raw novelty (mean cosine distance to the k nearest reference cells)."""
        return knn_distance(self.reference_, descriptors, self.k)

    def novelty_percentile(self, descriptors):
        """Each cell's novelty as its percentile among the in-lab validation cells (the
        ``novelty`` of :meth:`score` read against the training lab only, whatever lab's
        cells :meth:`with_reference` added), in [0, 1]."""
        return _percentile_of(np.sort(self.val_novelty_), self.novelty(descriptors))

    def _novelty_percentile(self, raw, own_lab=None):
        """Percentile of raw novelties among in-lab validation cells; rows of ``own_lab``
        (cells an adapted model answers as the new lab's) among the new lab's own
        leave-one-out novelties (:meth:`with_reference`), when it has more than 2k."""
        nov = _percentile_of(self.novelty_ref_, raw)
        if own_lab is not None and len(self.extra_novelty_) > 2 * self.k:
            own_lab = np.asarray(own_lab, bool)
            nov[own_lab] = _percentile_of(np.sort(self.extra_novelty_), raw[own_lab])
        return nov

    def score(self, descriptors, top_proba, uncertain=None, answers=None, proba=None,
              own_lab=None, network_proba=None, network_energy=None):
        """``(review_score, novelty)`` per cell, both in [0, 1]; ``novelty`` is the
        percentile of the cell's novelty among in-lab validation cells (for the rows of
        ``own_lab``, among the adapted-to lab's labelled cells). ``answers`` (the
        answered main classes) and ``proba`` (their probabilities) are needed by the
        learned combination, ``network_proba`` (the network head's probabilities of
        the same answers) and ``network_energy`` (its energy) by one fit with them
        (:attr:`signals_`). A cell with a signal that is not finite (NaN) scores 1:
        flagged."""
        if not self.learned:
            nov = self._novelty_percentile(self.novelty(descriptors), own_lab)
            amb = _percentile_of(self.ambiguity_ref_,
                                 1.0 - np.asarray(top_proba, dtype=np.float32))
            score = self._combine(nov, amb).astype(np.float32)
        else:
            if answers is None or proba is None:
                raise ValueError("this scorer needs the answered classes and their probabilities")
            u, nov = self.wrongness_and_novelty(descriptors, answers, proba, own_lab,
                                                network_proba, network_energy)
            if own_lab is not None and self.own_threshold_ is not None:
                own = np.asarray(own_lab, bool)
                u = np.where(own, self._own_scale(u), u)
            lifted = nov > self.novel_gate
            if uncertain is not None:
                unsure = np.asarray(uncertain, bool)
                if own_lab is not None and not self.own_lifts_uncertain_:
                    unsure = unsure & ~np.asarray(own_lab, bool)
                lifted |= unsure
            t = self.threshold_
            score = np.where(lifted, t + (1.0 - t) * u, u)
        if uncertain is not None and not self.learned:
            score = np.where(np.asarray(uncertain, bool), 1.0, score)
        score = np.where(np.isfinite(score), score, 1.0)  # a signal not computable: look
        return np.clip(score, 0.0, 1.0), nov.astype(np.float32)

    def flag(self, review_score):
        """``review_score >= threshold_``."""
        return np.asarray(review_score) >= self.threshold_

    def to_arrays(self) -> dict:
        out = {"reference": self.reference_,
               "val_novelty": self.val_novelty_.astype(np.float32),
               **({} if self.val_answers_ is None else {"val_answers": self.val_answers_}),
               "val_ambiguity": self.val_ambiguity_.astype(np.float32),
               "extra_novelty": self.extra_novelty_.astype(np.float32),
               "params": np.array([self.k, self.target_rate, self.novel_gate, self.C],
                                  dtype=np.float64)}
        if self.learned:
            out.update(reference_labels=self.reference_labels_.astype(str),
                       val_uncertain=self.val_uncertain_.astype(bool),
                       val_signals=self.val_signals_.astype(np.float64),
                       signal_mean=self.signal_mean_, signal_scale=self.signal_scale_,
                       coef=self.coef_, intercept=np.array([self.intercept_]),
                       signals=np.array(self.signals_, dtype=str))
            if self.own_threshold_ is not None:
                out["own_threshold"] = np.array([self.own_threshold_])
                out["own_lifts_uncertain"] = np.array([self.own_lifts_uncertain_])
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "ReviewScorer":
        """The scorer :meth:`to_arrays` saved (also files from before the learned
        combination: they keep the legacy rule)."""
        params = [float(v) for v in arrays["params"]]
        self = cls(k=int(params[0]), target_rate=params[1])
        if len(params) >= 4:
            self.novel_gate, self.C = params[2], params[3]
        self.reference_ = np.asarray(arrays["reference"], dtype=np.float16)
        self.val_novelty_ = np.asarray(arrays["val_novelty"], dtype=np.float32)
        self.val_ambiguity_ = np.asarray(arrays["val_ambiguity"], dtype=np.float32)
        self.extra_novelty_ = np.asarray(arrays["extra_novelty"], dtype=np.float32)
        self.val_answers_ = (np.asarray(arrays["val_answers"]).astype(str)
                             if "val_answers" in arrays else None)
        self.reference_labels_ = self.coef_ = self.own_threshold_ = None
        self.own_lifts_uncertain_ = True
        self.val_uncertain_ = np.zeros(len(self.val_novelty_), bool)
        if "coef" in arrays:
            self.reference_labels_ = np.asarray(arrays["reference_labels"]).astype(str)
            self.val_uncertain_ = np.asarray(arrays["val_uncertain"], dtype=bool)
            self.val_signals_ = np.asarray(arrays["val_signals"], dtype=np.float64)
            self.signal_mean_ = np.asarray(arrays["signal_mean"], dtype=np.float64)
            self.signal_scale_ = np.asarray(arrays["signal_scale"], dtype=np.float64)
            self.coef_ = np.asarray(arrays["coef"], dtype=np.float64)
            self.signals_ = (tuple(str(v) for v in arrays["signals"]) if "signals" in arrays
                             else SIGNALS_WITHOUT_NETWORK)
            if len(self.signals_) != len(self.coef_) or not set(self.signals_) <= set(SIGNALS):
                raise ValueError(f"review scorer signals {self.signals_} do not match its "
                                 f"{len(self.coef_)} weights, or are unknown here")
            self.intercept_ = float(np.asarray(arrays["intercept"]).ravel()[0])
            if "own_threshold" in arrays:
                self.own_threshold_ = float(np.asarray(arrays["own_threshold"]).ravel()[0])
                self.own_lifts_uncertain_ = bool(np.asarray(arrays["own_lifts_uncertain"]).ravel()[0])
        self._calibrate()
        return self


def _threshold_for_rate(wrongness, lifted, rate) -> float:
    """The threshold on ``wrongness`` that flags ``rate`` of the cells, counting the
    ``lifted`` ones (flagged anyway) first; 1.0 when they fill the share alone."""
    room = int(round(rate * len(wrongness))) - int(np.sum(lifted))
    rest = np.sort(np.asarray(wrongness)[~np.asarray(lifted, bool)])[::-1]
    return 1.0 if room <= 0 or not len(rest) else float(rest[min(room, len(rest)) - 1])


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


def records_novelty(records) -> tuple:
    """``(novelty percentiles, main classes)`` of classified records (anything with
    ``novelty`` and ``main_class``, e.g. :class:`hiercell.records.CellRecord`): what
    :func:`domain_shift` reads of a folder's cells."""
    records = list(records)
    return [r.novelty for r in records], [r.main_class for r in records]


def domain_shift(novelty, classes=None, class_rates=None, novel_above=0.95,
                 warn_share=SHIFT_WARN_SHARE, aligned=False) -> dict:
    """Folder-level domain check from the cells' novelty percentiles (``None`` skipped).

    ``score``: share of cells whose novelty is above ``novel_above`` (the
    in-lab 95th percentile: about 0.05 for images like the training data).
    ``expected``: the share in-lab cells of the same answered ``classes`` (one per
    cell) have, the mean of their ``class_rates`` (:meth:`ReviewScorer.novel_rates`;
    ``1 - novel_above`` for a class it lacks, or everywhere without them).
    ``warning`` when the score exceeds it by at least ``warn_share - (1 -
    novel_above)`` (0.10) and significantly (one-sided binomial tail at the expected
    share below 0.001: for cells of unequal rates a conservative bound, Hoeffding
    1956), so a few odd cells in a small folder, or a folder of one often-novel
    class, do not fire it. ``class_rates`` must be computed at the same
    ``novel_above``.
    """
    novelty = list(novelty)
    if classes is not None and len(classes) != len(novelty):
        raise ValueError(f"{len(classes)} classes for {len(novelty)} novelty values")
    base = 1.0 - novel_above
    rates = class_rates or {}
    pairs = [(v, None if classes is None else classes[i]) for i, v in enumerate(novelty)
             if v is not None]
    values = np.array([v for v, _ in pairs], dtype=np.float64)
    n = int(len(values))
    if n == 0:
        return {"score": None, "expected": None, "warning": False, "n": 0,
                "message": "no cell with a novelty score: no domain check"}
    k = int(np.count_nonzero(values > novel_above))
    share = k / n
    expected = float(np.mean([rates.get(c, base) for _, c in pairs]))
    tail = _binomial_tail(n, k, expected)
    warning = bool(share - expected >= warn_share - base and tail < 1e-3)
    if warning:
        advice = ("the model was aligned to them without labels; label a few dozen cells "
                  "and run `hiercell adapt` for more" if aligned else
                  "see `hiercell align` (no labels) and `hiercell adapt` (a few labelled cells)")
        message = (f"these images look unlike the training data (score {share:.2f}: "
                   f"{k} of {n} cells are novel): expect lower accuracy; {advice}")
    else:
        message = (f"images look like the training data (score {share:.2f}: {k} of {n} cells "
                   f"novel, {expected:.2f} expected in-lab of the classes answered)")
    return {"score": round(share, 4), "expected": round(expected, 4), "warning": warning,
            "n": n, "message": message}


def reference_draw(n, max_reference=4000, seed=0) -> np.ndarray:
    """Sorted indices of the at most ``max_reference`` of ``n`` training cells that
    :func:`fit_reviewer` draws as its reference (so that only those need trunk maps)."""
    return np.sort(np.random.default_rng(seed).permutation(int(n))[:max_reference])


def fit_reviewer(hierarchy, X, reference_rows, val_rows, max_reference=4000, seed=0,
                 labels=None, shifted=()) -> ReviewScorer:
    """A :class:`ReviewScorer` for ``hierarchy`` from trunk maps ``X``: at most
    ``max_reference`` of the training cells ``reference_rows`` (drawn at random:
    :func:`reference_draw`) are the reference, the validation cells ``val_rows``
    calibrate percentiles and threshold.

    With ``labels`` (main class per row of ``X``) the learned combination is fit on the
    validation cells and on ``shifted``: trunk maps of shifted views of the validation
    cells, one array per view, rows in the order of ``val_rows``; without labels, or
    with fewer than :data:`MIN_ANSWERS` wrong (or right) answers among them, the legacy
    rule.
    """
    reference_rows = np.asarray(reference_rows)
    val_rows = np.asarray(val_rows)
    pick = reference_draw(len(reference_rows), max_reference, seed)
    reference = trunk_descriptor(X[reference_rows[pick]])
    X_val = X[val_rows]
    p1 = hierarchy.stage_proba(1, X_val)
    if labels is None:
        answers = review_inputs(hierarchy.decide(X_val)[1])["answers"]
        return ReviewScorer().fit(reference, trunk_descriptor(X_val), p1.max(1),
                                  val_answers=answers)
    labels = np.array(["" if c is None else str(c) for c in labels])
    truth = labels[val_rows]
    (d, answers, proba, wrong, network, energy, uncertain), *views = [
        _answers(hierarchy, maps, truth) for maps in [X_val, *shifted]]
    n_wrong = int(wrong.sum() + sum(v[3].sum() for v in views))
    if min(n_wrong, len(wrong) + sum(len(v[3]) for v in views) - n_wrong) < MIN_ANSWERS:
        return ReviewScorer().fit(reference, d, p1.max(1), val_answers=answers)  # too few
    return ReviewScorer().fit(reference, d, p1.max(1), labels[reference_rows[pick]], answers,
                              proba, wrong, shifted=[v[:6] for v in views],
                              val_uncertain=uncertain, val_network_proba=network,
                              val_network_energy=energy)


def _answers(hierarchy, maps, truth):
    """``(descriptors, answered main classes, their probabilities, wrong, the network
    head's probabilities of them, its energy, uncertain)`` of trunk maps."""
    _, decisions = hierarchy.decide(maps)
    given = review_inputs(decisions)
    answers = given["answers"]
    uncertain = np.array([d.uncertain for d in decisions])
    return (trunk_descriptor(maps), answers, given["proba"], answers != truth,
            given["network_proba"], given["network_energy"], uncertain)
