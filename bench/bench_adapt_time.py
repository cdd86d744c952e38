#!/usr/bin/env python
"""Where one ``hiercell adapt`` adaptation spends its time, on this machine.

    python bench/bench_adapt_time.py DATA [--model BUNDLE] [--views 4] [--per-class N]
                                          [--cache DIR] [--step-batches 16,32,64] [--torch]

DATA: labelled cells in any layout hiercell reads (e.g. a manifest.csv); with
``--per-class N``, the first draw of N cells per class that ``bench/bench_adapt.py``
makes (seed 0) instead of all of them. Prints:

- the trunk pass of the cells and their ``--views`` augmented views (seconds, images/s;
  ``--cache``: features read from / written to that folder, so a second run times the
  rest alone);
- one adaptation as ``hiercell adapt`` makes it (:func:`hiercell.adapt.adapt_model`,
  the bundle's defaults), split into block5 fine-tuning, the block5 passes that pool
  the maps, the SVM fits, the other Keras training (the dense-layer refits) and the
  rest; the cross-validation of ``hiercell adapt`` repeats such adaptations on its
  folds and is not run here;
- the cost of one training step of block5 and the dense layers per map, for each batch
  size of ``--step-batches``, in the training precision of this machine
  (:func:`hiercell.backbone.training_precision`), and in PyTorch float32 with
  ``--torch`` (when installed), to tell whether another framework would help.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# measure the hiercell of this checkout, not whichever one is installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def _timer(owner, name, totals, key):
    """Wrap ``owner.name`` so that its time adds to ``totals[key]``."""
    func = getattr(owner, name)

    @functools.wraps(func)
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - t0

    setattr(owner, name, timed)


def profile_adaptation(model, maps, samples) -> dict:
    """Seconds of one :func:`~hiercell.adapt.adapt_model` run, by part."""
    import keras

    from hiercell import adapt
    from hiercell.stage import StageClassifier

    totals: dict = {}
    _timer(adapt, "_finetune_on_target", totals, "block5 fine-tuning")
    _timer(adapt, "predict_batches", totals, "block5 passes (pooled maps)")
    _timer(StageClassifier, "fit_svm_embeddings", totals, "SVM fits")
    _timer(keras.Model, "fit", totals, "keras fit")
    t0 = time.perf_counter()
    adapt.adapt_model(model, maps, samples, seed=0)
    total = time.perf_counter() - t0
    totals["dense-layer refits"] = totals.pop("keras fit") - totals["block5 fine-tuning"]
    totals["rest"] = total - sum(totals.values())
    return {"total": total, **totals}


def keras_step_seconds(batch, feature_shape, n_classes=8, repeats=10) -> float:
    """Seconds per map of one training step of block5 + dense layers (Keras)."""
    import keras

    from hiercell.backbone import (build_head, precision_policy, set_block5_trainable,
                                   training_precision)

    rng = np.random.default_rng(0)
    x = rng.random((batch,) + tuple(feature_shape), dtype=np.float32)
    y = rng.integers(0, n_classes, batch)
    with precision_policy(training_precision("auto")):
        head = build_head(n_classes, feature_shape)
        set_block5_trainable(head, True)
        head.compile(optimizer=keras.optimizers.Adam(1e-4),
                     loss="sparse_categorical_crossentropy")
        head.train_on_batch(x, y)  # trace
        t0 = time.perf_counter()
        for _ in range(repeats):
            head.train_on_batch(x, y)
    return (time.perf_counter() - t0) / repeats / batch


def torch_step_seconds(batch, feature_shape, n_classes=8, repeats=10) -> float:
    """The same step in PyTorch float32 (same layers), seconds per map."""
    import torch
    from torch import nn

    h, w, c = feature_shape
    conv = []
    for channels in (c, 512, 512):
        conv += [nn.Conv2d(channels, 512, 3, padding=1), nn.ReLU()]
    net = nn.Sequential(*conv, nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(512, 1024), nn.ReLU(), nn.Dropout(0.2),
                        nn.Linear(1024, 512), nn.ReLU(), nn.Dropout(0.2),
                        nn.Linear(512, n_classes))
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.rand(batch, c, h, w)
    y = torch.randint(0, n_classes, (batch,))

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats / batch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data")
    ap.add_argument("--model", default=None)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=None)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--step-batches", default="16,32,64")
    ap.add_argument("--torch", action="store_true")
    a = ap.parse_args()

    import hiercell
    from hiercell.backbone import training_precision
    from hiercell.data import read_dataset
    from hiercell.features import trunk_views

    model = hiercell.load(a.model)
    samples = [s for s in read_dataset(a.data) if s.main is not None]
    if a.per_class:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_adapt import draw

        samples = [samples[i] for i in draw(samples, a.per_class, np.random.default_rng(0))]
    print(f"{len(samples)} labelled cells, {a.views} augmented views; training precision "
          f"{training_precision('auto')}; engine {model.info.get('engine')}", flush=True)
    t0 = time.perf_counter()
    maps, ok, _ = trunk_views(model, [s.path for s in samples], a.views, cache_dir=a.cache)
    sec = time.perf_counter() - t0
    samples = [s for s, good in zip(samples, ok) if good]
    n_images = maps.shape[0] * maps.shape[1]
    print(f"trunk pass: {n_images} images in {sec:.0f} s ({n_images / sec:.1f} images/s"
          f"{', cache ' + a.cache if a.cache else ''})", flush=True)
    parts = profile_adaptation(model, maps, samples)
    print(f"one adaptation: {parts.pop('total'):.0f} s; "
          + ", ".join(f"{k} {v:.0f} s" for k, v in parts.items()), flush=True)
    shape = maps.shape[2:]
    for batch in (int(b) for b in a.step_batches.split(",")):
        line = f"training step, batch {batch}: keras {1000 * keras_step_seconds(batch, shape):.1f} ms a map"
        if a.torch:
            line += f", torch float32 {1000 * torch_step_seconds(batch, shape):.1f} ms a map"
        print(line, flush=True)


if __name__ == "__main__":
    main()
