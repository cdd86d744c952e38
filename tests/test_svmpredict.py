"""The stages' SVM probabilities with the kernel as one matrix product equal
scikit-learn's (:mod:`hiercell.svmpredict`)."""

import joblib
import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from hiercell.bundle import default_bundle_path
from hiercell.svmpredict import ovo_decision, predict_proba


def fitted(n_classes, rng, method="sigmoid"):
    X = np.concatenate([rng.normal(c, 1.5, (30, 12)) for c in range(n_classes)]).astype(np.float32)
    y = np.repeat([f"c{c}" for c in range(n_classes)], 30)
    svm = make_pipeline(StandardScaler(), CalibratedClassifierCV(
        SVC(kernel="rbf", class_weight="balanced", C=3.0), method=method, cv=3,
        ensemble=False))
    return svm.fit(X, y), X


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_equals_scikit_learn_on_the_bundled_svms(stage):
    svm = joblib.load(default_bundle_path() / stage / "svm.joblib")
    svc = svm.steps[1][1].calibrated_classifiers_[0].estimator
    rng = np.random.default_rng(0)
    scaler = svm.steps[0][1]  # near some support vectors, so the kernel is far from 0
    rows = svc.support_vectors_[rng.choice(len(svc.support_vectors_), 40)]
    X = ((rows + rng.normal(0, 0.3, rows.shape)) * scaler.scale_ + scaler.mean_).astype(np.float32)
    dec = svc._dense_decision_function(scaler.transform(X))
    assert dec.std(0).max() > 0.05  # the kernel terms count, not only the intercepts
    np.testing.assert_allclose(ovo_decision(svc, scaler.transform(X)), dec, rtol=0, atol=1e-9)
    np.testing.assert_allclose(predict_proba(svm, X), svm.predict_proba(X), rtol=0, atol=1e-9)


@pytest.mark.parametrize("n_classes", [3, 6])
def test_equals_scikit_learn_on_a_fresh_fit(n_classes):
    rng = np.random.default_rng(n_classes)
    svm, X = fitted(n_classes, rng)
    X = X + rng.normal(0, 0.5, X.shape).astype(np.float32)
    np.testing.assert_allclose(predict_proba(svm, X), svm.predict_proba(X), rtol=0, atol=1e-9)


def test_other_pipelines_go_to_scikit_learn():
    rng = np.random.default_rng(1)
    for svm, X in (fitted(2, rng), fitted(3, rng, method="isotonic")):
        np.testing.assert_array_equal(predict_proba(svm, X), svm.predict_proba(X))
