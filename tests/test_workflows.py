"""The GitHub workflows: the benchmark refreshes its baseline on pushes to the default branch and gates pull
requests only; a second workflow lints and tests."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")  # PyYAML: a third-party parser, not part of the product
WORKFLOWS = Path(__file__).resolve().parents[1] / ".github" / "workflows"


def _load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def test_benchmark_refreshes_baseline_on_push_and_gates_prs_only() -> None:
    doc = _load("benchmark.yml")
    assert doc["on"]["push"]["branches"] == ["main"] and "pull_request" in doc["on"]
    steps = {s.get("name", ""): s for s in doc["jobs"]["bench"]["steps"]}
    save = steps["Save baseline (default branch only)"]
    assert save["uses"].startswith("actions/cache/save") and "ON_DEFAULT_BRANCH" in save["if"]
    assert "status == '1'" in save["if"]  # a slower push still becomes the new baseline
    gate = next(s for n, s in steps.items() if n.startswith("Fail on regression"))
    assert "pull_request" in gate["if"]
    assert "--baseline" in steps["Benchmark"]["run"]  # bench itself skips gating on another host fingerprint


def test_ci_lints_and_tests() -> None:
    doc = _load("ci.yml")
    runs = " ".join(s.get("run", "") for job in doc["jobs"].values() for s in job["steps"])
    assert "ruff check ." in runs and "pytest" in runs and "--json" in runs
