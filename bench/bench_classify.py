"""End-to-end classification speed against plain Keras VGG16 ``predict``, in one run.

    python bench/bench_classify.py --images ../shared/data/pbc --n 320 [--model BUNDLE]

Prints images/s for:

* ``keras-plain``: decode + resize each file with OpenCV, then
  ``keras.applications.VGG16(include_top=False).predict`` at the bundle's
  input size (the whole conv base, batch 32): the baseline;
* ``hiercell-float32`` / ``hiercell-bfloat16``: :func:`hiercell.classify_folder`
  end to end (decode in threads overlapping inference, trunk, both stages,
  SVMs, CSV written), with the trunk in each precision.

Each figure is the best of ``--repeats`` timed runs after a warm-up run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _pick(root: Path, n: int):
    files = sorted(p for p in root.rglob("*.jpg"))
    step = max(1, len(files) // n)
    return files[::step][:n]


def keras_plain(files, size, repeats):
    import cv2
    import keras
    import numpy as np

    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))

    def run():
        batch = np.stack([cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB),
                                     (size, size), interpolation=cv2.INTER_AREA) for f in files])
        x = keras.applications.vgg16.preprocess_input(batch.astype("float32"))
        model.predict(x, batch_size=32, verbose=0)

    return _best(run, len(files), repeats)


def hiercell_run(files, model_path, precision, repeats):
    import hiercell

    model = hiercell.load(model_path, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        def run():
            hiercell.classify_folder(files, model=model, out=Path(tmp) / "r.csv", progress=False)

        return _best(run, len(files), repeats)


def _best(fn, n, repeats):
    fn()  # warm-up: graph tracing, oneDNN kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="Folder of cell images (searched recursively).")
    ap.add_argument("--n", type=int, default=320, help="Number of images.")
    ap.add_argument("--model", default=None, help="Bundle (default: the bundled model).")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import hiercell
    from hiercell.bundle import default_bundle_path, verify_bundle

    size = verify_bundle(args.model or default_bundle_path())["input_size"]
    files = _pick(Path(args.images), args.n)
    print(f"{len(files)} images, input {size} px, {os.cpu_count()} CPU cores, hiercell {hiercell.__version__}")
    base = keras_plain(files, size, args.repeats)
    print(f"{'keras-plain':<20} {base:7.1f} images/s  (1.00x)")
    for precision in ("float32", "bfloat16"):
        rate = hiercell_run(files, args.model, precision, args.repeats)
        print(f"{'hiercell-' + precision:<20} {rate:7.1f} images/s  ({rate / base:.2f}x)")


if __name__ == "__main__":
    main()
