"""End-to-end classification speed against plain Keras VGG16 ``predict``, in one run.

    python bench/bench_classify.py --images ../shared/data/pbc --n 320 [--model BUNDLE]
                                   [--rounds 3] [--precisions float32,bfloat16,bfloat16@keras]
                                   [--weights vgg16_..._notop.h5] [--memory]

Pipelines, all at the bundle's input size, on the same ``--n`` image files:

* ``keras-plain`` (the baseline): decode every file with OpenCV, resize, then one
  ``keras.applications.VGG16(include_top=False).predict(x, batch_size=32)`` (the
  whole VGG16 conv base, blocks 1-5, float32: what a user would write);
* ``hiercell-PRECISION``: :func:`hiercell.classify_folder` end to end with the trunk
  in that precision (decode + prepare in threads overlapping inference, trunk,
  stage 1 head + SVM on every cell, stage 2 on neutrophils/IGs, CSV written), on
  the engine ``hiercell.load`` picks (OpenVINO where installed, else Keras);
  ``--precisions bfloat16@keras`` names the engine (``keras`` or ``openvino``).

Timing: one warm-up call of each pipeline (graph tracing, kernel selection), then
``--rounds`` rounds that run every pipeline once, in turn, in this one process; the
figures are medians over rounds, the ratios are to keras-plain's median. Running the
pipelines alternately keeps a shared machine's load from favouring one of them.

GFLOP/s: images/s times the VGG16 conv-base FLOPs per image at the input size (counted
from the layer shapes: 2 * H * W * 9 * Cin * Cout per 3x3 convolution), the same work
unit for every pipeline (hiercell also runs stage 2's block5 on routed cells, not
counted). The peak is ``cores * GHz * FLOP/cycle/core`` with the FLOP/cycle of the
widest unit each precision can use, see ``peak_gflops``.

``--memory`` also runs each pipeline alone in a fresh process and reports its peak
resident memory (VmHWM), the figure a job scheduler sees.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# measure the hiercell of this checkout, not whichever one is installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VGG16_CONVS = [(3, 64), (64, 64), None, (64, 128), (128, 128), None,
               (128, 256), (256, 256), (256, 256), None,
               (256, 512), (512, 512), (512, 512), None,
               (512, 512), (512, 512), (512, 512), None]  # None: 2x2 max pooling


def vgg16_conv_gflop(size: int, up_to_block: int = 5) -> float:
    """GFLOP (multiply and add counted apart) of VGG16's 3x3 convolutions for one
    ``size`` x ``size`` image, blocks 1 to ``up_to_block``."""
    flop, side, block = 0, size, 1
    for layer in VGG16_CONVS:
        if block > up_to_block:
            break
        if layer is None:
            side //= 2
            block += 1
        else:
            cin, cout = layer
            flop += 2 * side * side * 9 * cin * cout
    return flop / 1e9


def cpu_ghz() -> float:
    """The CPU's reported clock (``cpu MHz`` of /proc/cpuinfo), GHz; 0 if unknown."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1]) / 1000
    except OSError:
        pass
    return 0.0


def peak_gflops(precision: str) -> tuple:
    """``(GFLOP/s, how)``: the machine's peak for ``precision``, assuming two 512-bit FMA
    units per core (64 float32 FLOP/cycle), AVX512-BF16 (128 bf16 FLOP/cycle) or AMX
    (1024 bf16 FLOP/cycle, 2048 int8 OP/cycle, Intel's figures) where /proc/cpuinfo lists
    them, at the reported clock on every core."""
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    cores, ghz = os.cpu_count() or 1, cpu_ghz()
    if precision == "float32":
        per, unit = (64, "AVX-512 FMA") if "avx512f" in flags else (32, "AVX2 FMA")
    elif precision in ("bfloat16", "float16"):
        per, unit = ((1024, "AMX-BF16") if "amx_bf16" in flags else
                     (128, "AVX512-BF16") if "avx512_bf16" in flags else (64, "float32 FMA"))
    else:  # int8
        per, unit = ((2048, "AMX-INT8") if "amx_int8" in flags else
                     (256, "AVX512-VNNI") if "avx512_vnni" in flags else (64, "float32 FMA"))
    return cores * ghz * per, f"{cores} cores x {ghz:.2f} GHz x {per} FLOP/cycle ({unit})"


def pick(root: Path, n: int) -> list:
    files = sorted(root.rglob("*.jpg"))
    step = max(1, len(files) // n)
    return files[::step][:n]


# --------------------------------------------------------------------------- pipelines


def keras_plain(files, size, weights):
    """The baseline: returns a callable that classifies ``files`` once."""
    import cv2
    import keras
    import numpy as np

    model = keras.applications.VGG16(include_top=False, weights=weights,
                                     input_shape=(size, size, 3))

    def run():
        x = np.stack([cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB),
                                 (size, size), interpolation=cv2.INTER_AREA) for f in files])
        x = keras.applications.vgg16.preprocess_input(x.astype("float32"))
        model.predict(x, batch_size=32, verbose=0)

    return run


def split_name(name: str) -> tuple:
    """``hiercell-PRECISION[@ENGINE]`` -> ``(precision, engine or None)``."""
    precision, _, engine = name.split("-", 1)[1].partition("@")
    return precision, engine or None


def hiercell_pipeline(files, model_path, precision, engine, tmp):
    import hiercell

    model = hiercell.load(model_path, precision=precision, engine=engine)
    out = Path(tmp) / f"r-{precision}-{engine}.csv"

    def run():
        hiercell.classify_folder(files, model=model, out=out, progress=False)

    return run, f"{model.info['precision']} on {model.info['engine']}"


def build(names, files, size, args, tmp):
    runs = {}
    for name in names:
        if name == "keras-plain":
            runs[name] = keras_plain(files, size, args.weights)
        else:
            run, used = hiercell_pipeline(files, args.model, *split_name(name), tmp)
            runs[name] = run
            print(f"{name}: {used}", flush=True)
    return runs


def child(args):
    """``--child NAME``: run one pipeline twice (warm-up + one), print its seconds."""
    files = pick(Path(args.images), args.n)
    with tempfile.TemporaryDirectory() as tmp:
        run = build([args.child], files, args.size, args, tmp)[args.child]
        run()
        t0 = time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
    hwm = [line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
           if line.startswith("VmHWM:")]
    print(json.dumps({"seconds": seconds, "peak_rss_kib": int(hwm[0]) if hwm else None}))


def peak_memory(name, args, size):
    """Peak RSS (MiB) of ``name`` run alone in a fresh process (its own VmHWM: the
    ``ru_maxrss`` of a child forked from this process would start at this one's size)."""
    cmd = [sys.executable, __file__, "--images", args.images, "--n", str(args.n),
           "--child", name, "--size", str(size)]
    for opt in ("model", "weights"):
        if getattr(args, opt):
            cmd += [f"--{opt}", str(getattr(args, opt))]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_kib"] / 1024
    except (ValueError, IndexError, KeyError, TypeError):
        return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="Folder of cell images (searched recursively).")
    ap.add_argument("--n", type=int, default=320, help="Number of images.")
    ap.add_argument("--model", default=None, help="Bundle (default: the bundled model).")
    ap.add_argument("--weights", default=None,
                    help="ImageNet VGG16 *_notop.h5 for the baseline (default: as hiercell "
                         "resolves them: $HIERCELL_VGG16_WEIGHTS, the Keras cache, download).")
    ap.add_argument("--precisions", default="float32,bfloat16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="Also measure each pipeline's peak "
                                                           "memory in a fresh process.")
    ap.add_argument("--json", default=None, help="Also write the figures here.")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    import hiercell
    from hiercell.backbone import resolve_weights
    from hiercell.bundle import default_bundle_path, verify_bundle

    args.weights = resolve_weights(args.weights)
    if args.child:
        return child(args)
    size = verify_bundle(args.model or default_bundle_path())["input_size"]
    files = pick(Path(args.images), args.n)
    names = ["keras-plain"] + [f"hiercell-{p}" for p in args.precisions.split(",")]
    gflop = vgg16_conv_gflop(size)
    print(f"{len(files)} images, input {size} px, {os.cpu_count()} CPU cores, "
          f"hiercell {hiercell.__version__}; VGG16 conv base {gflop:.2f} GFLOP/image", flush=True)

    times = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        runs = build(names, files, size, args, tmp)
        for name in names:
            runs[name]()  # warm-up
        for r in range(args.rounds):
            for name in names:
                t0 = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - t0)
            print(f"round {r + 1}: " + ", ".join(f"{k} {len(files) / v[-1]:.1f}"
                                                for k, v in times.items()), flush=True)

    memory = {name: peak_memory(name, args, size) for name in names} if args.memory else {}
    base = len(files) / statistics.median(times["keras-plain"])
    print(f"\n{'pipeline':<24} {'images/s':>9} {'vs Keras':>9} {'GFLOP/s':>8} {'of peak':>8}"
          + (f" {'peak RSS':>9}" if memory else ""))
    table = {}
    for name in names:
        rate = len(files) / statistics.median(times[name])
        precision = "float32" if name == "keras-plain" else split_name(name)[0]
        peak, how = peak_gflops(precision)
        table[name] = {"images_per_s": rate, "ratio": rate / base, "gflops": rate * gflop,
                       "peak_gflops": peak, "peak_how": how, "peak_rss_mib": memory.get(name),
                       "seconds": times[name]}
        print(f"{name:<24} {rate:>9.1f} {rate / base:>8.2f}x {rate * gflop:>8.0f} "
              f"{100 * rate * gflop / peak if peak else float('nan'):>7.1f}%"
              + (f" {memory[name]:>6.0f} MiB" if memory else ""))
    print("\npeaks: " + "; ".join(sorted({f"{p}: {peak_gflops(p)[0]:.0f} GFLOP/s = "
                                          f"{peak_gflops(p)[1]}" for p in
                                          ["float32", *(p.split("@")[0] for p in
                                                        args.precisions.split(","))]})))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"n": len(files), "input_size": size, "gflop_per_image": gflop,
                       "pipelines": table}, fh, indent=2)


if __name__ == "__main__":
    main()
