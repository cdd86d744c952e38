"""Work done once and in the right place: per-image preparation in the loader threads,
stage 2 only on routed cells, the stage heads built on first use."""

import threading

import numpy as np

from hiercell.classify import classify_folder
from hiercell.hierarchy import HierarchicalClassifier
from hiercell.taxonomy import MAIN_CLASSES, OTHERS, SUBCLASSES

from test_classify import StandIn, colour, write_png


class PreparingStandIn(StandIn):
    """A stand-in with the ``prepare`` / ``prepared_features`` split of ImageClassifier."""

    def __init__(self):
        super().__init__()
        self.prepare_threads = set()

    def prepare(self, images, masked=None):
        self.prepare_threads.add(threading.current_thread().name)
        return np.stack([np.full((4, 4, 3), img.reshape(-1, 3).mean(0).round(), np.uint8)
                         for img in images])

    def prepared_features(self, batch):
        self.calls.append(len(batch))
        return batch.reshape(len(batch), -1, 3).mean(1)


def test_preparation_runs_in_the_loader_threads(tmp_path):
    for i in range(10):
        write_png(tmp_path / f"c{i}.png", colour(i % 8, i % 6))
    model = PreparingStandIn()
    res = classify_folder(tmp_path, model=model, out=tmp_path / "r.csv", batch_size=4,
                          progress=False)
    assert res.n_ok == 10 and model.calls == [4, 4, 2]
    assert model.prepare_threads and all(n.startswith("hiercell-load")
                                         for n in model.prepare_threads)


class CountingStage:
    def __init__(self, classes, pick):
        self.classes_ = np.array(classes)
        self.pick = pick
        self.rows = 0

    def predict_proba(self, X):
        self.rows += len(X)
        p = np.full((len(X), len(self.classes_)), 0.01)
        p[np.arange(len(X)), [self.pick(x) for x in X]] = 1
        return p / p.sum(1, keepdims=True)

    def predict_outputs(self, X):  # what the hierarchy calls
        p = self.predict_proba(X)
        return p, p, np.zeros(len(X))


def test_stage2_runs_only_on_routed_cells():
    X = np.arange(8, dtype=float)[:, None]  # row i -> main class i
    s1 = CountingStage(MAIN_CLASSES, lambda x: int(x[0]))
    s2 = CountingStage((*SUBCLASSES, OTHERS), lambda x: 0)
    HierarchicalClassifier(s1, s2).predict_records(X)
    assert s1.rows == 8 and s2.rows == 2  # neutrophil and ig only


def test_stage_heads_are_built_on_first_use(tiny_bundle):
    from hiercell.bundle import load

    model = load(tiny_bundle, precision="float32")
    assert "_head" not in model.stage2.__dict__  # not built by loading
    head = model.stage2.head_
    assert head is model.stage2.head_ and head.count_params() > 0
