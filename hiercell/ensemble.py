"""Stages that answer together: the mean of their outputs.

``hiercell adapt`` adapts both stage-1 networks of a base model that has an in-lab
stage 1 (its main, augmented stage 1 and the in-lab one) and keeps both:
:class:`StageEnsemble` answers with the mean of the two adapted stages' outputs
(on 20 labelled cells per class: ``docs/adapt.md``). It stands where a
:class:`hiercell.stage.StageClassifier` stands in a
:class:`hiercell.hierarchy.HierarchicalClassifier`; bundles store its members
(:mod:`hiercell.bundle`).
"""

from __future__ import annotations

import numpy as np

from .stage import StageOutputs


class StageEnsemble:
    """Fitted stages on the same trunk features, answering with the mean of their outputs.

    Parameters
    ----------
    members : sequence of fitted :class:`~hiercell.stage.StageClassifier`
        At least one; all with the same ``classes_`` in the same order.

    Input ``X``: trunk features ``(n, h, w, 512)``, as for a stage.
    """

    def __init__(self, members):
        members = list(members)
        if not members:
            raise ValueError("a stage ensemble needs at least one member")
        classes = [str(c) for c in members[0].classes_]
        for i, member in enumerate(members[1:], 1):
            if [str(c) for c in member.classes_] != classes:
                raise ValueError(f"member {i} has classes {list(member.classes_)}, member 0 "
                                 f"{classes}: an ensemble's members must share their classes")
        self.members = members

    @property
    def classes_(self):
        """The members' classes."""
        return self.members[0].classes_

    def predict_outputs(self, X) -> StageOutputs:
        """:class:`~hiercell.stage.StageOutputs` of trunk features ``X``: the mean over the
        members of their probabilities, network head softmax and network energy."""
        outputs = [member.predict_outputs(X) for member in self.members]
        return StageOutputs(*(np.mean([np.asarray(o[k], np.float64) for o in outputs], axis=0)
                              for k in range(len(StageOutputs._fields))))

    def predict_proba(self, X):
        """Class probabilities ``(n, n_classes)``: the mean of the members'."""
        return self.predict_outputs(X).proba

    def svm_proba(self, X):
        """The mean of the members' calibrated SVM probabilities ``(n, n_classes)``."""
        return np.mean([member.svm_proba(X) for member in self.members], axis=0)

    def predict(self, X):
        """Most probable class per row of :meth:`predict_proba`."""
        return self.classes_[self.predict_proba(X).argmax(1)]
