"""Export lanes (export/pipeline/lanes.py): targets shared between this process and a child process."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import _lane_work  # noqa: E402
import pytest

from mobileclip_export.export.pipeline.lanes import (
    LaneFailure,
    heaviest_first,
    lane_count,
    parse_jobs,
    run_lanes,
)


@pytest.fixture
def child_imports_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


def test_heaviest_first_is_stable():
    # the main job's weights in plan order: coreml, onnx, web, executorch, tflite, coreai
    assert heaviest_first([27.0, 8.0, 64.0, 44.0, 29.0, 30.0]) == [2, 3, 5, 4, 0, 1]
    assert heaviest_first([1.0, 1.0, 2.0]) == [2, 0, 1]


def test_lane_count(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MOBILECLIP_EXPORT_JOBS", raising=False)
    assert lane_count(3, 2) == 2 and lane_count(1, 6) == 1 and lane_count(4, 1) == 1
    assert lane_count(None, 6) == max(1, min(2, os.cpu_count() or 1))
    monkeypatch.setenv("MOBILECLIP_EXPORT_JOBS", "1")
    assert lane_count(None, 6) == 1


def test_two_lanes_take_items_from_one_queue_relaying_events_and_logs(child_imports_tests, caplog):
    events: list = []
    with caplog.at_level(logging.WARNING, logger="lane-test"):
        got = run_lanes(_lane_work.report, ["slow-a", "b", "c", "d"], [4.0, 3.0, 2.0, 1.0], 2, events.append)
    assert [g["item"] for g in got] == ["slow-a", "b", "c", "d"]  # results in item order
    assert got[0]["pid"] == os.getpid()  # lane 0 took the heaviest item here ...
    child = got[1]["pid"]
    assert (
        child != os.getpid() and got[2]["pid"] == got[3]["pid"] == child
    )  # ... the child the rest meanwhile
    assert sorted(e[1] for e in events) == ["b", "c", "d", "slow-a"]  # the child's events reached the parent
    assert f"lane {child} ran c" in caplog.text  # and so did its log records


@pytest.mark.parametrize(
    "work, needle",
    [(_lane_work.fail_in_child, "ValueError: the converter broke"), (_lane_work.die_in_child, "exit code 7")],
)
def test_an_item_whose_lane_raises_or_dies_is_a_failure_not_a_hang(
    child_imports_tests, monkeypatch, work, needle
):
    monkeypatch.setenv("LANE_PARENT", str(os.getpid()))
    got = run_lanes(work, ["slow-here", "child", "later"], [3.0, 2.0, 1.0], 2, lambda ev: None)
    assert got[0]["pid"] == os.getpid()
    assert isinstance(got[1], LaneFailure) and needle in got[1].message, got[1]
    assert got[2]["item"] == "later"  # taken by whichever lane was left


def test_an_export_in_two_lanes_equals_one_in_one_lane(child_imports_tests, tmp_path):
    """Same artifacts byte for byte, same parity and golden vectors, whichever process converted them."""
    import json

    from mobileclip_export.export.pipeline.api import export_model
    from mobileclip_export.export.registry import get_target

    targets = ["onnx", "tflite"]  # byte-deterministic converters (a Core AI asset differs run to run)
    if any(get_target(t).missing_dependencies() for t in targets):
        pytest.skip("needs the onnx and tflite extras")
    seen = []
    for jobs in (1, 2):
        res = export_model("mobileclip_s0", targets, encoders="text", reduced=True, seed=3,
                           output_dir=tmp_path / str(jobs), jobs=jobs)  # fmt: skip
        assert res.ok, [r.error for r in res.artifacts]
        manifest = json.loads(res.manifest_path.read_text())
        golden = sorted(p.name for p in (res.bundle_dir / "golden").rglob("*") if p.is_file())
        seen.append(
            ({(a["target"], a["sha256"], a["parity"]["cosine"]) for a in manifest["artifacts"]}, golden)
        )
    assert seen[0] == seen[1]
    assert len(seen[0][0]) == 2 and seen[0][1]


def test_a_bad_jobs_variable_is_one_clear_error(monkeypatch: pytest.MonkeyPatch):
    from mobileclip_export.errors import UsageError

    for bad in ("two", "0", "-1"):
        monkeypatch.setenv("MOBILECLIP_EXPORT_JOBS", bad)
        with pytest.raises(UsageError, match="MOBILECLIP_EXPORT_JOBS must be a whole number"):
            lane_count(None, 3)
        with pytest.raises(UsageError, match="--jobs must be a whole number"):  # the flag's parser
            parse_jobs(bad)
    assert parse_jobs("3") == 3


def test_a_dead_lanes_target_leaves_no_file_in_the_bundle(tmp_path):
    """A lane that died after placing one artifact: failure records, and its files leave the bundle."""
    from types import SimpleNamespace

    from mobileclip_export.export.bundle.layout import BundleWriter
    from mobileclip_export.export.pipeline import api
    from mobileclip_export.export.pipeline.plan import plan_export

    (tp,) = plan_export("onnx", ("image", "text"), None, None).targets
    writer = BundleWriter(tmp_path, "m", force=False)
    writer.open()
    placed = writer.tmp_dir / "onnx" / "m-image.onnx"
    placed.parent.mkdir()
    placed.write_bytes(b"half a bundle")
    prep = SimpleNamespace(exports={"image": None, "text": None})
    died = "the export lane's process ended with exit code -9"
    recs = api._lane_failed(tp, prep, writer, LaneFailure(died))
    assert [(r.encoder, r.status, r.error) for r in recs] == [(e, "failed", died) for e in ("image", "text")]
    assert not (writer.tmp_dir / "onnx").exists()


def test_a_bad_jobs_variable_stops_an_export_before_any_work(monkeypatch: pytest.MonkeyPatch, tmp_path):
    from mobileclip_export.errors import UsageError
    from mobileclip_export.export.pipeline.api import export_model

    monkeypatch.setenv("MOBILECLIP_EXPORT_JOBS", "many")
    with pytest.raises(UsageError, match="MOBILECLIP_EXPORT_JOBS"):
        export_model("mobileclip_s0", "onnx", reduced=True, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
