"""The two-stage classifier over trunk features: stage 1 for 8 main classes, stage 2
for neutrophils and IGs.

Routing rules (:func:`route`):

* stage 1 (8 main classes) runs on every cell;
* stage 2 (BNE, SNE, MY, MMY, PMY, Others) runs only where stage 1 says
  ``neutrophil`` or ``ig``;
* a stage-2 subclass is the cell's label, and its main class follows from it
  (BNE/SNE -> neutrophil, MY/MMY/PMY -> ig): stage 2 is the specialist for the
  neutrophil/IG boundary, so it may move a cell across it;
* stage 2 answering ``Others`` hands the decision back to stage 1: the label
  is stage 1's main class and the cell is marked ``uncertain``;
* where stage 2 may not cross that boundary (``crossing`` false: an adapted
  model's cells when its stage 2 is still the base's, see
  :class:`HierarchicalClassifier`), a subclass of the other main class is
  treated as ``Others``: stage 1's main class stands, the cell is ``uncertain``.

End-to-end probabilities over the 11 fine classes (:func:`combine_probabilities`):
non-routed main classes keep their stage-1 probability; the stage-1 mass of
neutrophil + ig is shared among the five subclasses in proportion to stage 2's
probabilities renormalised without ``Others``; where stage 2 may not cross, each of
the two main classes' stage-1 mass is shared among its own subclasses instead.

Images are the business of :class:`hiercell.model.ImageClassifier` (what
:func:`hiercell.load` returns), which runs the VGG16 trunk and then this class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from .records import Prediction
from .taxonomy import FINE_CLASSES, MAIN_CLASSES, OTHERS, ROUTED_MAIN, SUB_TO_MAIN

#: Novelty percentile (among in-lab validation cells) at or below which a cell goes to the
#: in-lab stage 1 (:attr:`HierarchicalClassifier.inlab`): the domain check's line. On the
#: PBC test split 94.7 % of the cells, on two other labs' sets none
#: (docs/experiments/novelty_gated_specialist.py).
INLAB_GATE = 0.95


@dataclass
class Decision:
    """What the routing rules decided for one cell."""

    main: str
    main_p: float
    sub: str | None = None
    sub_p: float | None = None
    uncertain: bool = False
    network_p: float | None = None  # stage 1's network head on ``main`` (review signal)
    network_energy: float | None = None  # that head's free energy (review signal)

    @property
    def label(self) -> str:
        """The finest class decided: the subclass, or the main class."""
        return self.sub if self.sub not in (None, OTHERS) else self.main


class HierarchicalClassifier(ClassifierMixin, BaseEstimator):
    """Stage 1 + stage 2 over trunk features ``(n, h, w, 512)``, with scikit-learn meanings.

    ``predict`` gives the finest label per row, ``predict_proba`` the end-to-end
    probabilities over :attr:`classes_`, and :meth:`predict_records` one
    :class:`~hiercell.records.Prediction` per row (label, probabilities, top-k,
    uncertain flag).

    Parameters
    ----------
    stage1, stage2 : StageClassifier
        Fitted stages; ``stage2`` may be ``None`` (then no subclasses).
    reviewer : ReviewScorer or None
        Fills the records' ``review_score``, ``review`` and ``novelty`` (see
        :mod:`hiercell.review`); ``None`` leaves them empty.
    base : HierarchicalClassifier or None
        An adapted model's base model (see :mod:`hiercell.adapt`): it answers for
        the cells that ``gate`` sends back to the base's training lab.
    gate : DomainGate or None
        Picks, per cell, the adapted stages or ``base`` (:mod:`hiercell.domain`).
    alignment : LabAlignment or None
        Shifts the trunk features of a new lab's cells before this model's own stages
        (:mod:`hiercell.alignment`; the identity until fitted to a lab); ``base``, the
        domain gate and the novelty of the review score see them unshifted.
    inlab : StageClassifier or None
        A second stage 1 for the cells that look like the training lab's (novelty
        percentile of the review scorer at most ``inlab_gate``): a stage chosen for
        in-lab accuracy on the same trunk and frame. Other cells, and every cell
        without a reviewer, get :attr:`stage1`. Its rows see the trunk maps unshifted
        (they look like the training lab's), in a model aligned to a lab too
        (``alignment`` fitted: a folder classify aligned because its domain check
        warned, or a ``hiercell align`` bundle), whose other cells get the aligned
        :attr:`stage1` (stage 2 likewise reads those cells unshifted). In an adapted model it answers only among the cells the
        domain gate hands to ``base``: the new lab's cells get the adapted stage 1.
    inlab_gate : float
        That novelty percentile (:data:`INLAB_GATE`: the domain check's line).
    stage2_crossing : bool
        Whether stage 2 may move a cell answered by this model's own stages across the
        neutrophil/IG boundary (the routing rules above). ``hiercell adapt`` sets it
        false when the adaptation data has no subclass labels: the adapted stage 1
        has learned the lab's neutrophils and IGs, the kept stage 2 has not (on
        another lab's neutrophils it calls some immature: a false left shift). Cells
        the gate hands to ``base`` are routed by the base's rules.
    """

    def __init__(self, stage1=None, stage2=None, reviewer=None, base=None, gate=None,
                 alignment=None, stage2_crossing=True, inlab=None, inlab_gate=None):
        self.stage1 = stage1
        self.stage2 = stage2
        self.reviewer = reviewer
        self.base = base
        self.gate = gate
        self.alignment = alignment
        self.stage2_crossing = stage2_crossing
        self.inlab = inlab
        self.inlab_gate = inlab_gate

    @property
    def classes_(self):
        """The end-to-end classes: 6 main classes + 5 subclasses (the 8 main
        classes for a model without stage 2)."""
        return np.array(FINE_CLASSES if self.stage2 is not None else MAIN_CLASSES)

    @property
    def adapted(self) -> bool:
        """Whether this is an adapted model (a domain gate and a base to fall back to)."""
        return self.gate is not None and self.base is not None

    def adapted_rows(self, X):
        """``True`` for the rows of ``X`` answered by this model's own (adapted) stages,
        ``False`` for those the domain gate hands to :attr:`base`; all ``True`` without
        a gate."""
        if not self.adapted:
            return np.ones(len(X), dtype=bool)
        from .review import trunk_descriptor

        return self.gate.predict(trunk_descriptor(X))

    def inlab_rows(self, X, own=None):
        """``True`` for the rows of trunk maps ``X`` that :attr:`inlab` answers at stage 1:
        novelty percentile (:meth:`~hiercell.review.ReviewScorer.novelty_percentile`) at
        most :attr:`inlab_gate`, and in an adapted model only among the rows its domain
        gate hands to the base (``own`` false: :meth:`adapted_rows`); all ``False``
        without ``inlab`` or a reviewer. The novelty reads ``X`` unshifted, in a model
        aligned to a lab too."""
        if self.inlab is None or self.reviewer is None or not len(X):
            return np.zeros(len(X), dtype=bool)
        from .review import trunk_descriptor

        gate = INLAB_GATE if self.inlab_gate is None else self.inlab_gate
        rows = self.reviewer.novelty_percentile(trunk_descriptor(X)) <= gate
        if self.adapted:
            rows &= ~(self.adapted_rows(X) if own is None else np.asarray(own, bool))
        return rows

    def aligned(self, X):
        """Trunk features ``X`` as the stages see them: shifted by :attr:`alignment` when it
        is fitted to a lab, else unchanged."""
        return X if self.alignment is None else self.alignment.transform(X)

    def stage_proba(self, number, X, own=None):
        """Probabilities of stage ``number`` (1 or 2) over that stage's ``classes_``, each
        row from the adapted stage or the base's as the gate decides (``own``: the
        :meth:`adapted_rows` mask, when already known)."""
        return self._stage_outputs(number, X, own)[0]

    def _stage_outputs(self, number, X, own=None, inlab=None):
        """The tuple ``(probabilities, network head probabilities, network energy)`` of
        stage ``number`` (the fields of :class:`hiercell.stage.StageOutputs`;
        probabilities over its ``classes_``), rows answered as :meth:`stage_proba` says
        (``inlab``: the :meth:`inlab_rows` mask, when already known)."""
        stage = self.stage1 if number == 1 else self.stage2
        own = self.adapted_rows(X) if own is None else own
        fallback = None if self.base is None else (self.base.stage1 if number == 1
                                                   else self.base.stage2)
        if number == 1:
            inlab = self.inlab_rows(X, own) if inlab is None else inlab
            parts = ((own & ~inlab, stage, True), (~own & ~inlab, fallback, False),
                     (inlab, self.inlab, False))
        else:  # in an aligned model stage 2 reads the in-lab cells unshifted too (in an
            # adapted one they are among the base's rows, unshifted anyway)
            if getattr(self.alignment, "fitted", False):
                inlab = own & (self.inlab_rows(X, own) if inlab is None else inlab)
            else:
                inlab = np.zeros(len(X), dtype=bool)
            parts = ((own & ~inlab, stage, True), (~own, fallback, False), (inlab, stage, False))
        if own.all() and not inlab.any():
            return tuple(stage.predict_outputs(self.aligned(X)))
        want = [str(c) for c in stage.classes_]
        proba, net = np.empty((len(X), len(want))), np.empty((len(X), len(want)))
        energy = np.empty(len(X))
        for rows, model, aligned in parts:
            if rows.any():
                X_rows = self.aligned(X[rows]) if aligned else X[rows]
                p, q, e = model.predict_outputs(X_rows)
                proba[rows] = _reorder(p, model.classes_, want)
                net[rows] = _reorder(q, model.classes_, want)
                energy[rows] = e
        return proba, net, energy

    def predict_stage(self, number, X):
        """Most probable class of stage ``number`` per row (the stage alone, as trained:
        stage 2 on every row given)."""
        X = self._checked(X)
        stage = self.stage1 if number == 1 else self.stage2
        return stage.classes_[self.stage_proba(number, X).argmax(1)]

    def _checked(self, X):
        """:func:`check_features` with stage 1's row shape, where it knows one."""
        return check_features(X, getattr(self.stage1, "feature_shape_", None))

    def _stage_probas(self, X, own=None):
        """``(p1, p2, n1)``: stage-1 probabilities over :data:`MAIN_CLASSES`, stage 2's
        over its classes (NaN rows where it did not run; ``None`` without stage 2), and
        stage 1's network head outputs ``(probabilities over MAIN_CLASSES, energy)``."""
        own = self.adapted_rows(X) if own is None else own
        inlab = self.inlab_rows(X, own)  # once for both stages: a neighbour search
        proba, network, energy = self._stage_outputs(1, X, own, inlab)
        p1, net1 = (_reorder(p, self.stage1.classes_, MAIN_CLASSES) for p in (proba, network))
        n1 = (net1, energy)
        if self.stage2 is None:
            return p1, None, n1
        p2 = np.full((len(X), len(self.stage2.classes_)), np.nan)
        routed = np.isin(np.asarray(MAIN_CLASSES)[p1.argmax(1)], ROUTED_MAIN)
        if routed.any():
            p2[routed] = self._stage_outputs(2, X[routed], own[routed], inlab[routed])[0]
        return p1, p2, n1

    def _stage2_classes(self):
        return [str(c) for c in self.stage2.classes_] if self.stage2 is not None else []

    def _crossing(self, own):
        """Per row, whether stage 2 may move the cell across the neutrophil/IG boundary:
        everywhere with :attr:`stage2_crossing`, else only on the rows the base answers
        (``own`` false)."""
        return np.ones(len(own), dtype=bool) if self.stage2_crossing else ~np.asarray(own)

    def predict_proba(self, X):
        """End-to-end probabilities over :attr:`classes_`, ``(n, 11)`` (``(n, 8)`` without
        stage 2); rows sum to 1."""
        X = self._checked(X)
        own = self.adapted_rows(X)
        p1, p2, _ = self._stage_probas(X, own)
        return combine_probabilities(p1, p2, self._stage2_classes(), self._crossing(own))

    def predict(self, X):
        """The finest decided label per row, by the routing rules (:func:`route`): a
        member of :attr:`classes_`, or, for a cell stage 2 answered ``Others`` (an
        ``uncertain`` one), its stage-1 main class ``neutrophil`` or ``ig``, which is
        no column of :meth:`predict_proba`. As with scikit-learn's
        ``SVC(probability=True)``, the decision can differ from the argmax of
        :meth:`predict_proba` (the combination described in the module doc)."""
        return np.array([d.label for d in self.decide(X)[1]], dtype=object)

    def predict_records(self, X, paths=None, top_k=3):
        """One :class:`~hiercell.records.Prediction` per row of ``X``.

        ``probability`` is the end-to-end probability of ``label`` when it is a
        subclass, and stage 1's probability of the main class otherwise: the
        end-to-end one for a class stage 2 does not see, and for an ``uncertain``
        neutrophil or ig no column of :meth:`predict_proba` at all (:meth:`predict`).
        """
        X = self._checked(X)
        own = self.adapted_rows(X)  # the gate decides once for both stages and the review
        p1, p2, n1 = self._stage_probas(X, own)
        s2 = self._stage2_classes()
        crossing = self._crossing(own)
        fine = combine_probabilities(p1, p2, s2, crossing)
        classes = [str(c) for c in self.classes_]
        paths = list(paths) if paths is not None else [None] * len(X)
        decisions = route(p1, p2, s2, n1, crossing)
        review = self.review_scores(X, p1, decisions, own)
        out = []
        for i, d in enumerate(decisions):
            order = np.argsort(-fine[i])[:top_k]
            prob = fine[i, classes.index(d.label)] if d.label == d.sub else d.main_p
            rec = Prediction(
                path=None if paths[i] is None else str(paths[i]), label=d.label,
                probability=float(prob), main_class=d.main, main_probability=d.main_p,
                subclass=d.sub, subclass_probability=d.sub_p,
                top=[(classes[j], float(fine[i, j])) for j in order], uncertain=d.uncertain)
            if review is not None:
                rec.review_score = float(review[0][i])
                rec.review = bool(review[1][i])
                rec.novelty = float(review[2][i])
            out.append(rec)
        return out

    def decide(self, X):
        """``(p1, decisions)``: stage-1 probabilities over :data:`MAIN_CLASSES` and one
        routed :class:`Decision` per row of ``X``."""
        X = self._checked(X)
        own = self.adapted_rows(X)
        p1, p2, n1 = self._stage_probas(X, own)
        return p1, route(p1, p2, self._stage2_classes(), n1, self._crossing(own))

    def review_scores(self, X, p1=None, decisions=None, own=None):
        """``(review_score, review, novelty)`` arrays for trunk features ``X`` (see
        :mod:`hiercell.review`), or ``None`` without a reviewer; ``p1`` and ``decisions``
        as :meth:`decide` gives them, ``own`` as :meth:`adapted_rows` (computed when not
        given)."""
        if self.reviewer is None:
            return None
        from .review import review_inputs, trunk_descriptor

        if p1 is None or decisions is None:
            p1, decisions = self.decide(X)
        if self.adapted and own is None:
            own = self.adapted_rows(X)
        score, novelty = self.reviewer.score(
            trunk_descriptor(X), p1.max(1), [d.uncertain for d in decisions],
            own_lab=own if self.adapted else None, **review_inputs(decisions))
        return score, self.reviewer.flag(score), novelty


def check_features(X, shape=None) -> np.ndarray:
    """``X`` as a batch of trunk features, ``(n,) + shape`` (``shape``: one row's, e.g.
    ``(h, w, c)``; any when ``None``), numeric and finite, else ``ValueError`` saying what
    is wrong (NaN features would still get an answer)."""
    X = np.asarray(X)
    want = "(n, ...)" if shape is None else f"(n, {', '.join(map(str, shape))})"
    if X.ndim < 2 or not np.issubdtype(X.dtype, np.number) or (
            shape is not None and X.shape[1:] != tuple(shape)):
        raise ValueError(f"expected trunk features of shape {want}, got shape {X.shape} and "
                         f"dtype {X.dtype} (model.features(images) gives them)")
    if not np.isfinite(X).all():
        raise ValueError(f"trunk features hold {int((~np.isfinite(X)).sum())} NaN or infinite "
                         "value(s)")
    return X


def route(p1, p2, stage2_classes, network1=None, crossing=None) -> list:
    """Apply the routing rules to stage-1 probabilities ``p1`` (over :data:`MAIN_CLASSES`)
    and stage-2 probabilities ``p2`` (over ``stage2_classes``; rows of NaN, or ``None``,
    where stage 2 did not run); one :class:`Decision` per row. ``network1``, stage 1's
    network head outputs ``(probabilities as p1, energy per row)``, gives each decision's
    ``network_p`` and ``network_energy``. ``crossing``: per row, whether stage 2 may move
    the cell across the neutrophil/IG boundary (``None``: everywhere); where it may not,
    a subclass of the other main class counts as ``Others``, whose probability is then
    stage 2's mass outside the main class's own subclasses."""
    s2 = list(stage2_classes)
    decisions = []
    for i in range(len(p1)):
        m = int(p1[i].argmax())
        d = Decision(MAIN_CLASSES[m], float(p1[i, m]))
        if d.main in ROUTED_MAIN and s2 and p2 is not None and not np.isnan(p2[i]).any():
            k = int(p2[i].argmax())
            d.sub, d.sub_p = s2[k], float(p2[i, k])
            if d.sub != OTHERS and SUB_TO_MAIN[d.sub] != d.main and crossing is not None \
                    and not crossing[i]:
                kept = sum(float(p2[i, j]) for j, c in enumerate(s2) if SUB_TO_MAIN.get(c) == d.main)
                d.sub, d.sub_p = OTHERS, 1.0 - kept
            if d.sub == OTHERS:
                d.uncertain = True
            else:
                d.main = SUB_TO_MAIN[d.sub]
                d.main_p = float(p1[i, MAIN_CLASSES.index(d.main)])
        if network1 is not None:
            d.network_p = float(network1[0][i, MAIN_CLASSES.index(d.main)])
            d.network_energy = float(network1[1][i])
        decisions.append(d)
    return decisions


def combine_probabilities(p1, p2, stage2_classes, crossing=None):
    """End-to-end probabilities over :data:`FINE_CLASSES` from the stage probabilities
    (see the module doc); ``p1`` itself when there is no stage 2. ``crossing`` as in
    :func:`route` (``None``: stage 2 may cross everywhere)."""
    s2 = list(stage2_classes)
    if p2 is None or not s2:
        return p1
    out = np.zeros((len(p1), len(FINE_CLASSES)))
    main_idx = {c: i for i, c in enumerate(MAIN_CLASSES)}
    routed_mass = sum(p1[:, main_idx[c]] for c in ROUTED_MAIN)
    ran = ~np.isnan(p2).any(1)
    crossing = np.ones(len(p1), dtype=bool) if crossing is None else np.asarray(crossing, bool)
    subs = [c for c in s2 if c != OTHERS]
    sub_p = p2[:, [s2.index(c) for c in subs]]
    denom = np.maximum(sub_p.sum(1), 1e-12)
    kin = {parent: [k for k, c in enumerate(subs) if SUB_TO_MAIN[c] == parent]
           for parent in ROUTED_MAIN}
    within = {parent: np.nansum(sub_p[:, kids], 1) for parent, kids in kin.items()}
    for j, c in enumerate(FINE_CLASSES):
        if c in main_idx:
            out[:, j] = p1[:, main_idx[c]]
    for k, c in enumerate(subs):
        parent = SUB_TO_MAIN[c]
        # each parent's mass among its own kids (an even split where stage 2 gave them none)
        own_share = np.where(within[parent] > 1e-12,
                             sub_p[:, k] / np.maximum(within[parent], 1e-12),
                             1.0 / len(kin[parent]))
        shared = np.where(crossing, routed_mass * sub_p[:, k] / denom,
                          p1[:, main_idx[parent]] * own_share)
        out[:, FINE_CLASSES.index(c)] = np.where(ran, shared, 0.0)
    # cells where stage 2 did not run: each parent's stage-1 mass is split evenly
    # over its subclasses (keeps rows summing to 1)
    for parent in ROUTED_MAIN:
        kids = [c for c in subs if SUB_TO_MAIN[c] == parent]
        for c in kids:
            out[~ran, FINE_CLASSES.index(c)] = p1[~ran, main_idx[parent]] / len(kids)
    return out


def _reorder(proba, have, want):
    """Columns of ``proba`` (ordered as ``have``) rearranged to ``want`` (missing -> 0)."""
    have = [str(c) for c in have]
    out = np.zeros((len(proba), len(want)))
    for j, c in enumerate(want):
        if c in have:
            out[:, j] = proba[:, have.index(c)]
    return out
