"""``index`` / ``search``: a photo library whose memory stays flat, that survives SIGKILL byte for byte, that
re-runs incrementally, skips unreadable files, and refuses another model's queries.

Default run: a reduced ViT-B bundle (the cheapest image tower here, ~120 tiny images/s through the ONNX
runtime), 1,000 + 2,000 generated images for the memory check. ``-m slow``: 20,000 images.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mobileclip_export.cli import main
from mobileclip_export.library.search import top_k_fp16
from mobileclip_export.library.store import LOG, Library, read_log

pytest.importorskip("PIL", reason="image loading needs the zeroshot extra")
TARGET = "onnx"
# VmHWM is this process image's own peak; ru_maxrss would also carry the forking pytest's RSS across exec.
RSS_CODE = (
    "import re, resource, sys\n"
    "from mobileclip_export.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "m = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())\n"
    "peak = int(m.group(1)) if m else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "print('PEAK_RSS_KB', peak, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    from mobileclip_export.export import export_model

    out = tmp_path_factory.mktemp("library-bundle")
    opts = {TARGET: {"dynamic_batch": True}}
    result = export_model("mobileclip_b", [TARGET], output_dir=out, reduced=True, seed=1, options=opts)
    assert result.ok and result.bundle_dir is not None
    return result.bundle_dir


def make_images(folder: Path, n: int, start: int = 0, size: tuple[int, int] = (12, 16)) -> list[Path]:
    """``n`` distinct tiny PNGs (seeded noise), named in walk order."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        px = np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)
        out.append(folder / f"img{i:06d}.png")
        Image.fromarray(px).save(out[-1])
    return out


def index_cli(capsys, bundle: Path, images: Path, out: Path, *extra: str) -> tuple[int, dict, str]:
    code = main([*index_argv(bundle, images, out), "--json", *extra])
    o, e = capsys.readouterr()
    return code, (json.loads(o) if o.strip() else {}), e


def index_argv(bundle: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [
        "index",
        "--bundle",
        str(bundle),
        "--target",
        TARGET,
        "--images",
        str(images),
        "--out",
        str(out),
        *extra,
    ]


def run_child(argv: list[str]) -> tuple[int, int, str]:
    """(exit code, peak RSS in kB, stderr) of the CLI in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", RSS_CODE, *argv], capture_output=True, text=True, timeout=600
    )
    peak = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    return proc.returncode, peak[0] if peak else -1, proc.stderr


def read_numpy_only(lib: Path) -> tuple[np.ndarray, list[str]]:
    """The live rows and their paths, read as docs/library-format.md tells another language to."""
    live: dict[str, int] = {}
    mats, ids = [], []
    for line in (lib / "log.jsonl").read_bytes().splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        rec = json.loads(line)
        if rec["op"] == "add":
            mats.append(np.load(lib / "shards" / f"{rec['shard']:06d}.npy"))
            ids.append(np.arange(rec["first_id"], rec["first_id"] + len(rec["rows"])))
            for i, (path, *_meta) in enumerate(rec["rows"]):
                live[path] = rec["first_id"] + i
            for s in rec["skipped"]:
                live.pop(s["path"], None)
        elif rec["op"] == "delete":
            for p in rec["paths"]:
                live.pop(p, None)
    X, row_ids = np.concatenate(mats), np.concatenate(ids)
    path_of = {i: p for p, i in live.items()}
    keep = np.isin(row_ids, list(path_of))
    return X[keep], [path_of[i] for i in row_ids[keep]]


def by_path(lib: Path) -> dict[str, bytes]:
    X, paths = read_numpy_only(lib)
    return {p: X[i].tobytes() for i, p in enumerate(paths)}


def test_memory_stays_flat_2000_vs_1000_images(bundle, tmp_path) -> None:
    """Peak RSS of indexing 2,000 images is within 10 % of 1,000 (it grew 5.7x with the folder in predict)."""
    big, small = tmp_path / "p2000", tmp_path / "p1000"
    files = make_images(big, 2000)
    small.mkdir()
    for f in files[:1000]:
        os.link(f, small / f.name)
    code1, rss1, err1 = run_child(index_argv(bundle, small, tmp_path / "lib1000"))
    t0 = time.perf_counter()
    code2, rss2, err2 = run_child(index_argv(bundle, big, tmp_path / "lib2000"))
    seconds = time.perf_counter() - t0
    assert code1 == 0 and code2 == 0, err1[-2000:] + err2[-2000:]
    print(f"peak RSS: 1,000 images {rss1 / 1024:.0f} MB, 2,000 images {rss2 / 1024:.0f} MB "
          f"(x{rss2 / rss1:.3f}); 2,000 in {seconds:.1f} s")  # fmt: skip
    assert rss2 <= 1.10 * rss1
    assert "images/s" in err2 and "ETA" in err2 and "2000/2000" in err2  # the progress bar
    X, paths = read_numpy_only(tmp_path / "lib2000")
    assert X.dtype == np.float16 and X.shape == (2000, 512) and paths == [f.name for f in files]
    norms = np.linalg.norm(X.astype(np.float64), axis=1)
    assert np.abs(norms - 1).max() < 2e-3
    # The first 1,000 rows are the 1,000-image library's, byte for byte (same files, same batches).
    X1, _ = read_numpy_only(tmp_path / "lib1000")
    assert X1.tobytes() == X[:1000].tobytes()
    _check_against_pytorch(bundle, files[:8], X[:8])


def _check_against_pytorch(bundle: Path, files: list[Path], stored: np.ndarray) -> None:
    """The stored rows match the train-time PyTorch model on the same files (an independent path)."""
    from mobileclip_export.export.zeroshot.encoders import open_encoders, read_bundle_dir
    from mobileclip_export.models import get_model_spec
    from mobileclip_export.models.preprocess import preprocess_batch

    b = read_bundle_dir(bundle)
    enc = open_encoders(b, "pytorch", need=("image",))
    ref = enc.image(preprocess_batch(files, get_model_spec(b.model).preprocessing)).astype(np.float64)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cos = np.sum(ref * stored.astype(np.float64), axis=1)
    assert cos.min() > 0.999, cos


def test_predict_over_a_folder_streams(bundle, tmp_path) -> None:
    """``predict`` over 600 images peaks within 10 % of 300 (decoding all first: 3.4 GB at 2,000)."""
    big, small = tmp_path / "p600", tmp_path / "p300"
    files = make_images(big, 600)
    small.mkdir()
    for f in files[:300]:
        os.link(f, small / f.name)
    peaks = []
    for folder in (small, big):
        argv = ["predict", "--bundle", str(bundle), "--target", TARGET, "--image", str(folder),
                "--labels", "a cat,a dog", "--templates", "none", "--json", "-q"]  # fmt: skip
        code, rss, err = run_child(argv)
        assert code == 0, err[-2000:]
        peaks.append(rss)
    print(f"predict peak RSS: 300 images {peaks[0] / 1024:.0f} MB, 600 images {peaks[1] / 1024:.0f} MB")
    assert peaks[1] <= 1.10 * peaks[0]


def test_killed_runs_resume_to_the_same_bytes(bundle, tmp_path) -> None:
    """SIGKILL at random points (after a random number of commits plus a random delay); the resumed library
    equals an uninterrupted one byte for byte: every shard file and every log record."""
    photos = tmp_path / "photos"
    make_images(photos, 240)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    code, _, err = run_child(index_argv(bundle, photos, ref, "--shard-rows", "16", "--batch-size", "4"))
    assert code == 0, err[-2000:]
    rng = np.random.default_rng(22)
    kills, partial, finished = 0, [], False
    argv = index_argv(bundle, photos, killed, "--shard-rows", "16", "--batch-size", "4", "-q")
    for _attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-c", RSS_CODE, *argv], stderr=subprocess.DEVNULL)
        if not _kill_after_progress(proc, killed / LOG, int(rng.integers(1, 4)), float(rng.uniform(0, 0.3))):
            finished = proc.returncode == 0  # it completed before the kill point
            break
        kills += 1
        partial.append(len(read_log(killed / LOG)[0]))
    if not finished:
        code, _, err = run_child(argv)
        assert code == 0, err[-2000:]
    assert kills >= 3, f"only {kills} runs were killed"
    shards = sorted(p.name for p in (ref / "shards").iterdir())
    assert len(shards) == 16 and sorted(p.name for p in (killed / "shards").iterdir()) == shards
    for name in shards:
        assert (ref / "shards" / name).read_bytes() == (killed / "shards" / name).read_bytes(), name
    assert read_log(ref / LOG)[0] == read_log(killed / LOG)[0]
    assert Library(killed).live_count == 240
    print(f"{kills} kills, committed records when killed: {partial}")


def _kill_after_progress(proc: subprocess.Popen, log: Path, commits: int, delay: float) -> bool:
    """SIGKILL ``proc`` once the log grew by ``commits`` lines, plus ``delay`` s; False if it ended first."""
    start = len(read_log(log)[0])
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if len(read_log(log)[0]) >= start + commits:
            time.sleep(delay)
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_torn_log_line_and_orphan_shard_are_repaired(bundle, tmp_path, capsys) -> None:
    photos = tmp_path / "photos"
    make_images(photos, 20)
    lib = tmp_path / "lib"
    code, doc, err = index_cli(capsys, bundle, photos, lib, "--shard-rows", "8")
    assert code == 0, err
    reference = (lib / LOG).read_bytes()
    lines = reference.splitlines(keepends=True)
    # As if killed after shard 1's file was renamed and while its log line was half written.
    (lib / LOG).write_bytes(b"".join(lines[:1]) + lines[1][: len(lines[1]) // 2])
    (lib / "shards" / ".000002.npy.tmp").write_bytes(b"partial")
    assert Library(lib).live_count == 8  # readers ignore the torn line
    code, doc, err = index_cli(capsys, bundle, photos, lib)
    assert code == 0 and doc["added"] == 12 and doc["live"] == 20, err
    assert (lib / LOG).read_bytes() == reference
    assert sorted(p.name for p in (lib / "shards").iterdir()) == ["000000.npy", "000001.npy", "000002.npy"]


def test_incremental_rerun_equals_a_fresh_index(bundle, tmp_path, capsys) -> None:
    """New, changed (content), touched (mtime only) and deleted files: the re-run's live rows equal a fresh
    index of the final folder, byte for byte, and only the new and changed files are embedded."""
    photos = tmp_path / "photos"
    files = make_images(photos, 30)
    make_images(photos / "sub", 4, start=100)
    lib = tmp_path / "lib"
    code, doc, err = index_cli(capsys, bundle, photos, lib)
    assert code == 0 and doc["added"] == 34, err
    code, doc, _ = index_cli(capsys, bundle, photos, lib)
    assert (doc["added"], doc["updated"], doc["unchanged"], doc["deleted"]) == (0, 0, 34, 0)
    make_images(photos, 3, start=30)  # new
    for f, seed in ((files[2], 900), (files[7], 901)):  # changed content, same name
        make_images(tmp_path / "tmp", 1, start=seed)[0].replace(f)
    os.utime(files[5], ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: same bytes
    files[10].unlink()
    (photos / "sub" / "img000101.png").unlink()
    code, doc, err = index_cli(capsys, bundle, photos, lib)
    assert code == 0, err
    assert (doc["added"], doc["updated"], doc["touched"], doc["deleted"]) == (3, 2, 1, 2)
    assert doc["unchanged"] == 34 - 2 - 1 - 2 and doc["live"] == 35
    code, fresh_doc, _ = index_cli(capsys, bundle, photos, tmp_path / "fresh")
    assert fresh_doc["added"] == 35
    assert by_path(lib) == by_path(tmp_path / "fresh")
    assert "sub/img000100.png" in by_path(lib)


def test_unreadable_files_are_skipped_and_listed(bundle, tmp_path, capsys) -> None:
    photos = tmp_path / "photos"
    good = make_images(photos, 5)
    (photos / "garbage.jpg").write_bytes(b"this is not an image")
    (photos / "empty.png").write_bytes(b"")
    (photos / "truncated.png").write_bytes(good[0].read_bytes()[:60])
    (photos / "notes.txt").write_text("not considered")
    make_images(photos, 1, start=50, size=(300, 400))  # over --max-image-pixels below
    lib = tmp_path / "lib"
    code, doc, err = index_cli(capsys, bundle, photos, lib, "--max-image-pixels", "100000")
    assert code == 0 and doc["added"] == 5 and doc["live"] == 5, err
    skipped = {s["path"]: s["error"] for s in doc["skipped"]}
    assert sorted(skipped) == ["empty.png", "garbage.jpg", "img000050.png", "truncated.png"]
    assert "120,000" in skipped["img000050.png"] or "120000" in skipped["img000050.png"]
    assert all(skipped.values())
    code, doc, _ = index_cli(capsys, bundle, photos, lib)  # listed again, not retried
    assert doc["added"] == 0 and sorted(s["path"] for s in doc["skipped"]) == sorted(skipped)
    assert all(s.get("earlier") for s in doc["skipped"])
    make_images(tmp_path / "fix", 1, start=77)[0].replace(photos / "garbage.jpg")  # fixed: retried
    code, doc, _ = index_cli(capsys, bundle, photos, lib)
    assert doc["added"] == 1 and doc["live"] == 6 and len(doc["skipped"]) == 3
    code = main(["index", "--bundle", str(bundle), "--target", TARGET, "--images", str(photos / "nope"),
                 "--out", str(lib)])  # fmt: skip
    assert code == 2 and "is not a folder" in capsys.readouterr().err


def test_search_matches_numpy_and_refuses_another_model(bundle, reduced_bundle, tmp_path, capsys) -> None:
    photos = tmp_path / "photos"
    files = make_images(photos, 40, size=(40, 30))
    lib = tmp_path / "lib"
    assert index_cli(capsys, bundle, photos, lib)[0] == 0
    argv = ["search", "--index", str(lib), "--bundle", str(bundle), "--text", "a photo of a dog",
            "--image", str(files[3]), "--top-k", "5", "--json"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    X, paths = read_numpy_only(lib)
    for q in doc["queries"]:
        hits = q["hits"]
        assert len(hits) == 5 and [h["cosine"] for h in hits] == sorted(
            (h["cosine"] for h in hits), reverse=True
        )
    # The image query of a stored file: its own row scores 1 (query rounded to fp16 like the rows).
    img_hits = doc["queries"][1]["hits"]
    own = X[paths.index(files[3].name)].astype(np.float64)
    np.testing.assert_allclose(img_hits[0]["cosine"], float(np.max(X.astype(np.float64) @ own)), atol=1e-5)
    assert img_hits[0]["cosine"] > 0.999
    # Another model's bundle is refused in one line, exit 2.
    argv[argv.index(str(bundle))] = str(reduced_bundle)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "indexed with mobileclip_b" in err and "mobileclip_s0" in err and "Traceback" not in err
    code = main(["index", "--bundle", str(reduced_bundle), "--target", TARGET, "--images", str(photos),
                 "--out", str(lib)])  # fmt: skip
    assert code == 2 and "not comparable" in capsys.readouterr().err


def test_top_k_is_exact_across_chunks_and_tombstones(monkeypatch) -> None:
    """The chunked fp16 top-k equals a float64 full sort, ties by smaller id, dead rows never returned."""
    import mobileclip_export.library.search as S

    monkeypatch.setattr(S, "CAST_ROWS", 3)
    monkeypatch.setattr(S, "BLOCK_ROWS", 7)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 16))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float16)
    X[50] = X[10]  # an exact tie
    q = X[[10, 3]].astype(np.float32)
    live = np.ones(100, bool)
    live[[3, 77]] = False
    shards = [(X[:60], np.arange(60), live[:60]), (X[60:], np.arange(60, 100), live[60:])]
    scores, ids = top_k_fp16(shards, q, 12)
    full = X.astype(np.float64) @ q.T.astype(np.float64)
    for j in range(2):
        order = [i for i in np.lexsort((np.arange(100), -full[:, j])) if live[i]][:12]
        assert list(ids[j]) == order
        np.testing.assert_allclose(scores[j], full[order, j], atol=1e-6)
    assert ids[0][0] == 10 and ids[0][1] == 50  # the tie: smaller id first
    s, i = top_k_fp16(shards, q, 1000)
    assert i.shape == (2, 98)


@pytest.mark.slow
def test_memory_stays_flat_20000_images(bundle, tmp_path) -> None:
    big, small = tmp_path / "p20000", tmp_path / "p1000"
    files = make_images(big, 20000)
    small.mkdir()
    for f in files[:1000]:
        os.link(f, small / f.name)
    code1, rss1, err1 = run_child(index_argv(bundle, small, tmp_path / "lib1000"))
    code2, rss2, err2 = run_child(index_argv(bundle, big, tmp_path / "lib20000"))
    assert code1 == 0 and code2 == 0, err1[-2000:] + err2[-2000:]
    print(
        f"peak RSS: 1,000 images {rss1 / 1024:.0f} MB, 20,000 images {rss2 / 1024:.0f} MB "
        f"(x{rss2 / rss1:.3f})"
    )
    assert rss2 <= 1.10 * rss1
    assert Library(tmp_path / "lib20000").live_count == 20000


def test_a_damaged_library_fails_in_one_line(bundle, tmp_path, capsys) -> None:
    """A foreign or damaged library is refused with one line, never a traceback, and nothing is written."""
    photos = tmp_path / "photos"
    make_images(photos, 3)
    lib = tmp_path / "lib"
    assert index_cli(capsys, bundle, photos, lib)[0] == 0
    search = ["search", "--index", str(lib), "--bundle", str(bundle), "--text", "x"]
    good_shard, good_log = (lib / "shards" / "000000.npy").read_bytes(), (lib / LOG).read_bytes()
    cases = [
        (lib / "shards" / "000000.npy", b"\x80\x04pickle?", "not a .npy file"),
        (lib / LOG, good_log + b'{"op": "add", "shard": 1}\n', "record 2 is malformed"),
        (lib / LOG, good_log + b'{"op": "format-c"}\n', "unknown op"),
    ]
    for path, data, message in cases:
        path.write_bytes(data)
        assert main(search) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        (lib / "shards" / "000000.npy").write_bytes(good_shard)
        (lib / LOG).write_bytes(good_log)
    manifest = json.loads((lib / "library.json").read_text())
    (lib / "library.json").write_text(json.dumps({**manifest, "version": 2}))
    assert main(search) == 2 and "library format version 2" in capsys.readouterr().err
