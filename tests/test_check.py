"""Bundle integrity: `check` re-hashes every file and re-runs the golden vectors; one flipped byte in an
artifact or a tokenizer file makes it exit 1 naming the file, and bench/predict refuse the artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mobileclip_export.cli import main
from mobileclip_export.errors import IntegrityError
from mobileclip_export.export.bundle.integrity import require_intact


@pytest.fixture
def bundle(reduced_bundle: Path) -> Path:
    return reduced_bundle


def _flip(path: Path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_intact_bundle_passes(bundle, capsys) -> None:
    assert main(["check", "--bundle", str(bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["problems"] == [] and report["n_files"] > 10
    assert {r["status"] for r in report["parity"].values()} == {"passed"} and len(report["parity"]) == 2
    assert main(["check", "--bundle", str(bundle.parent)]) == 0  # the parent of one bundle works too


def test_flipped_artifact_byte(bundle, tmp_path, capsys) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / bundle.name))
    image = copy / "onnx" / "mobileclip_s0-image-fp32.onnx"
    _flip(image)
    assert main(["check", "--bundle", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH onnx/mobileclip_s0-image-fp32.onnx" in out and "text-fp32.onnx: " not in out
    with pytest.raises(IntegrityError, match="mobileclip_s0-image-fp32.onnx"):
        require_intact(image)
    assert require_intact(copy / "onnx" / "mobileclip_s0-text-fp32.onnx")["encoder"] == "text"
    argv = [
        "bench",
        "--model",
        "mobileclip_s0",
        "--bundle-dir",
        str(copy),
        "--output-dir",
        str(tmp_path / "b"),
    ]
    assert main([*argv, "--runs", "1", "--warmup", "0", "--target", "onnx"]) == 1
    assert "mobileclip_s0-image-fp32.onnx: does not match its manifest" in capsys.readouterr().err


def test_flipped_tokenizer_byte(bundle, tmp_path, capsys) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / bundle.name))
    _flip(copy / "onnx" / "merges.txt", 10)
    assert main(["check", "--bundle", str(copy), "--no-parity"]) == 1
    assert "MISMATCH onnx/merges.txt: sha256 differs" in capsys.readouterr().out


def test_no_bundle_is_usage_error(tmp_path, capsys) -> None:
    assert main(["check", "--bundle", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
