"""The HTML report's review column, filters and relabelling controls (page text only; the
browser test, ``test_report_browser.py``, runs them), and the manifest the export makes."""

import re

import cv2
import numpy as np

from hiercell.data import read_dataset, read_manifest
from hiercell.records import Prediction
from hiercell.report import EXPORT_NAME, RELABEL_CLASSES, SHORTCUTS, write_report
from hiercell.taxonomy import MAIN_CLASSES, SUBCLASSES, map_label


def _png(path):
    img = np.full((24, 24, 3), 200, np.uint8)
    assert cv2.imwrite(str(path), img)
    return str(path)


def _recs(tmp_path, review=True):
    def rec(name, label, main, score, flag, novelty):
        return Prediction(path=_png(tmp_path / name), label=label, probability=0.9,
                          main_class=main, main_probability=0.9, top=[(label, 0.9)],
                          review_score=score if review else None, review=flag and review,
                          novelty=novelty if review else None)

    return [rec("a.png", "lymphocyte", "lymphocyte", 0.25, False, 0.99),
            rec('b<u>"x.png', "SNE", "neutrophil", 0.91, True, 0.99),
            Prediction.failed(str(tmp_path / "c.png"), "empty file")]


def test_shortcuts_cover_the_13_classes_with_distinct_keys():
    assert set(SHORTCUTS.values()) == set(MAIN_CLASSES) | set(SUBCLASSES)
    assert len(SHORTCUTS) == 13
    assert [SHORTCUTS[str(i + 1)] for i in range(8)] == list(MAIN_CLASSES)
    assert tuple(RELABEL_CLASSES) == (*MAIN_CLASSES, *SUBCLASSES)
    for name in RELABEL_CLASSES:  # the names the page exports are the taxonomy's own
        assert map_label(name) is not None


def test_page_has_review_column_filters_relabelling_and_export(tmp_path):
    recs = _recs(tmp_path)
    text = write_report(recs, None, tmp_path / "r.html", gradcam=False,
                        base="/runs/</script><b>").read_text()
    assert text.count('<select class="mine"') == 2  # one per classified cell, none for errors
    assert text.count('tabindex="0"') == 2
    assert "sortRows('rev')" in text and 'id="only-rev"' in text and 'id="export"' in text
    assert "Export corrections" in text and EXPORT_NAME in text
    assert '<span class="flag">review</span>' in text
    assert re.search(r'<tr class="rev"[^>]* data-rev="0\.910000"', text)
    assert 'data-rev="0.250000"' in text and 'data-rev="-1.000000"' in text
    for key, name in SHORTCUTS.items():  # the shortcuts are documented in the page
        assert f"<kbd>{key}</kbd> {name}</span>" in text
    assert "1 cell needs review" in text
    # the differential's rows carry their counting interval: 1 of 2 cells, 0 of 2
    assert re.search(r'<td>lymphocyte</td><td class="n">1</td><td class="n">50\.0&nbsp;%</td>'
                     r'<td class="n ci">1\.2&ndash;98\.8</td>', text)
    assert '<td>monocyte</td><td class="n">0</td><td class="n">0.0&nbsp;%</td>' \
        '<td class="n ci">0.0&ndash;84.2</td>' in text
    assert "counting error only, not classification error" in text
    assert 'class="warn"' not in text  # 2 novel cells: too few for the domain check
    # the exact paths are in the page, escaped: nothing can close the script or an attribute
    assert text.count("</script>") == 1 and "<u>" not in text
    assert 'data-path="' + recs[1].path.replace("<", "&lt;").replace(">", "&gt;").replace(
        '"', "&quot;") + '"' in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # self-contained


def test_domain_shift_warning_and_no_review_scorer(tmp_path):
    recs = [Prediction(path=_png(tmp_path / f"n{i}.png"), label="ig", probability=0.9,
                       main_class="ig", main_probability=0.9, review_score=0.9, review=True,
                       novelty=0.99) for i in range(30)]
    text = write_report(recs, None, tmp_path / "w.html", gradcam=False).read_text()
    assert 'id="shift">Warning: these images look unlike the training data' in text
    assert "without review" in text
    text = write_report(_recs(tmp_path, review=False)[:1], None, tmp_path / "n.html",
                        gradcam=False).read_text()
    assert "gives no review score" in text and "without review" not in text
    assert text.count('<select class="mine"') == 1


def test_an_exported_manifest_with_absolute_paths_loads(tmp_path):
    """What the page's export writes (absolute paths, canonical names, CSV quoting, CRLF)
    is a manifest hiercell.data reads: the input of ``hiercell adapt``."""
    folder = tmp_path / "my cells"
    folder.mkdir()
    paths = [_png(folder / f"cell,{i}.png") for i in range(len(RELABEL_CLASSES))]
    lines = ["path,label"] + ['"' + p.replace('"', '""') + '",' + name
                              for p, name in zip(paths, RELABEL_CLASSES)]
    manifest = tmp_path / "exports" / "corrections.csv"
    manifest.parent.mkdir()
    manifest.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    samples = read_manifest(manifest)
    assert [str(s.path) for s in samples] == paths
    assert [s.sub or s.main for s in samples] == list(RELABEL_CLASSES)
    assert all(s.main is not None for s in samples)
    assert len(read_dataset(manifest)) == len(RELABEL_CLASSES)
