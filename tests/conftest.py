"""Shared test setup: helper modules beside this file import by name (``_toys``, ``_matrix_helpers``,
``_shapes``), every test carries the marker of its area (``pytest -m backends``), and the one reduced bundle
that tests which only read a bundle share."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# area marker -> its test modules (CONTRIBUTING.md's inner-loop table; tests/test_layout.py checks every
# test module is in exactly one area and every area is a registered marker).
AREAS: dict[str, tuple[str, ...]] = {
    "models": ("test_models", "test_mci", "test_text", "test_vit", "test_checkpoint", "test_tokenizer",
               "test_app_tokenizer", "test_preprocess"),
    "reparam": ("test_blocks_reparam",),
    "contracts": ("test_contracts", "test_layout", "test_imports", "test_devices_registry", "test_docs"),
    "pipeline": ("test_export_pipeline", "test_export_matrix", "test_image_input", "test_cli", "test_stdio",
                 "test_bad_input", "test_hostile_inputs", "test_batch", "test_lanes"),
    "bundle": ("test_bundle_reader", "test_check", "test_golden", "test_model_card"),
    "backends": ("test_coreml", "test_coreml_mil", "test_coreml_mil_constexpr", "test_coreml_static",
                 "test_apple_naming",
                 "test_onnx", "test_executorch", "test_tflite", "test_coreai", "test_xnnpack_form",
                 "test_web"),
    "compression": ("test_guard", "test_bench_compressed", "test_eval_dir"),
    "zeroshot": ("test_predict", "test_classifier", "test_library"),
    "benchmarks": ("test_bench_adb", "test_bench_cli", "test_bench_estimate", "test_bench_macs",
                   "test_bench_parsers", "test_bench_peak", "test_bench_report", "test_bench_stats"),
    "matrix": ("test_matrix", "test_workflows"),
}  # fmt: skip
AREA_OF = {module: area for area, modules in AREAS.items() for module in modules}
# The heaviest test modules of the default run (seconds of CPU each, measured 2026-12-07), started first so
# that the workers (``--dist loadfile``: one module per worker at a time) finish together instead of one
# waiting on a heavy module scheduled last; the others follow in file order.
HEAVY_FIRST = (
    "test_executorch", "test_export_matrix", "test_tflite", "test_matrix", "test_coreml", "test_coreml_mil",
    "test_export_pipeline", "test_image_input", "test_web", "test_eval_dir", "test_library", "test_lanes",
    "test_checkpoint", "test_model_card", "test_onnx", "test_coreai",
)  # fmt: skip


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject): one worker per core, at most 4 (each holds torch and the converters)."""
    return max(1, min(4, os.cpu_count() or 1))


def pytest_configure(config: pytest.Config) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # share the cores between the workers instead of oversubscribing them
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    # One export lane: tests patch targets in this process, which a lane in a child process would not see
    # (tests of the lanes pass jobs=2 themselves).
    os.environ.setdefault("MOBILECLIP_EXPORT_JOBS", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        area = AREA_OF.get(Path(str(item.fspath)).stem)
        if area is not None:
            item.add_marker(getattr(pytest.mark, area))
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).stem, len(rank)))  # stable: file order kept


@pytest.fixture(scope="session")
def reduced_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reduced S0 exported once per session (onnx, fp32, seed 3), for tests that only read a bundle.

    Shared: a test that changes anything copies it first (``shutil.copytree``).
    """
    pytest.importorskip("onnxruntime")
    from mobileclip_export.export import export_model

    out = tmp_path_factory.mktemp("reduced-bundle")
    result = export_model("mobileclip_s0", ["onnx"], output_dir=out, reduced=True, precision="fp32", seed=3)
    assert result.ok and result.bundle_dir is not None
    return result.bundle_dir
