"""Batch sizes on every target (issue 22): each target's batch option verified at two sizes through the real
converter and runtime, verification that would catch an artifact wrong only at batch N, the manifest's
``batch`` field (and old bundles without it), predict's encoders feeding whole batches, and
``bench --batch-sizes`` on a reduced bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mobileclip_export.export.batching import chunk_plan, declared_batch, run_chunked, sizes_to_verify

from _toys import use_toy_models


def _export(
    tmp: Path, monkeypatch: Any, targets: list[str], options: dict, encoders=("image", "text")
) -> Any:
    from mobileclip_export.export import export_model

    use_toy_models(monkeypatch)
    return export_model("mobileclip_s0", targets, output_dir=tmp, precision="fp32", options=options,
                        encoders=encoders or ("image", "text"))  # fmt: skip


def _by_batch(rec: Any) -> dict[str, float]:
    return {k: v["cosine"] for k, v in rec.parity["by_batch"].items()}


# ---------------------------------------------------------------- pure helpers (no runtime)


def test_chunk_plan_covers_every_row_with_declared_sizes() -> None:
    assert chunk_plan(8, (8,)) == [(8, 8)]
    assert chunk_plan(3, (8,)) == [(3, 8)]  # padded
    assert chunk_plan(19, (1, 4, 8)) == [(8, 8), (8, 8), (1, 1), (1, 1), (1, 1)]  # no padding needed
    assert chunk_plan(5, (1, 4)) == [(4, 4), (1, 1)]
    seen: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        seen.append(len(x))
        return x[:, :1] * 2

    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    np.testing.assert_array_equal(run_chunked(run, x, (4,)), x * 2)
    assert seen == [4, 4, 4]  # the last call padded to the declared size, its padding dropped


def test_declared_batch_reads_old_bundles_from_their_inputs() -> None:
    old_dynamic = {"inputs": [{"name": "image", "shape": [-1, 3, 8, 8]}]}
    old_fixed = {"inputs": [{"name": "text", "shape": [1, 77]}]}
    enumerated = {"inputs": [{"shape": [8, 77]}], "details": {"batch_sizes": [8, 1]}}
    assert declared_batch(old_dynamic) == {"sizes": None, "dynamic": True}
    assert declared_batch(old_fixed) == {"sizes": [1], "dynamic": False}
    assert declared_batch(enumerated) == {"sizes": [1, 8], "dynamic": False}
    assert sizes_to_verify(declared_batch(enumerated)) == [1, 8]


# ---------------------------------------------------------------- every target's batch option, two sizes


@pytest.fixture(scope="module")
def batch_bundle(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One export of the toy text encoder: tflite --batch-size 3, executorch --dynamic-batch, coreml
    --batch-sizes 1,3 (the toy image tower's adaptive pool has no Core ML form with a symbolic batch; reduced
    S0 image and text: the slow cases below)."""
    for module in ("executorch", "ai_edge_litert", "coremltools"):
        pytest.importorskip(module)
    options = {
        "tflite": {"batch_size": 3},
        "executorch": {"dynamic_batch": True},
        "coreml": {"batch_sizes": "1,3"},
    }
    mp = pytest.MonkeyPatch()
    try:
        res = _export(tmp_path_factory.mktemp("batch"), mp, list(options), options, encoders=("text",))
    finally:
        mp.undo()
    return res


def test_each_target_batch_option_verified_at_two_sizes(batch_bundle: Any) -> None:
    from mobileclip_export.export.tolerances import tolerance_for

    res = batch_bundle
    assert res.ok, [a.error for a in res.artifacts]
    got = {a.target: a for a in res.artifacts}
    assert got["tflite"].batch == {"sizes": [3], "dynamic": False, "verified": [1, 3]}
    assert got["tflite"].inputs[0]["shape"] == [3, 77]
    assert got["executorch"].batch == {"sizes": None, "dynamic": True, "verified": [1, 8]}
    assert got["executorch"].inputs[0]["shape"][0] == -1
    assert got["coreml"].batch == {"sizes": [1, 3], "dynamic": False, "verified": [1, 3]}
    for a in got.values():
        by_batch = a.parity["by_batch"]
        assert a.status == "verified" and by_batch["1"]["n_rows"] >= 3, a.parity
        for n in a.batch["verified"][1:]:
            assert by_batch[str(n)]["n_rows"] == n  # one call of exactly N rows
        assert min(_by_batch(a).values()) >= tolerance_for("fp32").min_cosine, (a.target, by_batch)
    manifest = json.loads((res.bundle_dir / "manifest.json").read_text())
    assert {r["target"]: r["batch"]["verified"] for r in manifest["artifacts"]} == {
        "tflite": [1, 3], "executorch": [1, 8], "coreml": [1, 3]
    }  # fmt: skip


def test_verification_fails_an_artifact_wrong_only_at_batch_n(batch_bundle: Any, monkeypatch) -> None:
    """The real LiteRT runtime, its output rows reversed in every call: a batch-3 artifact fed one input
    runs [x, x, x] (padded), so batch-1 parity passes; only the declared size N, fed distinct rows, sees it.
    Verification must fail it and name the size."""
    from mobileclip_export.export.backends.tflite import target as tfl
    from mobileclip_export.export.pipeline import verify as V
    from mobileclip_export.export.spec import EncoderExport, TensorSpec
    from mobileclip_export.export.tolerances import tolerance_for
    from mobileclip_export.export.verify_inputs import VerifyInputs

    rec = next(a for a in batch_bundle.artifacts if a.target == "tflite")
    runner = tfl.TFLiteTarget().load(batch_bundle.bundle_dir / rec.path, rec.options)
    ids = np.zeros((3, 77), np.int32)
    ids[:, 0], ids[:, 1], ids[:, 2], ids[:, 3] = 49406, [320, 1125, 2368], [539, 1929, 320], 49407
    right = runner.run({"text": ids})  # before the corruption: the reference for this check
    real_call = tfl._LiteRTRunner._call
    monkeypatch.setattr(tfl._LiteRTRunner, "_call", lambda self, a: real_call(self, a)[::-1].copy())
    spec = TensorSpec("text", (3, 77), "int32")
    enc = EncoderExport("toy", "text", None, (), (spec,), (TensorSpec("embedding", (3, 8), "float32"),), {})
    vin = VerifyInputs("text", ids, ("a", "b", "c"))
    stats, bad, by_batch = V._encoder_parity(rec, runner, enc, vin, right, tolerance_for("fp32"), [1, 3])
    assert by_batch[1].cosine > 0.99999 and not stats.violations(tolerance_for("fp32"))
    assert by_batch[3].cosine < 0.99 and any(v.startswith("batch of 3:") for v in bad), bad


def test_artifact_encoders_feed_whole_batches(batch_bundle: Any, monkeypatch) -> None:
    """predict/index's encoders hand a batch-3 artifact 7 captions in calls of 3 (the last padded), not 7
    one-row calls, and get the row-by-row embeddings."""
    from mobileclip_export.export.backends.tflite import target as tfl
    from mobileclip_export.export.zeroshot.encoders import ArtifactEncoders, read_bundle_dir
    from mobileclip_export.models.tokenizer import tokenize

    calls: list[int] = []
    real_call = tfl._LiteRTRunner._call

    def counted(self: Any, arrays: Any) -> np.ndarray:
        calls.append(len(next(iter(arrays.values()))))
        return real_call(self, arrays)

    enc = ArtifactEncoders(read_bundle_dir(batch_bundle.bundle_dir), "tflite", need=("text",))
    ids = tokenize(
        [f"a photo of {w}" for w in ("a dog", "a cat", "the sea", "a car", "a city", "fruit", "snow")]
    )
    try:
        one_by_one = np.concatenate([enc.text(ids[i : i + 1]) for i in range(7)])
        monkeypatch.setattr(tfl._LiteRTRunner, "_call", counted)
        batched = enc.text(ids)
    finally:
        enc.close()
    assert calls == [3, 3, 3]
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)


def test_bench_batch_sizes_fields(reduced_bundle, tmp_path, monkeypatch) -> None:
    """bench --batch-sizes 1,2 on the shared reduced bundle (ONNX, batch 1): per size and runtime the
    latency, per-input figures and the row's peak memory, in report.json and report.md."""
    from mobileclip_export.benchmarks import peak
    from mobileclip_export.commands.bench import main

    monkeypatch.setattr(peak, "PROVIDERS", {k: v for k, v in peak.PROVIDERS.items() if k == "torch.mm"})

    out = tmp_path / "bench"
    argv = ["--model", "mobileclip_s0", "--bundle-dir", str(reduced_bundle), "--output-dir", str(out)]
    assert main([*argv, "--runs", "2", "--warmup", "0", "--encoder", "text", "--no-estimates", "--no-plots",
                 "--batch-sizes", "2,1"]) == 0  # fmt: skip
    doc = json.loads((out / "report.json").read_text())
    rows = {(r["target"], r["batch_size"]): r for r in doc["throughput"]}
    assert set(rows) == {("pytorch-reparam", 1), ("pytorch-reparam", 2), ("onnx", 1), ("onnx", 2)}
    for r in rows.values():
        assert r["status"] == "ok" and r["encoder"] == "text"
        med = r["latency"]["median"]
        assert r["ms_per_item"] == pytest.approx(med / r["batch_size"])
        assert r["items_per_s"] == pytest.approx(1e3 * r["batch_size"] / med)
        assert r["peak_rss_mb"] > 50 and r["peak_over_load_mb"] is not None
    assert rows[("onnx", 2)]["artifact_batch"] == "1" and rows[("onnx", 2)]["calls_per_batch"] == 2
    assert doc["settings"]["throughput"]["batch_sizes"] == [1, 2]
    assert "### Throughput by batch size (1, 2)" in (out / "report.md").read_text()
    pytest.importorskip("matplotlib")
    from mobileclip_export.benchmarks.report import plots

    assert tmp_path / "throughput.png" in plots(doc, tmp_path)


def test_bench_batch_sizes_bad_values_exit_2(tmp_path) -> None:
    from mobileclip_export.commands.bench import main

    for bad in ("0", "1,x", "1,1000"):
        assert main(["--model", "mobileclip_s0", "--batch-sizes", bad, "--output-dir", str(tmp_path)]) == 2


@pytest.mark.slow
def test_coreml_enumerated_reduced_s0_image_and_text(tmp_path) -> None:
    """Reduced S0 at --batch-sizes 1,4: both encoders run by the MIL executor at 1 and 4 (the text program's
    shape arithmetic concatenates scalars, which the executor once refused), within the fp32 tolerance."""
    pytest.importorskip("coremltools")
    from mobileclip_export.export import export_model

    res = export_model("mobileclip_s0", ["coreml"], output_dir=tmp_path, reduced=True, precision="fp32",
                       options={"batch_sizes": "1,4"})  # fmt: skip
    assert res.ok
    for a in res.artifacts:
        assert a.status == "verified" and a.batch["verified"] == [1, 4]
        assert min(_by_batch(a).values()) > 0.99999, a.parity["by_batch"]


@pytest.mark.slow
def test_fixed_batch_reduced_s0_executorch_tflite(tmp_path) -> None:
    """Real reduced S0 (randomized BN): --batch-size 4 verified at 1 and 4 on ExecuTorch and LiteRT."""
    from mobileclip_export.export import export_model

    res = export_model("mobileclip_s0", ["executorch", "tflite"], output_dir=tmp_path, reduced=True,
                       precision="fp32", options={"batch_size": 4})  # fmt: skip
    assert res.ok
    for a in res.artifacts:
        assert a.batch == {"sizes": [4], "dynamic": False, "verified": [1, 4]}
        assert min(_by_batch(a).values()) > 0.99999, a.parity["by_batch"]


@pytest.mark.slow
def test_coreai_fixed_batch(tmp_path) -> None:
    """Core AI --batch-size 2, reduced S0 text (the Linux reference runtime is slow): verified at 1 and 2. The
    toy text encoder's nn.MultiheadAttention fails coreai-torch's export at batch 2 (t() on a 4-D tensor)."""
    pytest.importorskip("coreai")
    from mobileclip_export.export import export_model

    res = export_model("mobileclip_s0", ["coreai"], output_dir=tmp_path, reduced=True, precision="fp32",
                       encoders=("text",), options={"batch_size": 2})  # fmt: skip
    (a,) = res.artifacts
    assert a.status == "verified", a.error
    assert a.batch == {"sizes": [2], "dynamic": False, "verified": [1, 2]}
    assert min(_by_batch(a).values()) > 0.99999, a.parity["by_batch"]
