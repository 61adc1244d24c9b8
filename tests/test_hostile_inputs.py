"""Hostile or unusual input files get one clear line (exit 1 or 2) or a correct answer, never a traceback
(issue 19, the part outside the bundle reader): images (pixel limit, modes, EXIF orientation), labels and
templates, bench baselines, checkpoints and parity, matrix workers, output paths."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from mobileclip_export.cli import main
from mobileclip_export.errors import UsageError
from mobileclip_export.models import get_model_spec
from mobileclip_export.models.preprocess import preprocess_uint8

from _toys import use_toy_models

Image = pytest.importorskip("PIL.Image")
PRE = get_model_spec("mobileclip_s0").preprocessing  # resize 256, crop 256
LONG = " ".join(["a very long description of a small striped cat sitting on a wooden garden fence"] * 8)


def _one_clean_line(err: str) -> str:
    """The error line of a refusal: exactly one ``error:`` line and no traceback."""
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [ln for ln in err.splitlines() if ": error: " in ln or ": failed: " in ln]
    assert len(lines) == 1, err
    return lines[0]


def _predict(capsys, tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    """``predict`` on the in-memory reduced PyTorch model (no export: about a second)."""
    photo = tmp_path / "photo.png"
    if not photo.exists():
        Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(photo)
    base = ["predict", "--model", "mobileclip_s0", "--reduced", "--target", "pytorch", "--json"]
    code = main([*base, *(argv if "--image" in argv else (*argv, "--image", str(photo)))])
    out, err = capsys.readouterr()
    return code, out, err


def _png_header_only(width: int, height: int) -> bytes:
    """A 300-byte PNG that claims ``width x height`` grey pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 256)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------ images


def test_decompression_bomb_is_refused_from_its_header_and_the_flag_raises_the_limit(
    capsys, tmp_path
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(20000, 10000))  # 200 MP: Pillow itself raises DecompressionBombError
    code, out, err = _predict(capsys, tmp_path, "--labels", "a,b", "--image", str(bomb))
    line = _one_clean_line(err)
    assert code == 2 and json.loads(out)["exit_code"] == 2, err
    assert (
        "20000x10000 = 200,000,000 pixels, over the limit of 100,000,000" in line
        and "--max-image-pixels" in line
    )
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(small)
    code, _, err = _predict(
        capsys, tmp_path, "--labels", "a,b", "--image", str(small), "--max-image-pixels", "9999"
    )
    assert code == 2 and "100x100 = 10,000 pixels, over the limit of 9,999" in _one_clean_line(err)
    code, out, err = _predict(
        capsys, tmp_path, "--labels", "a,b", "--image", str(small), "--max-image-pixels", "10000"
    )
    assert code == 0 and json.loads(out)["images"][0]["path"] == str(small), err


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path) -> None:
    """A 16-bit ramp at crop size (no resize): every pixel must be round(v / 257), as numpy computes it."""
    ramp = (np.arange(256 * 256, dtype=np.int64) * 65535 // (256 * 256 - 1)).reshape(256, 256)
    want = np.repeat(np.round(ramp / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as im:
        assert im.mode == "I;16"
    got = preprocess_uint8(tmp_path / "grey16.png", PRE)
    assert np.array_equal(got, want), f"max diff {np.abs(got.astype(int) - want).max()}"
    assert (got == 255).mean() < 0.01  # Pillow's own convert("RGB") makes 99.6% of it white
    Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "grey32.tif")  # opens as mode I
    assert np.array_equal(preprocess_uint8(tmp_path / "grey32.tif", PRE), want)
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(UsageError, match=r"mode I values 70000\.\.70000 are outside 16 bits"):
        preprocess_uint8(tmp_path / "wide.tif", PRE)


def test_other_modes_are_converted_or_refused_with_the_mode_named(tmp_path) -> None:
    rng = np.random.default_rng(0)
    cmyk = rng.integers(0, 256, (256, 256, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "cmyk.tif")
    c = cmyk.astype(np.int64)
    want = np.round((255 - c[..., :3]) * (255 - c[..., 3:]) / 255)  # CMYK -> RGB, in numpy
    assert np.array_equal(preprocess_uint8(tmp_path / "cmyk.tif", PRE), want)
    la = rng.integers(0, 256, (256, 256, 2), dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert np.array_equal(preprocess_uint8(tmp_path / "la.png", PRE), np.repeat(la[..., :1], 3, axis=2))
    idx = rng.integers(0, 4, (256, 256), dtype=np.uint8)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    pal = Image.fromarray(idx, "P")
    pal.putpalette(palette.ravel().tolist())
    pal.save(tmp_path / "pal.png", transparency=3)  # index 3 transparent: its colour is used, alpha dropped
    assert np.array_equal(preprocess_uint8(tmp_path / "pal.png", PRE), palette[idx])
    Image.fromarray(np.ones((8, 8), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(UsageError, match=r"32-bit float pixels have no defined range \(F\)"):
        preprocess_uint8(tmp_path / "float.tif", PRE)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillows_exif_transpose(tmp_path, orientation: int) -> None:
    from PIL import ImageOps

    pixels = np.random.default_rng(orientation).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(tmp_path / "photo.png", exif=exif)
    with Image.open(tmp_path / "photo.png") as im:
        upright = ImageOps.exif_transpose(im).convert("RGB")  # Pillow: the independent implementation
    got = preprocess_uint8(tmp_path / "photo.png", PRE)
    assert np.array_equal(got, preprocess_uint8(upright, PRE))
    if orientation != 1:
        assert not np.array_equal(got, preprocess_uint8(Image.fromarray(pixels), PRE))


def test_orientation_policy_is_in_help_and_manifest(capsys, tmp_path, monkeypatch) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "EXIF orientation is applied" in " ".join(capsys.readouterr().out.split())
    use_toy_models(monkeypatch)
    code = main(
        [
            "export",
            "--model",
            "mobileclip_s0",
            "--target",
            "onnx",
            "--encoder",
            "image",
            "--output-dir",
            str(tmp_path / "out"),
            "--no-verify",
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "mobileclip_s0" / "manifest.json").read_text())
    assert manifest["preprocessing"]["exif_orientation"] == "applied"


# ------------------------------------------------------------------------------------- labels, templates


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("a {place} photo of {}", "has a brace besides its one '{}'"),
        ("a stray { photo of {}", "has a brace besides its one '{}'"),
        ("a photo of }{}", "has a brace besides its one '{}'"),
        ("a photo of {} and {}", "needs exactly one '{}'"),
    ],
)
def test_templates_need_exactly_one_placeholder_and_no_other_brace(
    capsys, tmp_path, template, message
) -> None:
    (tmp_path / "t.txt").write_text(f"a photo of {{}}\n{template}\n", "utf-8")
    code, _, err = _predict(capsys, tmp_path, "--labels", "a,b", "--templates", str(tmp_path / "t.txt"))
    line = _one_clean_line(err)
    assert code == 2 and f"template {template!r}" in line and message in line


def test_non_utf8_label_and_template_files_are_named(capsys, tmp_path, monkeypatch) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "t.txt").write_bytes("une photo de {} \xe0 Paris\n".encode("latin-1"))
    code, _, err = _predict(capsys, tmp_path, "--labels-file", str(tmp_path / "latin1.txt"))
    assert code == 2 and "is not UTF-8 text (byte 0xe9 at offset 3)" in _one_clean_line(err)
    code, _, err = _predict(capsys, tmp_path, "--labels", "a,b", "--templates", str(tmp_path / "t.txt"))
    assert code == 2 and f"templates file {str(tmp_path / 't.txt')!r} is not UTF-8" in _one_clean_line(err)
    from mobileclip_export.export.pipeline import api

    def no_build(*args):
        raise AssertionError("the model was built before the labels were checked")

    monkeypatch.setattr(api, "_create_model", no_build)
    export = ["export", "--model", "mobileclip_s0", "--target", "onnx", "--output-dir", str(tmp_path / "o")]
    assert main([*export, "--classes", str(tmp_path / "latin1.txt")]) == 2
    assert "is not UTF-8 text" in _one_clean_line(capsys.readouterr().err)
    (tmp_path / "ok.txt").write_text("a cat\na dog\n", "utf-8")
    assert main([*export, "--classes", str(tmp_path / "ok.txt"), "--templates", str(tmp_path / "t.txt")]) == 2
    assert "is not UTF-8 text" in _one_clean_line(capsys.readouterr().err)
    (tmp_path / "long.txt").write_text(f"{LONG} on a sunny day\n{LONG} on a rainy day\n", "utf-8")
    assert main([*export, "--classes", str(tmp_path / "long.txt")]) == 2
    assert "identical after tokenization" in _one_clean_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_long_labels_warned_and_labels_identical_after_truncation_refused(capsys, caplog, tmp_path) -> None:
    a, b = f"{LONG} on a sunny day", f"{LONG} on a rainy day"  # differ only past token 77
    code, out, err = _predict(capsys, tmp_path, "--labels", f"{a},{b}", "--templates", "none")
    line = _one_clean_line(err)
    assert code == 2 and json.loads(out)["ok"] is False and "are identical after tokenization" in line
    assert "truncation to 77 tokens" in line and a[:40] in line
    code, out, err = _predict(capsys, tmp_path, "--labels", f"{a},a dog", "--templates", "photo")
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(a[:40] in w and "over the context length of 77" in w for w in warned), warned
    assert [x["label"] for x in json.loads(out)["images"][0]["top"]] != []
    code, _, err = _predict(capsys, tmp_path, "--labels", "A Dog,a  dog")  # lowercased and cleaned: one text
    assert code == 2 and "'A Dog' and 'a  dog' are identical after tokenization" in _one_clean_line(err)


def test_golden_texts_fit_the_context() -> None:
    from mobileclip_export.export.bundle.golden import TEXTS
    from mobileclip_export.models.tokenizer import get_tokenizer

    lengths = [len(get_tokenizer().encode(t)) + 2 for t in TEXTS]
    assert max(lengths) <= 77, lengths  # fixed texts: nothing to warn about


# ------------------------------------------------------------------------------------------ bench baseline


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: r.pop("actualValue"), "actualValue is None, not a latency in ms"),
        (lambda r: r.update(actualValue="fast"), "actualValue is 'fast', not a latency in ms"),
        (lambda r: r["benchmarkModel"].pop("backend"), "benchmarkModel lacks text field(s) backend"),
    ],
)
def test_bad_baseline_is_named_before_any_timing(capsys, tmp_path, monkeypatch, damage, message) -> None:
    from test_bench_report import _doc

    from mobileclip_export.benchmarks import harness, regression

    doc = _doc({"a": 4.0})
    i = next(i for i, r in enumerate(doc["records"]) if r["metric"] == regression.GATE_METRIC)
    damage(doc["records"][i])
    (tmp_path / "base.json").write_text(json.dumps(doc), "utf-8")

    def no_timing(*args, **kwargs):
        raise AssertionError("timed before the baseline was validated")

    monkeypatch.setattr(harness, "measure", no_timing)
    code = main(
        [
            "bench",
            "--model",
            "mobileclip_s0",
            "--reduced",
            "--fast",
            "--baseline",
            str(tmp_path / "base.json"),
            "--output-dir",
            str(tmp_path / "bench"),
        ]
    )
    line = _one_clean_line(capsys.readouterr().err)
    assert code == 2 and f"records[{i}]" in line and message in line and "nothing was measured" in line


# ------------------------------------------------------------------------------------ checkpoints, parity


def test_integer_weights_where_the_model_holds_floats_are_refused_by_name(capsys, tmp_path) -> None:
    import torch

    from mobileclip_export.models import create_model

    sd = create_model("mobileclip_s0", reduced=True).state_dict()
    names = [k for k, v in sd.items() if v.ndim == 4][:2]
    for k in names:
        sd[k] = (sd[k] * 100).round().to(torch.int8)  # "float weights stored as int8"
    torch.save(sd, tmp_path / "int8.pt")
    out = tmp_path / "out"
    code = main(
        [
            "export",
            "--model",
            "mobileclip_s0",
            "--reduced",
            "--target",
            "onnx",
            "--checkpoint",
            str(tmp_path / "int8.pt"),
            "--output-dir",
            str(out),
        ]
    )
    line = _one_clean_line(capsys.readouterr().err)
    assert code == 2 and "2 tensor(s) hold integers where the model holds floats" in line
    assert all(f"{k} (int8)" in line for k in names) and not out.exists()


def test_absurd_or_non_finite_outputs_fail_parity_whatever_the_relative_error() -> None:
    from mobileclip_export.export.parity import compare
    from mobileclip_export.export.tolerances import FP32

    ref = np.random.default_rng(0).standard_normal((4, 16))
    assert compare(ref, ref * (1 + 1e-7)).violations(FP32) == []
    huge = compare(ref * 1e12, ref * 1e12 * (1 + 1e-7))  # relative error 1e-7, cosine 1.0
    assert huge.cosine > 0.99999 and any("absurdly large" in v for v in huge.violations(FP32))
    inf = ref.copy()
    inf[0, 0] = np.inf
    assert any("non-finite outputs" in v for v in compare(inf, inf).violations(FP32))


# ---------------------------------------------------------------------------------------- matrix workers


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


COORDINATOR = """
import sys
from pathlib import Path
from mobileclip_export.matrix import MatrixRequest, plan_matrix
from mobileclip_export.matrix.local import LocalPool
req = MatrixRequest(models=("mobileclip_s0",), targets=("onnx",), precisions=("fp32",), reduced=True)
job = next(j for j in plan_matrix(req).jobs if j.encoder == "image")
LocalPool(1).run([job], Path(sys.argv[1]), lambda job, cell: None)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_dies_with_its_sigkilled_coordinator_and_writes_nothing(tmp_path) -> None:
    pytest.importorskip("onnx")
    coord = subprocess.Popen([sys.executable, "-c", COORDINATOR, str(tmp_path / "run")])
    workers: list[int] = []
    try:
        end = time.monotonic() + 60
        while not workers and time.monotonic() < end and coord.poll() is None:
            time.sleep(0.05)
            workers = _children(coord.pid)
        assert workers, "the coordinator started no worker"
        time.sleep(1.0)  # the worker is importing and building; the run is far from done
        os.kill(coord.pid, signal.SIGKILL)
        coord.wait()
        t0 = time.monotonic()
        while any(map(_alive, workers)) and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        gone_after = time.monotonic() - t0
        assert not any(map(_alive, workers)), "the worker outlived its coordinator by 5 s"
        print(f"worker gone {gone_after:.2f} s after the coordinator's SIGKILL")
        time.sleep(1.0)
        assert not list((tmp_path / "run").rglob("result.json"))
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if coord.poll() is None:
            coord.kill()


def test_worker_of_a_gone_coordinator_stops_before_writing(tmp_path) -> None:
    from mobileclip_export.lifeline import ORPHANED
    from mobileclip_export.matrix import MatrixRequest, plan_matrix
    from mobileclip_export.matrix.worker import COORDINATOR_ENV, RESULT

    req = MatrixRequest(models=("mobileclip_s0",), targets=("onnx",), precisions=("fp32",), reduced=True)
    (tmp_path / "job.json").write_text(json.dumps(plan_matrix(req).jobs[0].to_dict(), default=str))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a coordinator pid that is no longer our worker's parent
    env = {**os.environ, COORDINATOR_ENV: str(gone.pid)}
    proc = subprocess.run(
        [sys.executable, "-m", "mobileclip_export.matrix.worker", str(tmp_path / "job.json"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == ORPHANED and f"parent process {gone.pid} is gone" in proc.stderr
    assert not (tmp_path / RESULT).exists()


# ------------------------------------------------------------------------------------------- output paths


def test_output_path_too_long_for_the_filesystem_is_refused_before_any_work(
    capsys, tmp_path, monkeypatch
) -> None:
    use_toy_models(monkeypatch)
    name_max, path_max = os.pathconf(tmp_path, "PC_NAME_MAX"), os.pathconf(tmp_path, "PC_PATH_MAX")
    long_name = tmp_path / ("n" * (name_max + 1)) / "out"
    argv = ["export", "--model", "mobileclip_s0", "--target", "onnx", "--encoder", "image", "--no-verify"]
    assert main([*argv, "--output-dir", str(long_name)]) == 2
    line = _one_clean_line(capsys.readouterr().err)
    assert f"is {name_max + 1} bytes, over this filesystem's limit of {name_max} (NAME_MAX)" in line
    # Every component fits, the directory itself could be created: the bundle's files would not fit.
    parts, room = [], path_max - 60 - len(str(tmp_path))  # the directory fits; its bundle files do not
    while room > 0:
        parts.append("d" * min(200, room - 1))
        room -= len(parts[-1]) + 1
    deep = tmp_path.joinpath(*parts)
    assert path_max - 70 < len(str(deep)) < path_max - 50
    assert main([*argv, "--output-dir", str(deep)]) == 2
    line = _one_clean_line(capsys.readouterr().err)
    assert str(deep) in line and f"over this filesystem's limit of {path_max} (PATH_MAX)" in line
    assert list(tmp_path.iterdir()) == []  # nothing created
