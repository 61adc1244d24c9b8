"""Every registered target x both encoders through export_model, with verification in each runtime.

The toy encoders (seconds per target) catch a backend/pipeline contract break; the reduced real models of each
architecture family (MCi+MCt, MCi+base text, ViT+causal text, 5-stage MCi with CLIP mean/std + base-768 text,
ViT-MCi stem) are exported in fp32 and must match the train-time model to cosine >= 0.99999 in each runtime.
"""

from __future__ import annotations

import json

import pytest

from mobileclip_export.export.pipeline.api import export_model
from mobileclip_export.export.registry import all_targets
from mobileclip_export.hashing import path_sha256

from _toys import use_toy_models

TARGETS = list(all_targets())
# MCi2 repeats MCi0's block types and the MobileCLIP2-B stem is checked in PyTorch by test_vit: both run under
# -m slow so the default run keeps one model per distinct block family in every runtime.
FAMILIES = [  # (model, slow)
    ("mobileclip_s0", False),
    ("mobileclip_s2", True),
    ("mobileclip_b", False),
    ("mobileclip2_s4", False),
    ("mobileclip2_b", True),
]
# web repackages the onnx backend's files (every family runs through onnx here) and tests/test_web.py checks
# reduced S0 in Node and Chromium, so its per-family cases (20-50 s each) run under -m slow too.
# tests/test_executorch.py (S0 and B families) and tests/test_tflite.py (S0) check those encoders in their
# runtimes directly, and the CI main job takes full-size S0 through the whole pipeline to every target; here
# the default run keeps what nothing else converts by default: B and S4 to TFLite.
SLOW_TARGETS = {"web"}
# Reduced, every base text tower is the same 2 x 128 transformer: MobileCLIP2-S4's (base-768, no causal mask)
# is the stack inside S0's MCt, and B's is the causal one, so S4 brings its image encoder only.
IMAGE_ONLY = {"mobileclip2_s4": ("image",)}
SLOW_CASES = {
    ("mobileclip_s0", "executorch"),
    ("mobileclip_s0", "tflite"),
    ("mobileclip_b", "executorch"),
    ("mobileclip2_s4", "executorch"),
}
# The toy contract check for the slowest converters: tests/test_stdio.py takes toy image encoders through
# every registered target by default, and the reduced families above take both encoders.
SLOW_TOY_TARGETS = {"web", "executorch", "tflite"}
CASES = [
    pytest.param(
        model,
        target,
        marks=[pytest.mark.slow] if slow or target in SLOW_TARGETS or (model, target) in SLOW_CASES else [],
    )
    for model, slow in FAMILIES
    for target in TARGETS
]


def _check(
    res, target: str, min_cosine: float = 0.999, encoders: tuple[str, ...] = ("image", "text")
) -> None:
    # one artifact per encoder, or one serving both (a target whose multifunction option defaults on)
    assert [a.encoder for a in res.artifacts] in (list(encoders), ["+".join(encoders)])
    for a in res.artifacts:
        assert a.status in ("verified", "unverified"), f"{target} {a.encoder}: {a.error}"
        if a.status == "unverified":  # only a missing runtime may skip numbers, and it must say why
            assert a.parity["status"].startswith("skipped: "), a.parity
            assert a.details["structural_checks"].get("problems", []) == []
        else:
            assert a.parity["status"] == "passed" and a.parity["cosine"] >= min_cosine, a.parity
            assert a.parity["max_abs_diff"] <= 0.05 * a.parity["ref_max_abs"], a.parity
        assert path_sha256(res.bundle_dir / a.path) == a.sha256
    manifest = json.loads(res.manifest_path.read_text())
    assert [x["status"] for x in manifest["artifacts"]] == [a.status for a in res.artifacts]


@pytest.mark.parametrize(
    "target", [pytest.param(t, marks=[pytest.mark.slow] if t in SLOW_TOY_TARGETS else []) for t in TARGETS]
)
def test_target_with_toy_encoders(tmp_path, monkeypatch, target) -> None:
    use_toy_models(monkeypatch)
    res = export_model("mobileclip_s0", target, output_dir=tmp_path)
    _check(res, target)


@pytest.mark.parametrize("model,target", CASES)
def test_target_with_reduced_family(tmp_path, model, target) -> None:
    encoders = IMAGE_ONLY.get(model, ("image", "text"))
    res = export_model(model, target, output_dir=tmp_path, reduced=True, precision="fp32", encoders=encoders)
    _check(res, target, min_cosine=0.99999, encoders=encoders)
    # every runtime here runs them (Core ML through the NumPy executor): numbers, not skips
    assert {a.status for a in res.artifacts} == {"verified"}, [a.parity for a in res.artifacts]
