"""A bundle is untrusted input: every command reads it through one reader that validates the manifest and
keeps every path inside the bundle. A sentinel outside the bundle stays byte-identical after check, predict,
bench, export --force and matrix --merge on hostile bundles; a refusal is one line, exit 1 or 2.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from mobileclip_export.cli import main
from mobileclip_export.export.pipeline.api import export_model
from mobileclip_export.hashing import path_sha256

IMAGE = "onnx/mobileclip_s0-image-fp32.onnx"
PACKAGE = Path(__file__).resolve().parent.parent  # the source folders of mobileclip_export


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """One reduced S0 bundle (onnx, fp32) per module; every case works on a copy."""
    res = export_model("mobileclip_s0", "onnx", output_dir=tmp_path_factory.mktemp("src"), reduced=True)
    assert res.ok and res.bundle_dir is not None
    return res.bundle_dir


def _copy(source: Path, where: Path) -> Path:
    return Path(shutil.copytree(source, where / "out" / source.name, symlinks=True))


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def _write(bundle: Path, manifest: dict[str, Any]) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sentinel(tmp_path: Path, data: bytes) -> Path:
    """A file outside the bundle (and the output dir) that no command may read into use, write or delete."""
    path = tmp_path / "outside" / "sentinel.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def _argv(command: str, bundle: Path, tmp_path: Path) -> list[str]:
    if command == "check":
        return ["check", "--bundle", str(bundle), "--no-parity"]
    if command == "predict":
        img = str(bundle / "golden" / "astronaut.png")
        return ["predict", "--bundle", str(bundle), "--target", "onnx", "--image", img, "--labels", "a,b"]
    out = str(tmp_path / "bench")
    return ["bench", "--model", "mobileclip_s0", "--bundle-dir", str(bundle), "--output-dir", out,
            "--runs", "1", "--warmup", "0", "--target", "onnx"]  # fmt: skip


def _one_line_refusal(capsys, code: int, expected_code: int, pattern: str) -> str:
    err = capsys.readouterr().err
    assert code == expected_code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert re.search(pattern, err), err
    return err


# ---- escaping paths (relative `..`, absolute, symlinked): check / predict / bench refuse them


def _escape(kind: str, bundle: Path, sentinel: Path) -> None:
    """Point the image record at ``sentinel`` (same bytes and sha256, so only the path betrays it)."""
    m = _manifest(bundle)
    rec = next(a for a in m["artifacts"] if a["path"] == IMAGE)
    if kind == "relative":
        rec["path"] = "onnx/../../../outside/sentinel.onnx"
    elif kind == "absolute":
        rec["path"] = str(sentinel)
    else:  # symlink: the manifest is untouched, the file is a link leaving the bundle
        (bundle / IMAGE).unlink()
        (bundle / IMAGE).symlink_to(sentinel)
    _write(bundle, m)


@pytest.mark.parametrize("kind", ["relative", "absolute", "symlink"])
@pytest.mark.parametrize("command", ["check", "predict", "bench"])
def test_escaping_artifact_path_is_refused(source, tmp_path, capsys, kind, command) -> None:
    bundle = _copy(source, tmp_path)
    sentinel = _sentinel(tmp_path, (source / IMAGE).read_bytes())
    before = _sha(sentinel)
    _escape(kind, bundle, sentinel)
    code = main(_argv(command, bundle, tmp_path))
    why = {"relative": "leaves the bundle folder", "absolute": "is an absolute path"}.get(kind, "outside the")
    _one_line_refusal(capsys, code, 1, rf"artifacts\[\d\]\.path: .*{why}")
    assert _sha(sentinel) == before


def test_manifest_naming_a_checkpoint_is_not_read(source, tmp_path, capsys) -> None:
    """A checkpoint path in export_args is never opened: only one named on the command line."""
    bundle = _copy(source, tmp_path)
    sentinel = _sentinel(tmp_path, b"not a checkpoint, and not ours to read\n")
    m = _manifest(bundle)
    m["weights"] = {"source": "checkpoint", "random_init": False, "checkpoint": "s0.pt", "sha256": "0" * 64}
    m["export_args"]["checkpoint"] = str(sentinel)
    m["random_init"] = False
    _write(bundle, m)
    img = str(bundle / "golden" / "astronaut.png")
    argv = ["predict", "--bundle", str(bundle), "--target", "pytorch", "--image", img, "--labels", "a,b"]
    code = main(argv)
    _one_line_refusal(capsys, code, 2, "pass --checkpoint PATH")
    code = main(_argv("bench", bundle, tmp_path))
    _one_line_refusal(capsys, code, 2, "exported from checkpoint 's0.pt'; pass --checkpoint PATH")


# ---- wrong shape and future versions: one line naming the first bad field


def _artifacts_dict(m: dict) -> None:
    m["artifacts"] = {str(i): a for i, a in enumerate(m["artifacts"])}


def _missing_key(m: dict) -> None:
    del m["artifacts"][1]["precision"]


def _wrong_type(m: dict) -> None:
    m["artifacts"][1]["path"] = 3


def _huge_int(m: dict) -> None:
    m["artifacts"][0]["bytes"] = 10**400


def _infinite_scale(m: dict) -> None:
    m["logit_scale"]["value"] = float("inf")  # json writes Infinity, Python's json reads it back


SHAPES = {
    "artifacts-dict": (_artifacts_dict, r"manifest\.json: artifacts: expected a list, got an object"),
    "missing-key": (_missing_key, r"manifest\.json: artifacts\[1\]: missing required key 'precision'"),
    "wrong-type": (_wrong_type, r"manifest\.json: artifacts\[1\]\.path: expected a string, got 3$"),
    "huge-int": (_huge_int, r"artifacts\[0\]\.bytes: a 401-digit number is out of range"),
    "infinite": (_infinite_scale, r"logit_scale\.value: inf is out of range"),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("command", ["check", "predict", "bench"])
def test_wrong_shape_manifest_names_the_field(source, tmp_path, capsys, shape, command) -> None:
    bundle = _copy(source, tmp_path)
    m = _manifest(bundle)
    mutate, pattern = SHAPES[shape]
    mutate(m)
    _write(bundle, m)
    code = main(_argv(command, bundle, tmp_path))
    _one_line_refusal(capsys, code, 1, pattern)


@pytest.mark.parametrize("version", [2, "3.1"])
def test_newer_schema_major_is_refused_naming_both(source, tmp_path, capsys, version) -> None:
    bundle = _copy(source, tmp_path)
    m = _manifest(bundle)
    m["schema_version"] = version
    _write(bundle, m)
    code = main(_argv("check", bundle, tmp_path))
    _one_line_refusal(capsys, code, 1, rf"schema_version {version} is newer .*\(major 1; it writes 1\)")


def test_newer_minor_and_dynamic_batch_still_open(source, tmp_path, capsys) -> None:
    bundle = _copy(source, tmp_path)
    m = _manifest(bundle)
    m.update(schema_version="1.7", something_new={"x": [1, 2]})
    m["artifacts"][0]["new_field"] = "ignored"
    m["artifacts"][0]["inputs"][0]["shape"][0] = -1  # what --dynamic-batch writes
    _write(bundle, m)
    assert main(_argv("check", bundle, tmp_path)) == 0, capsys.readouterr().err


def test_one_manifest_name_and_one_lookup_in_the_product() -> None:
    folders = ("core", "export", "benchmarks", "matrix", "models", "reparam", "library")
    sources = [p for folder in folders for p in (PACKAGE / folder).rglob("*.py")]
    text = {p: p.read_text("utf-8") for p in sources}
    names = [p for p, t in text.items() if re.search(r"""^\w+\s*=\s*["']manifest\.json["']""", t, re.M)]
    lookups = [p for p, t in text.items() if re.search(r"^def \w*find_manifest\w*\(", t, re.M)]
    assert [p.name for p in names] == ["reader.py"] and [p.name for p in lookups] == ["reader.py"]


# ---- writers: export --force carrying over earlier records, matrix --merge


def test_force_export_never_writes_outside_through_a_carried_record(source, tmp_path, capsys, caplog) -> None:
    """The reported exploit: a record climbing out through a symlinked folder and `..`, whose bytes
    (supplied by the bundle) landed on a file outside the output dir when carried over."""
    bundle = _copy(source, tmp_path)  # tmp/out/mobileclip_s0
    sentinel = tmp_path / "victim.txt"  # in the output dir's parent
    sentinel.write_bytes(b"precious\n")
    deep = bundle / "p" / "q" / "r" / "s"
    deep.mkdir(parents=True)
    (deep / "x.bin").write_bytes(b"x")
    (bundle / "onnx" / "deep").symlink_to(deep)  # carried first: a real folder onnx/deep in the temp bundle
    (bundle / "victim.txt").write_bytes(b"attacker bytes\n")
    m = _manifest(bundle)
    rel = "onnx/deep/../../../../victim.txt"  # on disk: bundle/victim.txt; from the temp bundle: tmp_path/
    m["artifacts"] += [
        {"target": "onnx", "encoder": "text", "precision": "fp16", "path": "onnx/deep",
         "sha256": path_sha256(bundle / "onnx" / "deep"), "status": "verified"},
        {"target": "onnx", "encoder": "image", "precision": "int8", "path": rel,
         "sha256": _sha(bundle / "victim.txt"), "status": "verified"},
    ]  # fmt: skip
    _write(bundle, m)
    code = main(["--model", "mobileclip_s0", "--target", "onnx", "--reduced", "--output-dir",
                 str(bundle.parent), "--force", "--no-verify"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert sentinel.read_bytes() == b"precious\n"
    assert re.search(r"not carried over: .*artifacts\[3\]\.path: .* leaves the bundle", caplog.text)
    assert all(a["precision"] == "fp32" for a in _manifest(bundle)["artifacts"])


def test_force_export_does_not_carry_a_symlink_leaving_the_bundle(source, tmp_path, capsys, caplog) -> None:
    bundle = _copy(source, tmp_path)
    sentinel = _sentinel(tmp_path, b"outside bytes\n")
    (bundle / "onnx" / "evil-int8.onnx").symlink_to(sentinel)
    m = _manifest(bundle)
    rec = {"target": "onnx", "encoder": "image", "precision": "int8", "path": "onnx/evil-int8.onnx"}
    m["artifacts"].append({**rec, "sha256": _sha(sentinel), "status": "verified"})
    _write(bundle, m)
    code = main(["--model", "mobileclip_s0", "--target", "onnx", "--reduced", "--output-dir",
                 str(bundle.parent), "--force", "--no-verify"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert re.search(r"not carried over: .*artifacts\[2\]\.path: 'onnx/evil-int8.onnx' .*outsid", caplog.text)
    assert not (bundle / "onnx" / "evil-int8.onnx").exists()
    assert sentinel.read_bytes() == b"outside bytes\n"


def _matrix_source(source: Path, where: Path) -> tuple[Path, dict[str, Any], Path]:
    """A matrix output folder (matrix.json + one store cell) built from the bundle's image artifact."""
    from mobileclip_export.matrix.report import row_for

    m = _manifest(source)
    rec = next(a for a in m["artifacts"] if a["path"] == IMAGE)
    job = {"model": "mobileclip_s0", "target": "onnx", "precision": "fp32", "encoder": "image"}
    bare = {k: v for k, v in m.items() if k != "artifacts"}
    cell = {"key": "ab" * 32, "job": job, "record": rec, "manifest": bare}
    row = row_for(cell, False)
    folder = Path(shutil.copytree(source, where / "cells" / row["cell"]))
    (folder / "cell.json").write_text(json.dumps(cell))
    (where / "matrix.json").write_text(json.dumps({"rows": [row]}))
    return where, row, folder


def _merge(src: Path, output: Path) -> int:
    return main(["matrix", "--merge", str(src), "--output-dir", str(output), "--json"])


def test_matrix_merge_of_an_intact_source_works(source, tmp_path, capsys) -> None:
    src, _, _ = _matrix_source(source, tmp_path / "src")
    assert _merge(src, tmp_path / "m") == 0, capsys.readouterr().err
    merged = _manifest(tmp_path / "m" / "bundles" / "mobileclip_s0")
    assert [a["path"] for a in merged["artifacts"]] == [IMAGE]


def test_matrix_merge_refuses_a_row_naming_a_folder_outside(source, tmp_path, capsys) -> None:
    src, row, _ = _matrix_source(source, tmp_path / "src")
    victim = tmp_path / "victim"  # output/bundles/../../victim: replaced (deleted) before the fix
    victim.mkdir()
    (victim / "keep.txt").write_bytes(b"keep me\n")
    row["model"] = "../../victim"
    (src / "matrix.json").write_text(json.dumps({"rows": [row]}))
    code = _merge(src, tmp_path / "m")
    capsys.readouterr()  # --json prints the error document on stdout too
    assert code == 1
    assert (victim / "keep.txt").read_bytes() == b"keep me\n" and len(list(victim.iterdir())) == 1


@pytest.mark.parametrize("kind", ["relative", "symlink"])
def test_matrix_merge_refuses_a_cell_reaching_outside(source, tmp_path, capsys, kind) -> None:
    src, row, folder = _matrix_source(source, tmp_path / "src")
    sentinel = _sentinel(tmp_path, (source / IMAGE).read_bytes())
    before = _sha(sentinel)
    if kind == "relative":
        cell = json.loads((folder / "cell.json").read_text())
        cell["record"]["path"] = "../../../outside/sentinel.onnx"
        (folder / "cell.json").write_text(json.dumps(cell))
    else:
        (folder / IMAGE).unlink()
        (folder / IMAGE).symlink_to(sentinel)
    code = _merge(src, tmp_path / "m")
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and [r["status"] for r in doc["rows"]] == ["failed"], doc
    assert not (tmp_path / "m" / "bundles" / "mobileclip_s0").exists()
    assert _sha(sentinel) == before
