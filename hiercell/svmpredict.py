"""A stage's calibrated RBF SVM, predicted with the kernel as one matrix product.

scikit-learn's libsvm evaluates the RBF kernel one support vector at a time on one
core; with thousands of 1024-d support vectors that was 16 % of classifying's
inference time (the trunk 65 %). :func:`predict_proba` gives the same probabilities (float64; equal to
scikit-learn's within rounding, checked in the tests) with the kernel as a BLAS
product, for the pipeline :meth:`hiercell.stage.StageClassifier.fit_svm_embeddings`
fits: ``StandardScaler`` then ``CalibratedClassifierCV(SVC(kernel="rbf"),
method="sigmoid", ensemble=False)`` over three or more classes. Any other pipeline
goes to its own ``predict_proba``.
"""

from __future__ import annotations

import numpy as np


def _parts(pipeline):
    """``(scaler, calibrated classifier, svc)`` of the supported pipeline, else ``None``."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    steps = [step for _, step in getattr(pipeline, "steps", ())]
    if len(steps) != 2 or not isinstance(steps[0], StandardScaler) \
            or not isinstance(steps[1], CalibratedClassifierCV) \
            or len(getattr(steps[1], "calibrated_classifiers_", ())) != 1:
        return None
    calibrated = steps[1].calibrated_classifiers_[0]
    svc = calibrated.estimator
    if type(svc) is not SVC or svc.kernel != "rbf" or calibrated.method != "sigmoid" \
            or len(svc.classes_) < 3 or svc.decision_function_shape != "ovr" \
            or not isinstance(svc.support_vectors_, np.ndarray):
        return None
    return steps[0], calibrated, svc


def ovo_decision(svc, X: np.ndarray) -> np.ndarray:
    """libsvm's one-vs-one decision values ``(n, k(k-1)/2)`` of a fitted RBF ``SVC``
    on (scaled) ``X``, pairs in libsvm's order ``(0,1), (0,2), ..., (k-2,k-1)``."""
    X = np.asarray(X, np.float64)
    sv = svc.support_vectors_
    d2 = (X * X).sum(1)[:, None] + (sv * sv).sum(1)[None, :] - 2.0 * (X @ sv.T)
    kernel = np.exp(-svc._gamma * np.maximum(d2, 0.0))
    start = np.concatenate([[0], np.cumsum(svc._n_support)])
    k = len(svc.classes_)
    # per[c][:, m]: class c's support vectors weighted by their coefficients of column m
    per = [kernel[:, start[c]:start[c + 1]] @ svc._dual_coef_[:, start[c]:start[c + 1]].T
           for c in range(k)]
    dec = np.empty((len(X), k * (k - 1) // 2))
    p = 0
    for i in range(k):
        for j in range(i + 1, k):
            dec[:, p] = per[i][:, j - 1] + per[j][:, i] + svc._intercept_[p]
            p += 1
    return dec


def predict_proba(pipeline, X) -> np.ndarray:
    """``pipeline.predict_proba(X)``, with the RBF kernel as one matrix product where
    the pipeline is the one hiercell fits (see the module doc)."""
    parts = _parts(pipeline)
    if parts is None:
        return pipeline.predict_proba(X)
    from sklearn.utils.multiclass import _ovr_decision_function  # what SVC itself calls

    scaler, calibrated, svc = parts
    dec = ovo_decision(svc, scaler.transform(X))
    scores = _ovr_decision_function(dec < 0, -dec, len(svc.classes_))
    classes = np.unique(calibrated.classes)
    proba = np.zeros((len(scores), len(classes)))
    for idx, column, calibrator in zip(np.searchsorted(classes, svc.classes_), scores.T,
                                       calibrated.calibrators):
        proba[:, idx] = calibrator.predict(column)
    total = proba.sum(1)[:, None]  # as scikit-learn: uniform where every calibrator says 0
    proba = np.divide(proba, total, out=np.full_like(proba, 1 / len(classes)), where=total != 0)
    proba[(1.0 < proba) & (proba <= 1.0 + 1e-5)] = 1.0
    return proba
