"""Shared test setup: the helper modules beside this file (``_toys``, ``_matrix_helpers``) import by name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


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
