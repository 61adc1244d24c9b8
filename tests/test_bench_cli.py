"""The bench CLI end to end on a stand-in bundle: stand-in targets registered by monkeypatching the registry
(a deployment runtime, a reference runtime, one unavailable here, one whose export failed)."""

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileclip_export.commands.bench import main
from mobileclip_export.export import registry
from mobileclip_export.export.pipeline import plan
from mobileclip_export.export.spec import OptionSpec, Runner, RuntimeUnavailable
from mobileclip_export.export.target import Target
from mobileclip_export.hashing import path_sha256

SEEN_OPTIONS: list[dict] = []


class _Runner(Runner):
    def __init__(self, module, label, deployment):
        self.module, self.label, self.is_deployment_runtime = module, label, deployment

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        (x,) = inputs.values()
        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).numpy()


class _Toy(Target):
    name, extension, extra = "toy", ".json", "toy"
    options = (OptionSpec("threads", "intra-op threads", None, None, int),)
    deployment = True

    def export(self, enc, precision, options, path):  # pragma: no cover - the bundle is written by the test
        raise NotImplementedError

    def load(self, path: Path, options):
        SEEN_OPTIONS.append(dict(options))
        from mobileclip_export.models import create_model
        from mobileclip_export.reparam import reparameterize_model

        spec = json.loads(Path(path).read_text())
        model = reparameterize_model(create_model(spec["model"], seed=spec["seed"], reduced=True))
        return _Runner(
            getattr(model, f"{spec['encoder']}_encoder"), f"{self.name} runtime 1.0", self.deployment
        )


class _ToyRef(_Toy):
    name, deployment, options = "toyref", False, ()


class _ToyMac(_Toy):
    name, options = "toymac", ()

    def load(self, path, options):
        raise RuntimeUnavailable("needs macOS")


class _ToyBad(_Toy):
    name, options = "toybad", ()


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    from mobileclip_export.benchmarks import peak

    # the cheap GEMM peak only (XNNPACK's needs a 30 s lowering; it has its own slow test)
    monkeypatch.setattr(peak, "PROVIDERS", {k: v for k, v in peak.PROVIDERS.items() if k == "torch.mm"})
    targets = {t.name: t for t in (_Toy(), _ToyRef(), _ToyMac(), _ToyBad())}
    for module in (registry, plan):  # plan binds the name at import
        monkeypatch.setattr(module, "all_targets", lambda: dict(targets))
    root = tmp_path / "exports" / "mobileclip_s0"
    root.mkdir(parents=True)
    arts = []
    for t in ("toy", "toyref", "toymac"):
        for enc in ("image", "text"):
            rel = f"{t}/mobileclip_s0-{enc}-fp32.json"
            (root / t).mkdir(exist_ok=True)
            (root / rel).write_text(json.dumps({"model": "mobileclip_s0", "encoder": enc, "seed": 0}))
            name = "image" if enc == "image" else "text"
            dtype = "float32" if enc == "image" else "int32"
            arts.append(
                {
                    "target": t,
                    "encoder": enc,
                    "precision": "fp32",
                    "path": rel,
                    "sha256": path_sha256(root / rel),  # bench refuses files the manifest cannot vouch for
                    "bytes": 1234567,
                    "inputs": [{"name": name, "shape": [1], "dtype": dtype}],
                    "status": "unverified",
                    "options": {},
                }
            )
    arts.append(
        {
            "target": "toybad",
            "encoder": "image",
            "precision": "fp32",
            "path": None,
            "status": "failed",
            "error": "converter exploded",
        }
    )
    (root / "manifest.json").write_text(
        json.dumps(
            {
                "model": "mobileclip_s0",
                "random_init": True,
                "export_args": {"seed": 0, "reduced": True},
                "artifacts": arts,
            }
        )
    )
    return tmp_path / "exports"


def _bench(bundle, out, runs: int, warmup: int, *extra: str) -> int:
    """``main`` on mobileclip_s0 over ``bundle``, writing to ``out``."""
    argv = ["--model", "mobileclip_s0", "--bundle-dir", str(bundle), "--output-dir", str(out)]
    return main([*argv, "--runs", str(runs), "--warmup", str(warmup), *extra])


def test_bench_end_to_end_and_gate(bundle, tmp_path, capsys):
    out = tmp_path / "bench"
    SEEN_OPTIONS.clear()
    code = _bench(bundle, out, 3, 1, "--threads", "1")
    printed = capsys.readouterr().out
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    rows = {(r["target"], r["encoder"]): r for r in doc["rows"]}
    assert set(rows) == {
        (t, e)
        for t in ("pytorch-train", "pytorch-reparam", "toy", "toyref", "toymac")
        for e in ("image", "text")
    } | {("toybad", "image")}
    toy = rows[("toy", "image")]
    assert toy["status"] == "ok" and toy["kind"] == "deployment" and toy["runtime"] == "toy runtime 1.0"
    assert toy["latency"]["n"] == 3 and toy["latency"]["median"] > 0
    assert toy["parity_cosine"] > 0.99999  # reparameterized vs train-time, same inputs
    assert toy["speedup_vs_reparam"] > 0 and toy["size_mb"] == pytest.approx(1.234567)
    assert toy["gflops_per_s"] == pytest.approx(2 * toy["gmacs"] / (toy["latency"]["median"] / 1e3))
    settings = doc["settings"]
    assert toy["fraction_of_peak"] == pytest.approx(toy["gflops_per_s"] / settings["peak_matmul_gflops"])
    assert settings["peak_source"].endswith("torch.mm") and settings["peak_gemm_n"] == 1024
    assert settings["peak_providers_gflops"] == {settings["peak_source"]: settings["peak_matmul_gflops"]}
    assert "gemm" not in {e for _, e in rows}  # peak GEMMs are timed with the rows, never reported as rows
    assert {"threads": 1} in SEEN_OPTIONS  # the thread count reaches targets that declare a threads option
    ref = rows[("toyref", "text")]
    assert ref["kind"] == "reference" and ref["speedup_vs_reparam"] is None and ref["load_ms"] > 0
    assert ref["latency"]["n"] == 1  # --reference-runs default: emulators are timed, but briefly
    assert rows[("toymac", "image")]["status"] == "skipped: needs macOS"
    assert toy["notes"] == [] and "not settable" in ref["notes"][0]  # toyref declares no thread option
    assert len(doc["settings"]["pinned_cores"]) == 1
    assert rows[("toybad", "image")]["status"] == "failed: converter exploded"
    assert rows[("pytorch-reparam", "image")]["speedup_vs_reparam"] == pytest.approx(1.0)
    assert doc["model"] == {"name": "mobileclip_s0", "random_init": True, "reduced": True, "seed": 0}
    assert [e["encoder"] for e in doc["estimates"] if "Neural Engine" in e["device"]] == ["image", "text"]
    assert "peak" in printed and settings["peak_source"] in printed
    assert "LOO MAPE" in printed and "(reference runtime)" in printed and "needs macOS" in printed
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG" and (out / "report.md").is_file()
    assert len((out / "history.jsonl").read_text().splitlines()) == 1

    # gate: a baseline 100x faster than now must fail; 100x slower must pass
    for factor, expected in ((0.01, 1), (100.0, 0)):
        base = json.loads((out / "report.json").read_text())
        for rec in base["records"]:
            if rec["metric"] == "median_inference_latency(ms)":
                rec["actualValue"] *= factor
        (tmp_path / "base.json").write_text(json.dumps(base))
        code = _bench(
            bundle,
            tmp_path / f"b{factor}",
            2,
            0,
            "--no-plots",
            "--no-estimates",
            "--target",
            "toy",
            "--encoder",
            "image",
            "--baseline",
            str(tmp_path / "base.json"),
            "--fail-on-regression",
            "10",
        )
        text = capsys.readouterr().out
        assert code == expected, text
        assert ("REGRESSED" in text) is (expected == 1)
        assert "missing   toy/text/fp32" in text  # rows not measured now are listed, never fail


def test_usage_errors(bundle, tmp_path, capsys):
    assert main(["--model", "mobileclip_s0", "--runs", "0"]) == 2
    assert main(["--model", "mobileclip_s0", "--fail-on-regression", "5"]) == 2
    assert main(["--model", "mobileclip_s0", "--bundle-dir", str(bundle), "--target", "nope"]) == 2
    assert main(["--model", "mobileclip_s0", "--bundle-dir", str(tmp_path)]) == 2
    assert main(["--model", "mobileclip_s0", "--baseline", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "--runs must be >= 1" in err and "needs --baseline" in err and "unknown target 'nope'" in err
    assert "no manifest.json" in err and "does not exist" in err


def test_bench_json_stdout_is_one_document(bundle, tmp_path, capfd):
    """With fd-level capture: stdout holds only the report (Markdown, progress, runtime chatter: stderr)."""
    code = _bench(
        bundle, tmp_path / "j", 2, 0, "--no-plots", "--target", "toy", "--json", "--encoder", "text"
    )
    out, err = capfd.readouterr()
    doc = json.loads(out)
    assert code == 0, err
    assert doc["schema"] and {r["target"] for r in doc["rows"]} == {"pytorch-train", "pytorch-reparam", "toy"}
    assert "| target |" in err and "load [toy text] done" in err and "timing done" in err


def test_bench_unknown_model_and_uncreatable_output_dir(tmp_path, capsys):
    assert main(["--model", "mobileclip_s9"]) == 2
    assert main(["--model", "mobileclip_s0", "--output-dir", "/proc/x"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'mobileclip_s9'" in err and "mobileclip_s0" in err and "export first" not in err
    assert "cannot create the output directory '/proc/x'" in err


def test_bench_profile_writes_profiles_json_and_tables(bundle, tmp_path, monkeypatch, capsys):
    from mobileclip_export.export.op_profile import OpProfile

    seen = []

    def fake_profile(self, path, inputs, threads, runs):
        seen.append((Path(path).name, sorted(inputs), threads, runs))
        prof = OpProfile("toy profiler", runs)
        for _ in range(runs):
            prof.add("Conv", 3.0)
            prof.add("Transpose", 1.0, layout=True)
            prof.add("embedding", 1.0, outside=True)
        return prof

    monkeypatch.setattr(_Toy, "profile", fake_profile)
    monkeypatch.setattr(_ToyRef, "profile", Target.profile)  # a target without a profiler
    out = tmp_path / "p"
    code = _bench(bundle, out, 2, 0, "--no-plots", "--no-estimates", "--target", "toy,toyref", "--profile")
    assert code == 0
    profiles = {(p["target"], p["encoder"]): p for p in json.loads((out / "profiles.json").read_text())}
    toy = profiles[("toy", "image")]
    assert [r["op"] for r in toy["top"]] == ["Conv", "Transpose", "embedding"]
    assert toy["share_outside_delegate"] == pytest.approx(0.2) and toy["profiled_ms_per_run"] == 5.0
    assert toy["share_layout_conversions"] == pytest.approx(0.2) and toy["top"][0]["calls_per_run"] == 1
    assert seen and all(threads == 1 and runs >= 1 for *_, threads, runs in seen)
    assert "no per-operator profiler" in profiles[("toyref", "text")]["error"]  # listed, not dropped
    report_md = (out / "report.md").read_text()
    assert "## Per-operator profiles" in report_md and "not profiled: no per-operator" in report_md
    assert "| Conv | 3.000 | 1 | 60.0 % |  |  |" in report_md


def _plain_reference_exports(folder, seed: int) -> None:
    """``torch.onnx.export`` of the reduced train-time S0 encoders (what a user would write)."""
    import torch

    from mobileclip_export.models import create_model

    model = create_model("mobileclip_s0", seed=seed, reduced=True).eval()
    size = model.image_size
    folder.mkdir()
    with torch.no_grad():
        for name, module, x in (
            ("image", model.image_encoder, torch.rand(1, 3, size, size)),
            ("text", model.text_encoder, torch.zeros(1, 77, dtype=torch.int32)),
        ):
            torch.onnx.export(module, (x,), folder / f"{name}.onnx", dynamo=True, external_data=False)


def test_reference_onnx_row_and_ratios(reduced_bundle, tmp_path, capsys, monkeypatch):
    """A folder of plain exports of the bundle's reference model (reduced S0, seed 3) is timed beside the
    bundle's artifacts: one baseline row per encoder that matches the train-time model, and the ratios."""
    from mobileclip_export.benchmarks import peak

    monkeypatch.setattr(peak, "PROVIDERS", {k: v for k, v in peak.PROVIDERS.items() if k == "torch.mm"})
    _plain_reference_exports(tmp_path / "ref", seed=3)
    out = tmp_path / "bench"
    code = _bench(
        reduced_bundle, out, 2, 0, "--no-plots", "--no-estimates", "--reference-onnx", str(tmp_path / "ref")
    )
    printed = capsys.readouterr().out
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    refs = {r["encoder"]: r for r in doc["rows"] if r["target"] == "reference-export"}
    assert set(refs) == {"image", "text"}
    for r in refs.values():
        assert r["kind"] == "baseline" and r["status"] == "ok" and r["parity_cosine"] > 0.99999
        assert "plain export of the train-time model" in r["runtime"]
    deployed = {(r["encoder"], r["target"]): r for r in doc["rows"] if r["kind"] == "deployment"}
    for ratio in doc["ratios"]:
        row_median = ratio["median_ms"]
        ref_median = refs[ratio["encoder"]]["latency"]["median"]
        assert ratio["vs_reference_export"] == pytest.approx(row_median / ref_median)
        if (ratio["encoder"], ratio["target"]) in deployed:
            assert ratio["vs_fastest_artifact"] >= 1.0
    for enc in ("image", "text"):
        assert min(r["vs_fastest_artifact"] for r in doc["ratios"] if r["encoder"] == enc) <= 1.0
    assert "vs reference export" in printed and doc["settings"]["reference_onnx"] == [str(tmp_path / "ref")]


def test_reference_onnx_usage_errors(reduced_bundle, tmp_path, capsys):
    """A file that is no ONNX model, a missing path and two files of one encoder: one line each, exit 2."""
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xff not a model")
    for arg, said in ((junk, "not an ONNX model"), (tmp_path / "missing.onnx", "no such file")):
        assert _bench(reduced_bundle, tmp_path / "o", 1, 0, "--reference-onnx", str(arg)) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err
