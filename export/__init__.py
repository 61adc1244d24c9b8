"""The export contracts (``Target``, registry, image input, parity, tolerances) and their subpackages:
``pipeline`` (the run), ``bundle`` (the output folder), ``compression``, ``zeroshot``, ``backends``.

Public API (imported lazily so ``import mobileclip_export.export`` and ``--help`` stay cheap)::

    export_model(model, targets="all", *, checkpoint=None, encoders=("image", "text"), precision=None,
                 output_dir="exports", force=False, verify=True, options=None, reduced=False, seed=0,
                 progress=None) -> ExportResult
    get_target(name) -> Target;  all_targets() -> {name: Target}
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_model": "pipeline.api",
    "ExportResult": "bundle.manifest",
    "ArtifactRecord": "bundle.manifest",
    "ProgressEvent": "pipeline.progress",
    "StderrProgress": "pipeline.progress",
    "get_target": "registry",
    "all_targets": "registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
