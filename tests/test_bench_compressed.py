"""bench with several precisions: a compressed artifact is exported (real converter and quantizer), timed
next to its fp32 artifact in the same run, and its row carries the accuracy-guard figures of its export."""

import json

import pytest

from mobileclip_export.commands.bench import main

pytest.importorskip("onnxruntime")


def test_bench_times_int8_next_to_fp32_with_guard_figures(tmp_path):
    out = tmp_path / "bench"
    argv = ["--model", "mobileclip_s0", "--reduced", "--target", "onnx", "--encoder", "text"]
    argv += ["--precision", "fp32,int8", "--output-dir", str(out), "--runs", "3", "--warmup", "1"]
    assert main([*argv, "--no-plots", "--no-estimates"]) == 0
    doc = json.loads((out / "report.json").read_text())
    rows = {r["precision"]: r for r in doc["rows"] if r["target"] == "onnx"}
    assert set(rows) == {"fp32", "int8"}
    fp32, int8 = rows["fp32"], rows["int8"]
    for row in (fp32, int8):
        assert row["status"] == "ok" and row["latency"]["n"] == 3 and row["size_mb"] > 0
    assert int8["size_mb"] < 0.5 * fp32["size_mb"]  # int8 weights: about a quarter of fp32
    assert fp32["guard"] is None  # uncompressed: no guard ran
    guard = int8["guard"]
    assert guard["status"] == "passed" and 0.9 < guard["cosine"] <= 1.0
    assert 0.0 <= guard["top1_agreement"] <= 1.0 and 0.0 <= guard["top5_agreement"] <= 1.0
    assert guard["mean_abs_prob_change"] >= 0.0
    assert int8["parity_cosine"] == pytest.approx(guard["cosine"], abs=0.05)  # bench's own inputs agree
    text = (out / "report.md").read_text()
    table = text.split("### Accuracy guard", 1)[1]
    assert "| onnx | text | int8 |" in table and "| passed |" in table
    assert "| fp32 |" not in table  # only compressed artifacts have a guard row
