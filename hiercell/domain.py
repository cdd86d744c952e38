"""Which lab does a cell look like? The domain gate of an adapted model.

An adapted bundle (``hiercell adapt``) keeps its base model beside the adapted
stages. :class:`DomainGate` decides per cell which of the two answers: a
logistic regression on the trunk descriptor of :mod:`hiercell.review` (frozen
ImageNet block4 statistics of the cell, which differ sharply between labs'
stains, cameras and scales) separating the base model's training cells from
the new lab's cells, each side weighing the same. A cell like the new lab's
goes to the adapted stages, a cell like the base's training lab to the base
model, so adapting to one lab does not cost accuracy on the other.
"""

from __future__ import annotations

import numpy as np


class DomainGate:
    """Logistic regression on trunk descriptors: target lab (1) against source (0).

    ``fit(source, target)`` takes ``(n, d)`` descriptors of each side;
    ``predict_proba(descriptors)`` gives ``(n,)`` probabilities of the target lab,
    ``predict(descriptors)`` whether that probability reaches ``threshold``.

    Parameters
    ----------
    C : float
        Inverse L2 regularisation strength of the logistic regression.
    threshold : float
        Probability of the target lab from which a cell goes to the adapted stages.
    """

    def __init__(self, C=1.0, threshold=0.5):
        self.C = C
        self.threshold = threshold

    def fit(self, source, target):
        from sklearn.linear_model import LogisticRegression

        source = np.asarray(source, dtype=np.float32)
        target = np.asarray(target, dtype=np.float32)
        if not len(source) or not len(target):
            raise ValueError("the domain gate needs cells of both labs")
        X = np.concatenate([source, target])
        y = np.r_[np.zeros(len(source)), np.ones(len(target))]
        lr = LogisticRegression(C=self.C, class_weight="balanced", max_iter=5000).fit(X, y)
        self.coef_ = lr.coef_[0].astype(np.float32)
        self.intercept_ = float(lr.intercept_[0])
        return self

    def predict_proba(self, descriptors) -> np.ndarray:
        """Probability that each cell comes from the target lab, ``(n,)`` float32."""
        z = np.asarray(descriptors, dtype=np.float32) @ self.coef_ + self.intercept_
        return (1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))).astype(np.float32)

    def predict(self, descriptors) -> np.ndarray:
        """``True`` where a cell goes to the adapted stages."""
        return self.predict_proba(descriptors) >= self.threshold

    def to_arrays(self) -> dict:
        return {"coef": self.coef_, "intercept": np.array([self.intercept_]),
                "params": np.array([self.C, self.threshold], dtype=np.float64)}

    @classmethod
    def from_arrays(cls, arrays) -> "DomainGate":
        C, threshold = (float(v) for v in arrays["params"][:2])
        gate = cls(C=C, threshold=threshold)
        gate.coef_ = np.asarray(arrays["coef"], dtype=np.float32)
        gate.intercept_ = float(np.asarray(arrays["intercept"]).ravel()[0])
        return gate
