"""Peak memory of ``hiercell classify`` on a 1,000-image folder with hostile files mixed in.

    python bench/bench_memory.py [--n 1000] [--model BUNDLE] [--keep DIR]

Builds a folder of ``--n`` entries: copies of the test fixture cells (PBC JPEGs,
360 px) plus, mixed in, eight 7000x7000 16-bit RGBA PNGs (about 0.5 MB each on
disk, 392 MB each decoded at full size), two 6000x4000 JPEGs, a 3 GB junk
``.jpg`` (sparse: it takes no disk space) and a 1x1 PNG. Then it runs
``python -m hiercell classify FOLDER`` (the bundled model, or ``--model``) in
a child process and prints that process's peak resident memory
(``ru_maxrss`` from ``os.wait4``, as ``/usr/bin/time -v`` reports it) and the
exit status. The figure is only printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "data" / "pbc"

MAKE_HOSTILE = """
import sys, cv2, numpy as np
folder = sys.argv[1]
big = np.zeros((7000, 7000, 4), np.uint16)
big[..., 2] = 40000
big[..., 3] = 65535
ok, png = cv2.imencode(".png", big)
del big
for i in range(8):
    open(f"{folder}/big16_rgba_{i}.png", "wb").write(png.tobytes())
ok, jpg = cv2.imencode(".jpg", np.full((4000, 6000, 3), 180, np.uint8))
for i in range(2):
    open(f"{folder}/huge_{i}.jpg", "wb").write(jpg.tobytes())
cv2.imwrite(f"{folder}/dot.png", np.zeros((1, 1, 3), np.uint8))
with open(f"{folder}/junk_3GB.jpg", "wb") as fh:
    fh.truncate(3 * 2**30)
"""


def build_folder(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # the hostile files are made in a child process: their arrays must not count here
    subprocess.run([sys.executable, "-c", MAKE_HOSTILE, str(folder)], check=True)
    hostile = len(list(folder.iterdir()))
    cells = sorted(FIXTURES.glob("*/*.jpg"))
    for i in range(n - hostile):
        src = cells[i % len(cells)]
        shutil.copyfile(src, folder / f"cell_{i:04d}_{src.name}")


def measure(folder: Path, model: str | None, out: Path):
    cmd = [sys.executable, "-m", "hiercell", "classify", str(folder), "--out", str(out),
           "--no-gradcam"]
    if model:
        cmd += ["--model", model]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024, time.time() - start, err


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="entries in the folder")
    ap.add_argument("--model", default=None, help="model bundle (default: the bundled model)")
    ap.add_argument("--keep", default=None, help="build the folder here and keep it")
    args = ap.parse_args()

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hiercell-mem-"))
    try:
        folder = tmp / "images"
        if not folder.exists():
            build_folder(folder, args.n)
        n = len(list(folder.iterdir()))
        code, peak, seconds, err = measure(folder, args.model, tmp / "results.csv")
        tail = [line for line in err.splitlines() if line.strip()][-14:]
        print("\n".join(tail))
        print(f"\n{n} entries: exit status {code}, peak resident memory "
              f"{peak / 2**30:.2f} GiB ({peak / 2**20:.0f} MiB), {seconds:.0f} s")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
