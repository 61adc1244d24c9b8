"""The model catalog: one ``ModelSpec`` per ``configs/<name>.json`` (no torch model is built here)."""

from __future__ import annotations

import functools
import json
from importlib import resources

from mobileclip_export.errors import UnknownNameError
from mobileclip_export.models.spec import ModelSpec


@functools.cache
def _specs() -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    for entry in resources.files("mobileclip_export.models").joinpath("configs").iterdir():
        if entry.name.endswith(".json"):
            spec = ModelSpec.from_dict(json.loads(entry.read_text()))
            if spec.name != entry.name[: -len(".json")]:
                raise ValueError(f"config {entry.name} declares name {spec.name!r}")
            specs[spec.name] = spec
    return dict(sorted(specs.items()))


def list_models() -> list[str]:
    """Every registered model name, sorted."""
    return list(_specs())


def get_model_spec(name: str) -> ModelSpec:
    """The spec of ``name``; raises ``UnknownNameError`` listing the valid names."""
    specs = _specs()
    if name not in specs:
        raise UnknownNameError("model", name, list(specs))
    return specs[name]
