"""The HTML report in a real headless browser: relabel cells, export the corrections.

Chromium (or Chrome) is driven through its DevTools protocol over a pipe
(``--remote-debugging-pipe``: NUL-separated JSON messages on file descriptors
3 and 4), so no driver or Python package is needed, only the browser. The
test is skipped when no browser is installed, unless ``HIERCELL_REQUIRE_BROWSER=1``
(CI sets it, so a missing browser fails there). ``HIERCELL_CHROMIUM`` names the
browser's executable when it is not on ``PATH`` as ``chromium``,
``chromium-browser``, ``google-chrome`` or ``google-chrome-stable``.
"""

import base64
import csv
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from hiercell.data import read_dataset, read_manifest
from hiercell.records import Prediction
from hiercell.report import write_report
from hiercell.taxonomy import MAIN_CLASSES, SUBCLASSES

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser():
    """The Chromium/Chrome executable, or ``None``."""
    named = os.environ.get("HIERCELL_CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((shutil.which(n) for n in _NAMES if shutil.which(n)), None)


class Browser:
    """A headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self, executable, download_dir=None, size=(1280, 900), timeout=30.0):
        self.timeout = timeout
        self.events = []
        self._id = 0
        self._buf = b""
        self.profile = tempfile.mkdtemp(prefix="hiercell-chromium-")
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds():  # the browser reads commands on fd 3 and writes replies on fd 4
            a, b = os.dup(to_browser), os.dup(from_browser_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [executable, "--headless=new", "--remote-debugging-pipe", "--disable-gpu",
                f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio",
                f"--window-size={size[0]},{size[1]}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.proc = subprocess.Popen(args, preexec_fn=child_fds, close_fds=False,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser_w)
        try:
            if download_dir is not None:
                self.call("Browser.setDownloadBehavior", behavior="allow",
                          downloadPath=str(download_dir))
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target,
                                     flatten=True)["sessionId"]
            self.page("Runtime.enable")
            self.page("Page.enable")
            self.page("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1],
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    # -- protocol
    def call(self, method, session=None, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                    raise TimeoutError(f"no answer to {method} within {self.timeout} s")
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"the browser closed the pipe (exit {self.proc.poll()})")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") != self._id:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return reply.get("result", {})

    def page(self, method, **params):
        return self.call(method, session=self.session, **params)

    # -- page helpers
    def js(self, expression):
        """Evaluate ``expression`` in the page; its value (JSON-able) or an error."""
        r = self.page("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"JS error in {expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def goto(self, url):
        self.page("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def wait_for(self, expression, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.js(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {expression!r}")
            time.sleep(0.05)

    def click(self, selector):
        """A real mouse click in the middle of the element ``selector``."""
        box = self.js(f"(function(){{var el=document.querySelector({json.dumps(selector)});"
                      "el.scrollIntoView({block:'center'});var r=el.getBoundingClientRect();"
                      "return [r.left+r.width/2, r.top+r.height/2];})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1],
                      button="left", clickCount=1)

    def press(self, key):
        """A real key press (``"3"``, ``"t"``, ``"Enter"``) on the focused element."""
        if len(key) == 1:
            code = f"Digit{key}" if key.isdigit() else f"Key{key.upper()}"
            info = dict(key=key, code=code, text=key, windowsVirtualKeyCode=ord(key.upper()))
        else:
            vk = {"Enter": 13, "Backspace": 8, "Escape": 27, "Tab": 9, "ArrowDown": 40,
                  "ArrowUp": 38}[key]
            info = dict(key=key, code=key, windowsVirtualKeyCode=vk)
            if key == "Enter":
                info["text"] = "\r"
        self.page("Input.dispatchKeyEvent", type="keyDown", **info)
        info.pop("text", None)
        self.page("Input.dispatchKeyEvent", type="keyUp", **info)

    def screenshot(self, path, full_page=False):
        shot = self.page("Page.captureScreenshot", format="png",
                         captureBeyondViewport=full_page)
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return Path(path)

    def exceptions(self):
        """Uncaught JS exceptions seen so far."""
        return [e["params"]["exceptionDetails"] for e in self.events
                if e.get("method") == "Runtime.exceptionThrown"]

    def close(self):
        try:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.proc.kill()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser_exe():
    exe = find_browser()
    if exe is None or not sys.platform.startswith(("linux", "darwin")):
        why = ("no Chromium/Chrome found (install the 'chromium' package, or set "
               "HIERCELL_CHROMIUM); .ci/run installs one")
        if os.environ.get("HIERCELL_REQUIRE_BROWSER") == "1":
            pytest.fail(why + ", and HIERCELL_REQUIRE_BROWSER=1")
        pytest.skip(why)
    return exe


def _png(path, colour):
    img = np.zeros((60, 60, 3), np.uint8)
    img[:] = colour
    cv2.circle(img, (30, 30), 18, (120, 60, 160), -1)
    assert cv2.imwrite(str(path), img)
    return str(path)


def _records(folder):
    """Hand-made records: absolute paths (one with a comma and a quote), review flags,
    and one error row."""
    folder.mkdir()
    def rec(name, label, main, sub=None, score=0.1, review=False):
        return Prediction(path=_png(folder / name, (200, 190, 210)), label=label,
                          probability=0.9, main_class=main, main_probability=0.95,
                          subclass=sub, top=[(label, 0.9), ("monocyte", 0.05)],
                          review_score=score, review=review, novelty=score)

    return [rec("c0.png", "SNE", "neutrophil", "SNE", 0.20),
            rec("c1.png", "lymphocyte", "lymphocyte", None, 0.97, True),
            rec('odd, "name".png', "monocyte", "monocyte", None, 0.50),
            Prediction.failed(str(folder / "broken.png"), "empty file"),
            rec("c4.png", "MY", "ig", "MY", 0.85, True),
            rec("c5.png", "eosinophil", "eosinophil", None, 0.05)]


def test_relabel_and_export_in_a_real_browser(browser_exe, tmp_path):
    recs = _records(tmp_path / "cells")
    page = write_report(recs, None, tmp_path / "report.html", gradcam=False)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    b = Browser(browser_exe, download_dir=downloads)
    try:
        b.goto(page.resolve().as_uri())
        assert b.js("typeof exportCsv") == "function"
        assert b.js("document.querySelectorAll('#rows select.mine').length") == 5  # not the error

        # 1. the select box of the first cell: a click fills it with the 13 classes (the page
        #    loads with one option per box), then a pick (its value and a change event)
        first = "document.querySelectorAll('#rows tr')[0].querySelector('select.mine')"
        assert b.js(f"{first}.options.length") == 1
        b.click("#rows tr:nth-child(1) select.mine")
        assert b.js(f"Array.prototype.map.call({first}.options, function(o){{return o.value;}})") \
            == ["", *MAIN_CLASSES, *SUBCLASSES]
        b.press("Escape")
        b.js(f"var s={first};s.value='MY';s.dispatchEvent(new Event('change',{{bubbles:true}}));")
        assert b.js("document.querySelectorAll('#rows tr')[0].className").split()[-1] == "fixed"
        assert b.js("document.querySelectorAll('#rows tr')[5].querySelector('select').length") == 1

        # 2. keyboard: click the second cell's file name (focuses the row), press 3 (basophil);
        #    the focus moves on to the third cell: t (MMY); then Enter on the fifth row
        #    (the error row is skipped) confirms the model's label
        b.click("#rows tr:nth-child(2) td.path")
        assert b.js("document.activeElement.getAttribute('data-idx')") == "1"
        b.press("3")
        assert b.js("document.activeElement.getAttribute('data-idx')") == "2"
        b.press("t")
        assert b.js("document.activeElement.getAttribute('data-idx')") == "4"
        b.press("Enter")
        mine = b.js("Array.prototype.map.call(document.querySelectorAll('#rows tr'),"
                    "function(r){var s=r.querySelector('select.mine');return s?s.value:null;})")
        assert mine == ["MY", "basophil", "MMY", None, "MY", ""]
        classes = b.js("Array.prototype.map.call(document.querySelectorAll('#rows tr'),"
                       "function(r){return r.className;})")
        assert "fixed" in classes[1] and "fixed" in classes[2] and "confirmed" in classes[4]
        assert "fixed" not in classes[5] and "confirmed" not in classes[5]
        assert b.js("document.getElementById('nfix').textContent").startswith("4 labelled")
        # 0 clears a label, a letter sets it again
        b.click("#rows tr:nth-child(3) td.path")
        b.press("0")
        assert b.js("document.querySelectorAll('#rows tr')[2].querySelector('select').value") == ""
        b.press("m")  # MY, focus moves on
        assert b.js("document.querySelectorAll('#rows tr')[2].querySelector('select').value") == "MY"
        # the shortcuts work on a focused select box too (Tab from the row goes to it)
        b.click("#rows tr:nth-child(6) td.path")
        b.press("Tab")
        assert b.js("document.activeElement.tagName") == "SELECT"
        b.press("p")
        assert b.js("document.querySelectorAll('#rows tr')[5].querySelector('select').value") == "PMY"
        b.press("0")  # ... and clear it (the last row: the focus stayed on its select box)
        assert b.js("document.querySelectorAll('#rows tr')[5].querySelector('select').value") == ""

        # 3. sort by review score (highest first) and filter to the cells that need review
        b.click("button[onclick*=\"'rev'\"]")
        assert b.js("document.querySelector('#rows tr').getAttribute('data-idx')") == "1"
        b.click("#only-rev")
        shown = b.js("Array.prototype.filter.call(document.querySelectorAll('#rows tr'),"
                     "function(r){return r.offsetParent!==null;}).length")
        assert shown == 2
        b.click("#only-rev")
        b.screenshot(tmp_path / "report.png")

        # 4. the export button downloads the labelled cells, in the results' order
        b.click("#export")
        out = downloads / "corrections.csv"
        deadline = time.monotonic() + 20
        while not out.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert out.is_file(), "the export button downloaded nothing"
        assert not b.exceptions(), b.exceptions()
        everything = b.js("correctionsCsv(true, false)")
    finally:
        b.close()

    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["path", "label"], [recs[0].path, "MY"], [recs[1].path, "basophil"],
                    [recs[2].path, "MY"], [recs[4].path, "MY"]]
    # the manifest reader of hiercell adapt / train takes it as it is
    samples = read_manifest(out)
    assert [(str(s.path), s.main, s.sub) for s in samples] == [
        (recs[0].path, "ig", "MY"), (recs[1].path, "basophil", None),
        (recs[2].path, "ig", "MY"), (recs[4].path, "ig", "MY")]
    assert len(read_dataset(out)) == 4
    # "all cells": the model's label where none was set, error rows left out
    all_rows = list(csv.reader(everything.splitlines()))
    assert all_rows[1:] == [[recs[0].path, "MY"], [recs[1].path, "basophil"],
                            [recs[2].path, "MY"], [recs[4].path, "MY"],
                            [recs[5].path, "eosinophil"]]
