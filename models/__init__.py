"""Model architectures, catalog (``configs/*.json``), factory, checkpoints and tokenizer.

Public API (imported lazily so ``mobileclip_export.models.tokenizer`` etc. do not pull in torch)::

    list_models() -> list[str]
    get_model_spec(name) -> ModelSpec
    create_model(name, checkpoint=None, *, seed=0, reduced=False) -> MobileCLIP

A checkpoint of this project's fully fused form needs ``mobileclip_export.reparam.create_model`` (same
signature), since models never import reparam.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "list_models": "catalog",
    "get_model_spec": "catalog",
    "create_model": "factory",
    "build_model": "factory",
    "MobileCLIP": "clip",
    "ImageEncoder": "clip",
    "ModelSpec": "spec",
    "Preprocessing": "spec",
    "Published": "spec",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
