"""Scale-out: ``classify --shard K/N`` and ``hiercell merge`` (stand-in model, no weights)."""

import json

import pytest
from click.testing import CliRunner

import hiercell.bundle
from hiercell.classify import classify_folder
from hiercell.cli import main
from hiercell.results import read_results
from hiercell.shard import ShardError, merge_results, parse_shard, select, shard_key, shard_of

from test_classify import StandIn, colour, write_png


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "mnt-a" / "archive"
    for i in range(30):
        sub = root / f"patient{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        write_png(sub / f"cell_{i:02d}.png", colour(i % 8, i % 6))
    return root


def test_parse_shard():
    assert str(parse_shard("3/8")) == "3/8"
    for bad in ("0/4", "5/4", "3", "a/b", "1/0"):
        with pytest.raises(ShardError):
            parse_shard(bad)


def test_shares_are_disjoint_cover_everything_and_ignore_the_mount_point(archive, tmp_path):
    from hiercell.io import list_images

    images = list_images([archive], recursive=True)
    shares = [select(images, [archive], f"{k}/4") for k in range(1, 5)]
    assert sorted(p for s in shares for p in s) == images
    assert all(shares)  # 30 images over 4 shares: none empty (sha1 spreads them)
    # the same archive mounted elsewhere: the same split, by relative path
    other = tmp_path / "elsewhere" / "archive"
    assert shard_key(archive / "patient1" / "cell_01.png", [archive]) == "patient1/cell_01.png"
    assert shard_key(other / "patient1" / "cell_01.png", [other]) == "patient1/cell_01.png"
    assert shard_key(archive / "x.png", [archive / "x.png"]) == "x.png"  # a file given itself
    assert shard_of("patient1/cell_01.png", 4) == shard_of("patient1/cell_01.png", 4)


def run_shards(archive, tmp_path, n, fmt="csv"):
    outs = []
    for k in range(1, n + 1):
        out = tmp_path / f"shard{k}.{fmt}"
        res = classify_folder(archive, model=StandIn(), out=out, fmt=fmt, recursive=True,
                              progress=False, shard=f"{k}/{n}")
        assert res.summary["shard"] == f"{k}/{n}"
        assert all(r.shard == f"{k}/{n}" for r in res.records)
        outs.append(out)
    return outs


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_merge_equals_one_unsharded_run(archive, tmp_path, fmt):
    whole = classify_folder(archive, model=StandIn(), out=tmp_path / f"all.{fmt}", fmt=fmt,
                            recursive=True, progress=False)
    outs = run_shards(archive, tmp_path, 3, fmt)
    merged = merge_results(outs)
    assert sorted(r.path for r in merged.records) == sorted(r.path for r in whole.records)
    for key in ("main_classes", "subclasses", "n_images", "n_uncertain"):
        assert merged.summary[key] == whole.summary[key]
    assert merged.summary["shards"] == {"count": 3, "merged": [1, 2, 3], "missing": []}


def test_merge_refuses_overlaps_and_names_missing_shares(archive, tmp_path):
    outs = run_shards(archive, tmp_path, 4)
    with pytest.raises(ShardError, match=r"missing share\(s\) 2/4, 4/4"):
        merge_results([outs[0], outs[2]])
    assert merge_results([outs[0], outs[2]], allow_missing=True).missing == [2, 4]
    copy = tmp_path / "again.csv"
    copy.write_bytes(outs[0].read_bytes())
    with pytest.raises(ShardError, match="given twice"):
        merge_results([*outs, copy])
    (tmp_path / "n2").mkdir()
    other_n = run_shards(archive, tmp_path / "n2", 2)
    with pytest.raises(ShardError, match="of 2"):
        merge_results([outs[0], other_n[1]])
    plain = tmp_path / "plain.csv"
    classify_folder(archive, model=StandIn(), out=plain, recursive=True, progress=False)
    with pytest.raises(ShardError, match="no shard recorded"):
        merge_results([plain])


def test_merge_refuses_an_image_in_two_files(archive, tmp_path):
    outs = run_shards(archive, tmp_path, 2)
    rows = outs[0].read_text().splitlines()
    first_of_other = outs[1].read_text().splitlines()[1].replace(",2/2", ",1/2")
    outs[0].write_text("\n".join(rows + [first_of_other]) + "\n")
    with pytest.raises(ShardError, match="is in both"):
        merge_results(outs)


def test_cli_shard_and_merge(archive, tmp_path, monkeypatch):
    monkeypatch.setattr(hiercell.bundle, "load", lambda path=None, precision="auto": StandIn())
    runner = CliRunner()
    outs = []
    for k in (1, 2):
        out = tmp_path / f"s{k}.csv"
        r = runner.invoke(main, ["classify", str(archive), "-r", "--shard", f"{k}/2",
                                 "--out", str(out)])
        assert r.exit_code == 0, r.output
        outs.append(str(out))
    r = runner.invoke(main, ["classify", str(archive), "--shard", "3/2"])
    assert r.exit_code == 2 and "--shard" in r.output
    merged, summary = tmp_path / "merged.csv", tmp_path / "s.json"
    r = runner.invoke(main, ["merge", *outs, "--out", str(merged), "--summary", str(summary)])
    assert r.exit_code == 0, r.output
    assert len(read_results(merged)) == 30
    assert json.loads(summary.read_text())["n_images"] == 30
    r = runner.invoke(main, ["merge", outs[0], "--out", str(merged)])
    assert r.exit_code == 1 and "missing share(s) 2/2" in r.output


def test_precision_is_recorded_in_rows_and_summary(archive, tmp_path):
    model = StandIn()
    model.info = {"precision": "bfloat16"}
    out = tmp_path / "r.json"
    res = classify_folder(archive, model=model, out=out, fmt="json", recursive=True,
                          progress=False, summary_path=tmp_path / "s.json")
    assert res.summary["precision"] == "bfloat16"
    assert json.loads((tmp_path / "s.json").read_text())["precision"] == "bfloat16"
    assert {r["precision"] for r in json.loads(out.read_text())["results"]} == {"bfloat16"}


def test_merge_refuses_a_torn_shard_file(archive, tmp_path):
    outs = run_shards(archive, tmp_path, 2)
    with open(outs[1], "a") as fh:
        fh.write("/x/cut.png,SNE,0.9\n")  # a row cut by a hard kill
    with pytest.raises(ShardError, match="cannot be read"):
        merge_results(outs)


def test_merge_carries_the_shares_alignment_and_review_rate(archive, tmp_path):
    outs = run_shards(archive, tmp_path, 3, "json")
    record = {"applied": True, "n_cells": 30, "message": "aligned the model to these images"}
    for out in outs:  # as shares of an aligned run on novel images write them
        doc = json.loads(out.read_text())
        for row in doc["results"]:
            row["novelty"] = 0.99
        doc["summary"].update(alignment=record, review_rate=0.1, review_threshold=0.15)
        out.write_text(json.dumps(doc))
    merged = merge_results(outs).summary
    assert merged["alignment"] == record
    assert (merged["review_rate"], merged["review_threshold"]) == (0.1, 0.15)
    shift = merged["domain_shift"]
    assert shift["warning"] and "aligned to them" in shift["message"]
    assert "hiercell align`" not in shift["message"]
    doc = json.loads(outs[1].read_text())  # one share not aligned: nothing is claimed
    doc["summary"]["alignment"] = {"applied": False, "n_cells": 30, "message": "not aligned"}
    outs[1].write_text(json.dumps(doc))
    merged = merge_results(outs).summary
    assert merged["alignment"] is None and "hiercell align`" in merged["domain_shift"]["message"]
    assert merge_results(run_shards(archive, tmp_path / "csv", 3)).summary["alignment"] is None
    mixed = [outs[0], *run_shards(archive, tmp_path / "csv2", 3)[1:]]  # JSON + CSV shares
    assert merge_results(mixed).summary["alignment"] is None


def test_merge_keeps_an_alignment_whose_figures_differ_in_the_last_digits(archive, tmp_path):
    outs = run_shards(archive, tmp_path, 2, "json")
    for k, out in enumerate(outs):  # shares on machines of other trunk precisions
        doc = json.loads(out.read_text())
        doc["summary"]["alignment"] = {"applied": True, "domain_score": 0.9 + 1e-4 * k}
        out.write_text(json.dumps(doc))
    assert merge_results(outs).summary["alignment"]["applied"] is True


def test_merge_keeps_the_alignment_when_a_share_had_no_images(archive, tmp_path):
    outs = run_shards(archive, tmp_path, 40, "json")  # 30 images over 40 shares
    docs = [json.loads(out.read_text()) for out in outs]
    empty = [d for d in docs if not d["results"]]
    assert empty and all(d["summary"].get("alignment") is None for d in empty)
    record = {"applied": True, "n_cells": 30, "message": "aligned the model to these images"}
    for out, doc in zip(outs, docs):  # the shares with images aligned, as classify does
        if doc["results"]:
            doc["summary"]["alignment"] = record
            out.write_text(json.dumps(doc))
    assert merge_results(outs).summary["alignment"] == record


def test_merge_checks_the_domain_against_the_shares_class_rates(archive, tmp_path):
    outs = run_shards(archive, tmp_path, 2, "json")
    for k, out in enumerate(outs):  # every cell novel; the shares' models disagree
        doc = json.loads(out.read_text())
        for row in doc["results"]:
            row["novelty"] = 0.99
        doc["summary"]["domain_shift"]["class_rates"] = {"neutrophil": 0.3 + 0.1 * k}
        out.write_text(json.dumps(doc))
    shift = merge_results(outs).summary["domain_shift"]
    assert shift["class_rates"] is None and shift["expected"] == 0.05  # shares disagree
    rates = {c: 0.3 for c in ("neutrophil", "ig")}
    for out in outs:
        doc = json.loads(out.read_text())
        doc["summary"]["domain_shift"]["class_rates"] = rates
        out.write_text(json.dumps(doc))
    merged = merge_results(outs)
    shift = merged.summary["domain_shift"]
    answers = [r.main_class for r in merged.records]
    assert shift["class_rates"] == rates and 0 < sum(c in rates for c in answers) < len(answers)
    assert shift["expected"] == pytest.approx(
        sum(rates.get(c, 0.05) for c in answers) / len(answers), abs=1e-4)
    csv_shift = merge_results(run_shards(archive, tmp_path / "csv", 2)).summary["domain_shift"]
    assert csv_shift["class_rates"] is None  # CSV shares carry no summary


def test_cli_merge_takes_the_class_rates_from_the_model(archive, tmp_path, tiny_bundle):
    from hiercell.bundle import bundle_tag, load_reviewer

    outs = run_shards(archive, tmp_path, 2)  # CSV shares: no summary, no rates
    rates = load_reviewer(tiny_bundle).novel_rates()
    assert rates
    summary = tmp_path / "s.json"
    r = CliRunner().invoke(main, ["merge", *map(str, outs), "--out", str(tmp_path / "m.csv"),
                                  "--summary", str(summary), "--model", str(tiny_bundle)])
    assert r.exit_code == 0, r.output
    assert json.loads(summary.read_text())["domain_shift"]["class_rates"] == rates
    for out in outs:  # rows that name the model pass, rows of another model do not
        text = out.read_text()
        header, *rows = text.splitlines()
        col = header.split(",").index("model")
        fixed = [",".join(v if i != col else bundle_tag(tiny_bundle) for i, v in
                          enumerate(row.split(","))) for row in rows]
        out.write_text("\n".join([header, *fixed]) + "\n")
    r = CliRunner().invoke(main, ["merge", *map(str, outs), "--out", str(tmp_path / "m2.csv"),
                                  "--model", str(tiny_bundle)])
    assert r.exit_code == 0, r.output
    text = outs[0].read_text().replace(bundle_tag(tiny_bundle).split("@")[0] + "@",
                                       "another-model@")
    outs[0].write_text(text)
    r = CliRunner().invoke(main, ["merge", *map(str, outs), "--out", str(tmp_path / "m3.csv"),
                                  "--model", str(tiny_bundle)])
    assert r.exit_code != 0 and "another-model@" in r.output and "not by --model" in r.output
    assert not (tmp_path / "m3.csv").exists()
