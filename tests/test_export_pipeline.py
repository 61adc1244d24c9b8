"""export_model: bundle layout, manifest, atomicity, verification statuses, option routing, multifunction."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileclip_export.errors import UsageError, VerificationError
from mobileclip_export.export import registry
from mobileclip_export.export.backends.onnx.target import OnnxTarget
from mobileclip_export.export.pipeline import api, plan
from mobileclip_export.export.pipeline.api import export_model
from mobileclip_export.export.spec import ArtifactInfo, Runner, RuntimeUnavailable
from mobileclip_export.export.target import Target
from mobileclip_export.hashing import path_sha256

from _toys import use_toy_models


@pytest.fixture
def toy(monkeypatch):
    use_toy_models(monkeypatch)


def _leftovers(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_bundle_layout_and_manifest(tmp_path, toy) -> None:
    res = export_model("mobileclip_s0", "onnx", output_dir=tmp_path, seed=7)
    assert res.ok and res.bundle_dir == tmp_path / "mobileclip_s0"
    m = json.loads(res.manifest_path.read_text())
    assert m["schema_version"] == 1 and m["model"] == "mobileclip_s0"
    assert m["weights"]["source"] == "random init, seed 7" and m["random_init"] is True
    assert (
        math.isclose(m["logit_scale"]["value"], 1 / 0.07, rel_tol=1e-6) and m["logit_scale"]["max"] == 100.0
    )
    assert m["preprocessing"]["mean"] == [0.0, 0.0, 0.0] and m["preprocessing"]["color_space"] == "RGB"
    assert m["tokenizer"]["pad_id"] == 0 and m["tokenizer"]["context_length"] == 77
    assert {"torch", "onnx", "onnxruntime", "mobileclip_export"} <= set(m["tool_versions"])
    assert m["export_args"]["seed"] == 7 and m["export_args"]["options"]["onnx"]["opset"] == 18
    for a in m["artifacts"]:
        p = res.bundle_dir / a["path"]
        assert p.name == f"mobileclip_s0-{a['encoder']}-fp32.onnx" and p.parent.name == "onnx"
        assert path_sha256(p) == a["sha256"] and p.stat().st_size == a["bytes"]
        assert (
            a["parity"]["runtime"].startswith("onnxruntime") and a["parity"]["is_deployment_runtime"] is True
        )
    onnx_dir = res.bundle_dir / "onnx"
    assert {"bpe_simple_vocab_16e6.txt.gz", "LICENSE-clip-bpe.txt", "mobileclip_tokenizer.json"} <= {
        p.name for p in onnx_dir.iterdir()
    }
    assert json.loads((onnx_dir / "mobileclip_tokenizer.json").read_text())["eot_id"] == 49407
    assert json.loads((onnx_dir / "tokenizer.json").read_text())["padding"]["pad_id"] == 0  # Hugging Face's
    assert _leftovers(tmp_path) == [] and not list(res.bundle_dir.rglob(".staging"))


def test_crash_mid_export_leaves_no_bundle(tmp_path, toy, monkeypatch) -> None:
    real = OnnxTarget.export

    def crash_on_text(self, enc, precision, options, path):
        if enc.encoder == "text":
            Path(path).write_bytes(b"half an onnx file")
            raise KeyboardInterrupt
        return real(self, enc, precision, options, path)

    monkeypatch.setattr(OnnxTarget, "export", crash_on_text)
    with pytest.raises(KeyboardInterrupt):
        export_model("mobileclip_s0", "onnx", output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_crash_with_force_keeps_the_old_bundle(tmp_path, toy, monkeypatch) -> None:
    first = export_model("mobileclip_s0", "onnx", output_dir=tmp_path, encoders="image")
    before = first.manifest_path.read_bytes()

    def crash(self, enc, precision, options, path):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxTarget, "export", crash)
    with pytest.raises(KeyboardInterrupt):
        export_model("mobileclip_s0", "onnx", output_dir=tmp_path, force=True)
    assert first.manifest_path.read_bytes() == before
    art = json.loads(before)["artifacts"][0]
    assert path_sha256(first.bundle_dir / art["path"]) == art["sha256"]
    assert _leftovers(tmp_path) == []


def test_one_failed_encoder_is_recorded_not_listed(tmp_path, toy, monkeypatch) -> None:
    real = OnnxTarget.export

    def fail_text(self, enc, precision, options, path):
        if enc.encoder == "text":
            Path(path).write_bytes(b"junk")
            raise RuntimeError("converter exploded")
        return real(self, enc, precision, options, path)

    monkeypatch.setattr(OnnxTarget, "export", fail_text)
    res = export_model("mobileclip_s0", "onnx", output_dir=tmp_path)
    assert not res.ok
    by = {a.encoder: a for a in res.artifacts}
    assert by["image"].status == "verified" and by["text"].status == "failed"
    assert by["text"].path is None and "converter exploded" in by["text"].error
    m = json.loads(res.manifest_path.read_text())
    assert m["ok"] is False
    listed = [a["path"] for a in m["artifacts"] if a["path"]]
    assert listed == ["onnx/mobileclip_s0-image-fp32.onnx"]
    files = sorted(p.name for p in (res.bundle_dir / "onnx").iterdir())
    assert files == ["mobileclip_s0-image-fp32.onnx"]  # no junk, no tokenizer without a text model


def test_runtime_unavailable_is_skipped_with_structural_checks(tmp_path, toy, monkeypatch) -> None:
    def no_runtime(self, path, options):
        raise RuntimeUnavailable("needs macOS")

    monkeypatch.setattr(OnnxTarget, "load", no_runtime)
    res = export_model("mobileclip_s0", "onnx", output_dir=tmp_path, encoders="text")
    (a,) = res.artifacts
    assert res.ok and a.status == "unverified" and a.parity["status"] == "skipped: needs macOS"
    assert a.parity["cosine"] is None
    assert (
        a.details["structural_checks"]["problems"] == []
        and a.details["structural_checks"]["n_batchnorm"] == 0
    )


def test_no_verify(tmp_path, toy) -> None:
    res = export_model("mobileclip_s0", "onnx", output_dir=tmp_path, encoders="image", verify=False)
    (a,) = res.artifacts
    assert a.status == "unverified" and a.parity["status"] == "skipped: --no-verify" and a.path


def test_leftover_batchnorm_fails_structural_check(tmp_path, monkeypatch) -> None:
    use_toy_models(monkeypatch, batchnorm=True, identity_reparam=True)
    res = export_model("mobileclip_s0", "onnx", output_dir=tmp_path, encoders="image")
    (a,) = res.artifacts
    assert a.status == "failed" and "BatchNormalization" in a.error
    assert res.bundle_dir is None and list(tmp_path.iterdir()) == []


def test_reparam_parity_failure_raises_with_numbers(tmp_path, toy, monkeypatch) -> None:
    def broken_reparam(model):
        import copy

        new = copy.deepcopy(model)
        with torch.no_grad():
            new.image_encoder.model.stem.weight.mul_(1.01)
        return new

    monkeypatch.setattr(api, "_reparameterize", broken_reparam)
    with pytest.raises(VerificationError, match=r"image encoder's outputs.*max\|diff\|"):
        export_model("mobileclip_s0", "onnx", output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_options_routing() -> None:
    p = plan.plan_export("onnx", "both", None, {"opset": 19, "dynamic_batch": True})
    want = {"opset": 19, "dynamic_batch": True, "num_threads": None, "image_input": "float-nchw"}
    want.update(keep_fp=None, auto_keep_fp=False)  # compression options (export.compression)
    assert p.targets[0].options == want
    p = plan.plan_export(["onnx"], "image", None, {"onnx": {"opset": 20}})
    assert p.targets[0].options["opset"] == 20 and p.encoders == ("image",)
    with pytest.raises(UsageError, match="--no-such-option"):
        plan.plan_export("onnx", "both", None, {"no_such_option": 1})
    # --target all: each target gets only the options it declares
    p = plan.plan_export("all", "both", None, {"opset": 18})
    for tp in p.targets:
        assert ("opset" in tp.options) == (tp.target.name == "onnx")


def test_target_aliases_and_order() -> None:
    targets, is_all = plan.resolve_targets("ort,onnx")
    assert [t.name for t in targets] == ["onnx"] and not is_all
    names = list(registry.all_targets())
    targets, is_all = plan.resolve_targets(list(reversed(names)))
    assert [t.name for t in targets] == names and not is_all  # registry order, whatever the request order
    assert plan.resolve_targets(["onnx", "ALL"])[1] is True


class _TorchRunner(Runner):
    label = "torch (fake multifunction)"
    is_deployment_runtime = False

    def __init__(self, modules):
        self.modules = modules

    def run(self, inputs):
        ((name, x),) = inputs.items()
        with torch.no_grad():
            return self.modules[name](torch.from_numpy(np.asarray(x))).numpy()


class _MultiTarget(Target):
    name = "fakemulti"
    extension = ".fake"
    extra = "fake"
    options = ()
    supports_multifunction = True
    last: dict = {}

    def export(self, enc, precision, options, path):  # pragma: no cover - multifunction only
        raise AssertionError("single-encoder export must not be called with --multifunction")

    def export_multifunction(self, encs, precision, options, path):
        """One artifact, two functions; the runner takes {"image": x} or {"text": ids}."""
        _MultiTarget.last = {e.encoder: e.module for e in encs}
        Path(path).write_bytes(b"two functions")
        return ArtifactInfo(Path(path), tuple(e.inputs[0] for e in encs), encs[0].outputs)

    def load(self, path, options):
        return _TorchRunner(_MultiTarget.last)


def test_multifunction_path(tmp_path, toy, monkeypatch) -> None:
    from mobileclip_export.export.spec import OptionSpec

    _MultiTarget.options = (OptionSpec("multifunction", "one artifact for both encoders", False, None, bool),)
    fake = {**registry.all_targets(), "fakemulti": _MultiTarget()}
    monkeypatch.setattr(registry, "all_targets", lambda: fake)
    monkeypatch.setattr(plan, "all_targets", lambda: fake)
    res = export_model("mobileclip_s0", "fakemulti", output_dir=tmp_path, options={"multifunction": True})
    (a,) = res.artifacts
    assert a.encoder == "image+text" and a.status == "verified", a.error
    assert set(a.parity["by_encoder"]) == {"image", "text"} and a.parity["is_deployment_runtime"] is False
    assert a.path == "fakemulti/mobileclip_s0-image-text-fp32.fake"
    assert (res.bundle_dir / "fakemulti" / "mobileclip_tokenizer.json").is_file()
    assert (res.bundle_dir / "fakemulti" / "vocab.json").is_file()
    with pytest.raises(UsageError, match="both encoders"):
        plan.plan_export("fakemulti", "image", None, {"multifunction": True})


def test_force_keeps_other_artifacts_of_the_same_weights(tmp_path, toy) -> None:
    first = export_model("mobileclip_s0", "onnx", output_dir=tmp_path, encoders="image")
    img = first.artifacts[0]
    second = export_model("mobileclip_s0", "onnx", output_dir=tmp_path, encoders="text", force=True)
    m = json.loads(second.manifest_path.read_text())
    assert [(a["encoder"], a["path"]) for a in m["artifacts"]] == [
        ("text", "onnx/mobileclip_s0-text-fp32.onnx"),
        ("image", img.path),
    ]
    kept = m["artifacts"][1]
    assert kept["sha256"] == img.sha256 == path_sha256(second.bundle_dir / img.path)
    assert "carried over" in kept["notes"][-1]
    # other weights (another seed): the old artifacts no longer describe this model and are dropped
    third = export_model("mobileclip_s0", "onnx", output_dir=tmp_path, encoders="text", force=True, seed=1)
    m = json.loads(third.manifest_path.read_text())
    assert [a["encoder"] for a in m["artifacts"]] == ["text"]
    assert not (third.bundle_dir / img.path).exists()


def test_all_continues_past_failures(tmp_path, toy, monkeypatch) -> None:
    """--target all: a missing extra and a converter crash are recorded; the other targets still export."""
    others = [t for name, t in registry.all_targets().items() if name != "onnx"]
    if not others:
        pytest.skip("only the onnx backend is present")

    def boom(self, enc, precision, options, path):
        raise RuntimeError(f"{self.name} converter crashed")

    for t in others:
        monkeypatch.setattr(type(t), "export", boom)
    monkeypatch.setattr(type(others[0]), "missing_dependencies", lambda self: ["somepkg"])
    res = export_model("mobileclip_s0", "all", output_dir=tmp_path, encoders="image")
    assert not res.ok
    by = {a.target: a for a in res.artifacts}
    assert by["onnx"].status == "verified"
    assert "pip install 'mobileclip-export[" in by[others[0].name].error
    for t in others[1:]:
        assert by[t.name].status == "failed" and "converter crashed" in by[t.name].error
    m = json.loads(res.manifest_path.read_text())
    assert [a["path"] for a in m["artifacts"] if a["path"]] == ["onnx/mobileclip_s0-image-fp32.onnx"]


def test_checkpoint_sha256_recorded(tmp_path, monkeypatch) -> None:
    from mobileclip_export.models import create_model

    src = create_model("mobileclip_s0", reduced=True, seed=5)
    ckpt = tmp_path / "s0.pt"
    torch.save(src.state_dict(), ckpt)
    monkeypatch.setattr(OnnxTarget, "export", _fake_onnx_export)
    res = export_model(
        "mobileclip_s0", "onnx", checkpoint=ckpt, reduced=True, output_dir=tmp_path / "out", verify=False
    )
    m = json.loads(res.manifest_path.read_text())
    assert res.random_init is False and m["random_init"] is False and res.warnings == []
    assert m["weights"]["sha256"] == path_sha256(ckpt) and m["weights"]["checkpoint"] == "s0.pt"
    assert _SEEN["metadata"]["weights"] == f"checkpoint sha256 {path_sha256(ckpt)}"


_SEEN: dict = {}


def _fake_onnx_export(self, enc, precision, options, path):
    """Records what the pipeline hands a backend; writes a tiny valid artifact (no conversion cost)."""
    import onnx
    from onnx import helper

    _SEEN["metadata"] = dict(enc.metadata)
    dtype = onnx.TensorProto.INT32 if enc.encoder == "text" else onnx.TensorProto.FLOAT
    out = helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, None)
    node = helper.make_node("Cast", [enc.inputs[0].name], ["embedding"], to=onnx.TensorProto.FLOAT)
    inp = helper.make_tensor_value_info(enc.inputs[0].name, dtype, None)
    graph = helper.make_graph([node], "g", [inp], [out])
    model = helper.make_model(graph)
    model.metadata_props.add(key="model", value=enc.model_name)
    onnx.save(model, str(path))
    return ArtifactInfo(Path(path), enc.inputs, enc.outputs)


def test_stale_staging_dirs_of_killed_exports_are_swept(tmp_path) -> None:
    """A SIGKILLed export leaves `.{model}.partial-{pid}-*`; the next export removes it, never a live one."""
    import subprocess
    import sys

    from mobileclip_export.export.bundle.layout import BundleWriter

    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    stale = tmp_path / f".mobileclip_s0.partial-{dead.stdout.strip()}-abc"
    live = tmp_path / f".mobileclip_s0.partial-{os.getpid()}-def"
    other = tmp_path / ".mobileclip_s1.partial-1-ghi"
    for d in (stale, live, other):
        (d / "onnx").mkdir(parents=True)
    writer = BundleWriter(tmp_path, "mobileclip_s0", force=False)
    tmp = writer.open()
    assert not stale.exists() and live.exists() and other.exists()
    assert tmp.name.startswith(f".mobileclip_s0.partial-{os.getpid()}-")
    writer.abort()


def test_golden_vectors_reuse_the_verification_runs(tmp_path, toy, monkeypatch) -> None:
    """The golden stage loads no artifact that verification already ran: it writes what verification
    recorded while the runtime was loaded (and those embeddings are what a rerun here gives)."""
    from mobileclip_export.export.bundle import golden

    def reload(*args, **kwargs):
        raise AssertionError("the golden stage loaded an artifact verification had already run")

    monkeypatch.setattr(golden, "_run_artifact", reload)
    res = export_model("mobileclip_s0", "onnx", output_dir=tmp_path)
    assert res.ok, [a.error for a in res.artifacts]
    monkeypatch.undo()
    m = json.loads(res.manifest_path.read_text())
    index = json.loads((res.bundle_dir / golden.INDEX).read_text())
    assert {a["path"] for a in m["artifacts"]} == set(index["artifacts"])
    assert all(r["runtime"].startswith("onnxruntime") for r in index["artifacts"].values())
    rerun = golden.recheck(res.bundle_dir, m)
    assert {k: v["status"] for k, v in rerun.items()} == dict.fromkeys(index["artifacts"], "passed")
    assert all(v["vs_stored"]["max_abs_diff"] == 0.0 for v in rerun.values())
    assert "golden" not in m["artifacts"][0]  # the in-memory runs never reach the manifest


def test_a_slow_reference_target_is_verified_beside_the_conversions(tmp_path, toy, monkeypatch) -> None:
    """``verify_beside``: verification runs in the background thread, results and order are unchanged."""
    import threading

    from mobileclip_export.export.pipeline import verify as V

    threads: list[str] = []
    real = V.verify_artifact

    def spy(rec, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(rec, *args, **kwargs)

    monkeypatch.setattr(V, "verify_artifact", spy)
    monkeypatch.setattr(OnnxTarget, "verify_beside", True)
    res = export_model("mobileclip_s0", "onnx", output_dir=tmp_path)
    assert res.ok and [(a.encoder, a.status) for a in res.artifacts] == [
        ("image", "verified"),
        ("text", "verified"),
    ]
    assert len(threads) == 2 and all(t.startswith("verify-beside") for t in threads), threads
    m = json.loads(res.manifest_path.read_text())
    assert [a["encoder"] for a in m["artifacts"]] == ["image", "text"]
    assert all(path_sha256(res.bundle_dir / a["path"]) == a["sha256"] for a in m["artifacts"])
