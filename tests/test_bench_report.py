import json

import numpy as np
import pytest

from mobileclip_export.benchmarks import regression, report
from mobileclip_export.errors import UsageError

DEVICE = {"name": "ci", "os": "Linux", "cpu": "x86", "cores": 2, "threads": 1, "kind": "host"}
SETTINGS = {"runs": 10, "warmup": 2, "threads": 1, "peak_matmul_gflops": 100.0, "interleaved": True}


def _row(target, encoder, median, kind="deployment", status="ok", size=10.0):
    lat = (
        None
        if median is None
        else {
            "n": 10,
            "median": median,
            "p90": median * 1.1,
            "trimmed_mean": median,
            "mean": median,
            "std": 0.1,
            "min": median * 0.9,
            "max": median * 1.2,
        }
    )
    return {
        "target": target,
        "encoder": encoder,
        "precision": "fp32",
        "kind": kind,
        "status": status,
        "runtime": f"{target} runtime",
        "artifact": None,
        "size_mb": size,
        "parity_cosine": 0.9999991,
        "load_ms": 12.0,
        "first_ms": median and median * 2,
        "rss_delta_mb": 30.0,
        "latency": lat,
        "gmacs": 2.38,
        "gflops_per_s": median and 4.76 / (median / 1e3) / 1e0,
        "fraction_of_peak": 0.2 if median else None,
        "speedup_vs_reparam": None if kind == "reference" or median is None else 2.0,
    }


def _doc(medians: dict[str, float | None], **extra_rows):
    rows = [_row("pytorch-reparam", "image", 8.0, kind="baseline")]
    rows += [_row(t, "image", m) for t, m in medians.items()]
    rows.append(_row("refrt", "image", 900.0, kind="reference"))
    rows.append(_row("gone", "text", None, status="skipped: needs macOS"))
    est = [
        {
            "device": "phone",
            "encoder": "image",
            "latency_ms": 1.5,
            "method": "ane-linear",
            "error_note": "LOO x",
            "inputs": {},
        }
    ]
    return report.build_document(
        model={"name": "mobileclip_s0", "random_init": True, "reduced": False},
        device=DEVICE,
        settings=SETTINGS,
        rows=rows,
        estimates=est,
    )


def test_json_schema_records_and_roundtrip(tmp_path):
    doc = _doc({"a": 4.0})
    assert report.validate_document(doc) == []
    recs = doc["records"]
    med = [r for r in recs if r["metric"] == "median_inference_latency(ms)"]
    assert {(r["benchmarkModel"]["backend"], r["actualValue"]) for r in med} == {
        ("pytorch-reparam", 8.0),
        ("a", 4.0),
        ("refrt", 900.0),
    }
    assert all(r["kind"] == "host" and r["device"] == DEVICE for r in med)
    est = [r for r in recs if r["kind"] == "estimate"]
    assert len(est) == 1 and est[0]["metric"] == "estimated_inference_latency(ms)"
    # the skipped row has no latency records but keeps its size
    gone = [r for r in recs if r["benchmarkModel"]["backend"] == "gone"]
    assert {r["metric"] for r in gone} == {
        "artifact_size(mb)",
        "model_load_time(ms)",
        "peak_rss_delta(mb)",
        "parity_cosine",
        "gmacs",
    }
    report.write_json(tmp_path / "r.json", doc)
    assert report.validate_document(json.loads((tmp_path / "r.json").read_text())) == []
    bad = dict(doc, records=[dict(recs[0], kind="guess")])
    assert any("kind" in p for p in report.validate_document(bad))


def test_markdown_table():
    md = report.markdown(_doc({"a": 4.0}))
    header = [line for line in md.splitlines() if line.startswith("| target")][0]
    for col in (
        "target",
        "encoder",
        "precision",
        "status",
        "size MB",
        "parity cos",
        "load ms",
        "first ms",
        "median ms",
        "p90 ms",
        "GFLOP/s",
        "% of peak",
        "speedup vs reparam PyTorch",
    ):
        assert col in header
    row_a = [line for line in md.splitlines() if line.startswith("| a |")][0]
    cells = [c.strip() for c in row_a.strip("|").split("|")]
    assert cells[3] == "ok" and cells[8] == "4.00" and cells[9] == "4.40" and cells[12] == "×2.00"
    assert cells[5] == "0.999999" and cells[11] == "20.0"
    ref = [line for line in md.splitlines() if line.startswith("| refrt |")][0]
    assert "900.00 (reference runtime)" in ref and "— (reference runtime)" in ref
    assert "`gone` text fp32: skipped: needs macOS" in md
    assert "### Estimates" in md and "LOO x" in md


def test_plots_are_valid_pngs(tmp_path):
    import matplotlib.image

    paths = report.plots(_doc({"a": 4.0, "b": 6.0}), tmp_path)
    assert [p.name for p in paths] == ["latency.png", "latency_vs_size.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert float(np.std(img)) > 0.01  # not a blank canvas


def test_history_appends(tmp_path):
    path = tmp_path / "h" / "history.jsonl"
    report.append_history(path, _doc({"a": 4.0}))
    report.append_history(path, _doc({"a": 5.0}))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["median_ms"]["a/image/fp32"] for x in lines] == [4.0, 5.0]
    assert lines[0]["median_ms"]["gone/text/fp32"] is None


@pytest.mark.parametrize(("new", "passed"), [(4.8, False), (4.3, True), (3.0, True), (4.0, True)])
def test_regression_gate(new, passed):
    gate = regression.compare(_doc({"a": 4.0}), _doc({"a": new}), threshold_pct=10)
    assert gate.passed is passed
    change = {c.key: c.change_pct for c in gate.changes}["a/image/fp32"]
    assert change == pytest.approx((new - 4.0) / 4.0 * 100)
    text = "\n".join(gate.lines())
    assert ("REGRESSED" in text) is (not passed)
    assert f"({change:+.1f}%)" in text


def test_regression_new_and_missing_rows_never_fail():
    gate = regression.compare(_doc({"a": 4.0}), _doc({"b": 40.0}), threshold_pct=5)
    assert gate.passed
    text = "\n".join(gate.lines())
    assert "new       b/image/fp32" in text and "missing   a/image/fp32" in text


def test_baseline_file_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        regression.load_baseline(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(UsageError, match="not a benchmark report"):
        regression.load_baseline(tmp_path / "x.json")
    with pytest.raises(UsageError, match=">= 0"):
        regression.compare(_doc({}), _doc({}), -1)


def test_baseline_from_another_host_is_reported_but_never_gates():
    slow = _doc({"a": 40.0})
    other_cpu = _doc({"a": 4.0})
    other_cpu["device"] = {**other_cpu["device"], "cpu": "Some Other CPU (x86_64)"}
    gate = regression.compare(other_cpu, slow, threshold_pct=10)
    assert gate.regressions and gate.passed and not gate.gated
    text = "\n".join(gate.lines())
    assert "NOT GATED, baseline from another host (cpu: 'Some Other CPU (x86_64)' vs now" in text
    assert "would be FAILED" in text and "REGRESSED" in text
    same = regression.compare(_doc({"a": 4.0}), slow, threshold_pct=10)
    assert same.gated and not same.passed  # same fingerprint: the gate applies
    threads = _doc({"a": 4.0})
    threads["settings"] = {**threads["settings"], "threads": 4}
    assert "threads: 4 vs now" in regression.compare(threads, slow, 10).host_differences[0]


def test_another_runtime_version_is_another_host():
    new = _doc({"a": 40.0})
    old = _doc({"a": 4.0})
    row = next(r for r in old["rows"] if r["target"] == "a")
    row["runtime"] = "a-runtime 0.9"
    (why,) = regression.compare(old, new, 10).host_differences
    assert why.startswith("a/image/fp32 runtime: 'a-runtime 0.9' vs now")


def test_numerics_scorecard_from_the_eval_dir_guard_figures():
    """torch fp32 first, then each artifact with its task figures; none without --eval-dir figures."""
    assert "scorecard" not in _doc({"fast": 3.0})  # no row carries eval figures

    def guarded(target, precision, top1, agree, cos):
        r = _row(target, "image", 5.0) | {"precision": precision}
        r["guard"] = {"status": "passed", "cosine": 0.62, "eval_images": 300, "eval_classes": 25,
                      "eval_fp32_top1": 98.0, "eval_top1": top1, "eval_drop_points": round(98.0 - top1, 4),
                      "eval_top1_agreement": agree, "eval_cosine_mean": cos,
                      "eval_cosine_min": cos - 0.01}  # fmt: skip
        return r

    rows = [_row("plain", "image", 6.0), guarded("qa", "int8", 98.33, 0.997, 0.99912),
            guarded("qb", "int8-static", 97.33, 0.98, 0.99801)]  # fmt: skip
    doc = report.build_document(
        model={"name": "mobileclip_s0", "random_init": False, "reduced": True},
        device=DEVICE, settings=SETTINGS, rows=rows,
    )  # fmt: skip
    card = doc["scorecard"]
    assert (card["images"], card["classes"]) == (300, 25) and "note" not in card
    assert [(r["target"], r["precision"], r["top1"]) for r in card["rows"]] == [
        ("torch", "fp32", 98.0), ("qa", "int8", 98.33), ("qb", "int8-static", 97.33)
    ]  # fmt: skip
    assert card["rows"][2]["drop_points"] == pytest.approx(0.67)
    assert card["rows"][2]["cosine_min"] == pytest.approx(0.98801)
    md = report.markdown(doc).split("### Numerics scorecard", 1)[1]
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")][1:]
    assert lines[0].startswith("| torch | fp32 | image+text | 98.00 | — |")
    assert lines[2] == "| qb | int8-static | image | 97.33 | 0.67 | 0.980 | 0.99801 / 0.98801 | passed |"
    assert json.loads(json.dumps(doc))["scorecard"] == card
