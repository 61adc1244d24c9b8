"""Export lanes (export/pipeline/lanes.py): targets shared between this process and a child process."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import _lane_work  # noqa: E402
import pytest

from mobileclip_export.export.pipeline.lanes import LaneFailure, lane_count, run_lanes, split


@pytest.fixture
def child_imports_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


def test_split_balances_by_weight_and_keeps_plan_order():
    # the main job's weights in plan order: coreml, coreai, onnx, web, executorch, tflite
    weights = [27.0, 30.0, 8.0, 64.0, 44.0, 29.0]
    lanes = split(weights, 2)
    assert sorted(i for lane in lanes for i in lane) == list(range(6))
    assert all(lane == sorted(lane) for lane in lanes)
    loads = sorted(sum(weights[i] for i in lane) for lane in lanes)
    assert loads == [101.0, 101.0]
    assert split([5.0], 2) == [[0]]  # never an empty lane


def test_lane_count(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MOBILECLIP_EXPORT_JOBS", raising=False)
    assert lane_count(3, 2) == 2 and lane_count(1, 6) == 1 and lane_count(4, 1) == 1
    assert lane_count(None, 6) == max(1, min(2, os.cpu_count() or 1))
    monkeypatch.setenv("MOBILECLIP_EXPORT_JOBS", "1")
    assert lane_count(None, 6) == 1


def test_two_lanes_run_in_two_processes_relaying_events_and_logs(child_imports_tests, caplog):
    events: list = []
    with caplog.at_level(logging.WARNING, logger="lane-test"):
        out = run_lanes(_lane_work.report, ["a", "b", "c"], [3.0, 2.0, 2.0], 2, events.append)
    (here_items, here), (there_items, there) = out
    assert here_items == ["a"] and there_items == ["b", "c"]
    assert here["pid"] == os.getpid() and there["pid"] not in (os.getpid(), None)
    assert there["items"] == ["b", "c"]
    assert sorted(e[1] for e in events) == ["a", "b", "c"]  # the child's events reached the parent
    assert {e[2] for e in events if e[1] != "a"} == {there["pid"]}
    assert f"lane {there['pid']} ran b,c" in caplog.text  # and so did its log records


@pytest.mark.parametrize(
    "work, needle",
    [(_lane_work.fail_in_child, "ValueError: the converter broke"), (_lane_work.die_in_child, "exit code 7")],
)
def test_a_lane_that_raises_or_dies_is_a_failure_not_a_hang(child_imports_tests, work, needle):
    out = run_lanes(work, ["here", "child"], [2.0, 1.0], 2, lambda ev: None)
    assert out[0][1]["items"] == ["here"]
    assert isinstance(out[1][1], LaneFailure) and needle in out[1][1].message, out[1][1]


def test_an_export_in_two_lanes_equals_one_in_one_lane(child_imports_tests, tmp_path):
    """Same artifacts byte for byte, same parity and golden vectors, whichever process converted them."""
    import json

    from mobileclip_export.export.pipeline.api import export_model
    from mobileclip_export.export.registry import get_target

    targets = ["onnx", "tflite"]
    if any(get_target(t).missing_dependencies() for t in targets):
        pytest.skip("needs the onnx and tflite extras")
    seen = []
    for jobs in (1, 2):
        res = export_model("mobileclip_s0", targets, encoders="image", reduced=True, seed=3,
                           output_dir=tmp_path / str(jobs), jobs=jobs)  # fmt: skip
        assert res.ok, [r.error for r in res.artifacts]
        manifest = json.loads(res.manifest_path.read_text())
        golden = sorted(p.name for p in (res.bundle_dir / "golden").rglob("*") if p.is_file())
        seen.append(
            ({(a["target"], a["sha256"], a["parity"]["cosine"]) for a in manifest["artifacts"]}, golden)
        )
    assert seen[0] == seen[1]
    assert len(seen[0][0]) == 2 and seen[0][1]
