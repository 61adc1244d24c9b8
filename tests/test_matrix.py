"""The matrix on the local pool: plan and keys, a real reduced run with a worker SIGKILLed mid-conversion,
reuse of every cell on re-run, and a new target running only its new cells."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import pytest

from mobileclip_export.errors import MissingDependencyError, UsageError
from mobileclip_export.export.registry import all_targets
from mobileclip_export.matrix import MatrixRequest, plan_matrix, run_matrix
from mobileclip_export.matrix.estimate import BASE_SECONDS, calibrate, estimate
from mobileclip_export.matrix.jobs import Job, cell_key
from mobileclip_export.matrix.local import LocalPool, death_reason

from _matrix_helpers import KillFirstConversion, artifact_hashes, assert_bundles_consistent

TARGETS = ["onnx", "tflite"]  # the cheapest verified conversions here (reduced S0, fp16)
REQ = MatrixRequest(models=("mobileclip_s0",), targets=(TARGETS[0],), precisions=("fp16",), reduced=True)


def test_plan_has_one_keyed_job_per_cell_and_skips_unsupported_precisions() -> None:
    names = list(all_targets())
    plan = plan_matrix(MatrixRequest(models=("mobileclip_s0", "mobileclip_s2"), targets=tuple(names),
                                     precisions=("fp32", "int8")))
    expect = sum(2 * 2 * sum(p in t.precisions for p in ("fp32", "int8")) for t in all_targets().values())
    assert len(plan.jobs) == expect
    assert len({j.key for j in plan.jobs}) == expect
    assert any("int8: not supported" in s for s in plan.skipped)
    s0, s2 = (next(j for j in plan.jobs if j.model == m and j.encoder == "image") for m in ("mobileclip_s0",
                                                                                             "mobileclip_s2"))
    assert s2.estimate.memory_bytes > s0.estimate.memory_bytes and s2.estimate.seconds > s0.estimate.seconds


def test_key_changes_with_every_input() -> None:
    job = plan_matrix(REQ).jobs[0]
    base = cell_key(job)
    for change in ({"precision": "fp32"}, {"seed": 1}, {"checkpoint_sha256": "ab" * 32}, {"reduced": False},
                   {"options": {**job.options, "x": 1}}, {"versions": {**job.versions, "torch": "0"}},
                   {"encoder": "text"}, {"target": "other"}):
        assert cell_key(Job(**{**job.to_dict(), "estimate": job.estimate, "key": "", **change})) != base
    assert cell_key(Job.from_dict(json.loads(json.dumps(job.to_dict())))) == base


def test_memory_budget_keeps_large_cells_apart() -> None:
    job = plan_matrix(REQ).jobs[0]
    big = Job(**{**job.to_dict(), "estimate": estimate(300.0), "key": "b"})
    small = Job(**{**job.to_dict(), "estimate": estimate(1.0), "key": "s"})
    pool = LocalPool(workers=2, memory_budget=big.estimate.memory_bytes + small.estimate.memory_bytes - 1)
    running = [type("R", (), {"job": big})()]
    assert pool._admit([(big, 1)], []) == 0  # a lone job always runs, however large
    assert pool._admit([(big, 1), (small, 1)], running) is None  # big + anything exceeds the budget
    pool.memory_budget += 1
    assert pool._admit([(big, 1), (small, 1)], running) == 1


def test_bad_input_names_the_choices(tmp_path, monkeypatch) -> None:
    with pytest.raises(UsageError, match="not supported"):
        plan_matrix(MatrixRequest(models=("mobileclip_s0",), targets=(TARGETS[0],), precisions=("fp61",)))
    with pytest.raises(UsageError, match="mobileclip_s0"):
        plan_matrix(MatrixRequest(models=("mobileclip_s9",), targets=(TARGETS[0],)))
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(MissingDependencyError, match="pip install"):
        run_matrix(REQ, tmp_path, ray_address="auto")
    assert death_reason(-9).startswith("worker killed by SIGKILL")


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory):
    """REQ on the local pool with the image cell's first worker SIGKILLed while it converts."""
    out = tmp_path_factory.mktemp("matrix")
    killer = KillFirstConversion(out, f"mobileclip_s0-{TARGETS[0]}-fp16-image-")
    killer.start()
    outcome = run_matrix(REQ, out, workers=2)
    killer.stop.set()
    return out, outcome, killer


def test_killed_worker_is_retried_and_manifests_stay_consistent(pool_run) -> None:
    out, outcome, killer = pool_run
    assert len(killer.killed) == 1, "the worker was never seen converting"
    rows = {r["encoder"]: r for r in outcome.rows}
    assert [r["status"] for r in outcome.rows] == ["verified", "verified"], outcome.rows
    assert rows["image"]["attempts"] == 2 and rows["text"]["attempts"] == 1
    assert outcome.summary["conversions"] == 3  # two cells, one retried
    assert all(r["cosine"] >= 0.999 for r in outcome.rows)
    assert assert_bundles_consistent(out) == 2
    report = json.loads((out / "matrix.json").read_text())
    assert [r["status"] for r in report["rows"]] == ["verified", "verified"]
    assert (out / "matrix.md").read_text().count("| verified |") == 2
    assert (out / "matrix.png").stat().st_size > 1000
    assert not list((out / ".staging").glob("*"))


def test_rerun_reuses_every_cell_and_a_new_target_runs_only_its_cells(pool_run, tmp_path) -> None:
    out, first = tmp_path / "copy", pool_run[1]
    shutil.copytree(pool_run[0], out)  # a moved store still works; the original stays for the other tests
    again = run_matrix(REQ, out, workers=2)
    assert again.summary["conversions"] == 0 and again.summary["reused"] == 2
    assert [r["run_s"] for r in again.rows] == [0.0, 0.0]
    assert [r["sha256"] for r in again.rows] == [r["sha256"] for r in first.rows]
    wider = MatrixRequest(models=REQ.models, targets=tuple(TARGETS[:2]), precisions=("fp16",),
                          encoders=("text",), reduced=True)
    grown = run_matrix(wider, out, workers=2)
    assert grown.summary["conversions"] == 1, grown.rows
    assert [(r["target"], r["reused"], r["status"]) for r in grown.rows] == [
        (TARGETS[0], True, "verified"), (TARGETS[1], False, "verified")]
    assert assert_bundles_consistent(out) == 2  # the bundle lists this run's cells


def test_merge_of_job_outputs_and_bench_reads_the_bundles(pool_run, tmp_path, capsys) -> None:
    """The CI path: per-model outputs merged into one store and report; bench reads the merged bundle."""
    from mobileclip_export.benchmarks.artifacts import read_bundle
    from mobileclip_export.cli import main

    out = pool_run[0]
    assert main(["matrix", "--merge", str(out), str(out), "--output-dir", str(tmp_path / "m"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["summary"]["verified"] == len(doc["rows"]) >= 2
    assert assert_bundles_consistent(tmp_path / "m") == 2
    assert artifact_hashes(tmp_path / "m") == artifact_hashes(out)
    bundle = read_bundle(tmp_path / "m" / "bundles", "mobileclip_s0")
    cells = {(a["target"], a["encoder"]) for a in bundle.artifacts}
    assert cells >= {(TARGETS[0], "image"), (TARGETS[0], "text")}
    assert bundle.export_args["reduced"] is True
    (tmp_path / "broken").mkdir()
    assert main(["matrix", "--merge", str(tmp_path / "broken"), "--output-dir", str(tmp_path / "x")]) == 2


def test_a_cell_killed_every_time_fails_alone_with_exit_1(pool_run, tmp_path, capsys) -> None:
    from mobileclip_export.cli import main

    out = tmp_path / "copy"
    shutil.copytree(pool_run[0], out)
    prefix = f"mobileclip_s0-{TARGETS[0]}-fp16-image-"
    shutil.rmtree(next((out / "cells").glob(f"{prefix}*")))  # the image cell must run again; text is reused
    killer = KillFirstConversion(out, prefix, times=2)
    killer.start()
    args = ["matrix", "--models", "mobileclip_s0", "--targets", TARGETS[0], "--precisions", "fp16",
            "--reduced", "--output-dir", str(out), "--max-attempts", "2", "--json"]
    code = main(args)
    killer.stop.set()
    captured = capsys.readouterr()
    assert code == 1 and len(killer.killed) == 2
    rows = {r["encoder"]: r for r in json.loads(captured.out)["rows"]}
    assert rows["image"]["status"] == "failed" and rows["image"]["attempts"] == 2
    assert "worker killed by SIGKILL" in rows["image"]["error"] and rows["text"]["status"] == "verified"
    assert f"FAILED {prefix}" in captured.err
    manifest = json.loads((out / "bundles" / "mobileclip_s0" / "manifest.json").read_text())
    assert [a["encoder"] for a in manifest["artifacts"]] == ["text"]
    assert assert_bundles_consistent(out) == 1


def test_dry_run_shows_reuse_and_calibrated_estimates(pool_run, capsys) -> None:
    from mobileclip_export.cli import main

    out = pool_run[0]
    args = ["matrix", "--models", "mobileclip_s0", "--targets", TARGETS[0], "--precisions", "fp16,fp32",
            "--reduced", "--output-dir", str(out), "--dry-run", "--json"]
    assert main(args) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert [(c["cell"].split("-")[2], c["reuse"]) for c in plan] == [
        ("fp16", True), ("fp16", True), ("fp32", False), ("fp32", False)]
    measured = pool_run[1].rows  # (onnx, fp16) cells: a cell's work is its export + verification seconds
    rate = calibrate((r["mparams"], r["export_s"] + r["verify_s"]) for r in measured)
    above_fixed = sum(max(r["export_s"] + r["verify_s"] - BASE_SECONDS, 0) for r in measured)
    assert rate == pytest.approx(above_fixed / sum(r["mparams"] for r in measured))
    expect = [round(estimate(r["mparams"], rate).seconds, 1) for r in measured]
    assert [c["seconds"] for c in plan[:2]] == expect
    assert [c["seconds"] for c in plan[2:]] == expect  # no fp32 cell measured: the target's rate


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray head on 127.0.0.1 with 2 CPUs, started and stopped here; it reaches no other address."""
    # Ray turns 127.0.0.1 into the host's routable IP unless it runs "without cluster support" (its loopback
    # mode for laptops); usage stats off: the test sends nothing anywhere.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray  # the `test` extra installs it
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the variable was set
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must stay under 107 bytes
    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False,
             log_to_driver=False, object_store_memory=200 * 2**20, _temp_dir=temp)
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_cluster_matches_the_local_pool_byte_for_byte(ray_cluster, pool_run, tmp_path) -> None:
    """REQ as Ray tasks, with the Ray worker converting the image cell SIGKILLed once: Ray retries it."""
    killer = KillFirstConversion(tmp_path, f"mobileclip_s0-{TARGETS[0]}-fp16-image-")
    killer.start()
    outcome = run_matrix(REQ, tmp_path, ray_address="initialized")
    killer.stop.set()
    assert len(killer.killed) == 1, "the Ray worker was never seen converting"
    assert [r["status"] for r in outcome.rows] == ["verified", "verified"], outcome.rows
    assert all(r["node"].split("/")[1] for r in outcome.rows)  # host/node id reported by Ray
    assert [r["attempts"] for r in outcome.rows] == [2, 1]  # image: killed once, retried by Ray
    assert outcome.summary["runner"].startswith("Ray")
    assert assert_bundles_consistent(tmp_path) == 2
    pool_out = pool_run[0]
    assert artifact_hashes(tmp_path) == artifact_hashes(pool_out)


# 3 block families (MCi + MCt text, ViT + base text, 5-stage MCi + base-768 text) x 3 targets x 2 precisions x
# both encoders = 36 cells, on Ray and on the local pool: every cell verified, identical bytes.
FULL = MatrixRequest(models=("mobileclip_s0", "mobileclip_b", "mobileclip2_s4"),
                     targets=("onnx", "executorch", "tflite"), precisions=("fp32", "fp16"), reduced=True)


@pytest.mark.slow
def test_reduced_matrix_on_ray_and_pool(ray_cluster, tmp_path) -> None:
    on_ray = run_matrix(FULL, tmp_path / "ray", ray_address="initialized")
    on_pool = run_matrix(FULL, tmp_path / "pool", workers=2)
    for outcome in (on_ray, on_pool):
        assert len(outcome.rows) == 36
        assert [r["cell"] for r in outcome.rows if r["status"] != "verified"] == []
    assert assert_bundles_consistent(tmp_path / "ray") == 36
    assert artifact_hashes(tmp_path / "ray") == artifact_hashes(tmp_path / "pool")
    print(f"\nwall: Ray {on_ray.summary['wall_s']:.0f} s, local pool {on_pool.summary['wall_s']:.0f} s")
