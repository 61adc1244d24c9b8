"""The one tolerance table: (stage or target, precision) -> Tolerance.

fp32 artifacts must reproduce the train-time model to float rounding; fp16 artifacts to half-precision
rounding accumulated over the network (cosine and PSNR matter more for retrieval than max|diff|).
Stage "reparam" is the PyTorch train-time vs reparameterized comparison. A target without its own row
falls back to the ``("*", precision)`` row, so a new backend is checked from day one (add a row to tighten
or loosen it, with the reason next to it).
"""

from __future__ import annotations

import logging

from mobileclip_export.export.parity import TaskTolerance, Tolerance

log = logging.getLogger(__name__)

FP32 = Tolerance(min_cosine=0.99999, max_abs_rel=1e-3, min_psnr_db=60.0)
FP16 = Tolerance(min_cosine=0.999, max_abs_rel=5e-2, min_psnr_db=30.0)
INT8 = Tolerance(min_cosine=0.995, max_abs_rel=1e-1, min_psnr_db=25.0)

TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("reparam", "fp32"): Tolerance(min_cosine=0.99999, max_abs_rel=1e-4, min_psnr_db=70.0),
    ("onnx", "fp32"): FP32,
    ("onnx", "fp16"): FP16,
    ("executorch", "fp32"): FP32,
    ("executorch", "fp16"): FP16,
    ("tflite", "fp32"): FP32,
    ("tflite", "fp16"): FP16,
    # Dynamic-range int8 weights: measured cosine 0.9998-0.99993 on reduced S0; retrieval tolerates 0.995.
    ("tflite", "int8"): INT8,
    ("coreml", "fp32"): FP32,
    ("coreml", "fp16"): FP16,
    ("coreai", "fp32"): FP32,
    ("coreai", "fp16"): FP16,
    ("*", "fp32"): FP32,
    ("*", "fp16"): FP16,
    # Compressed weights: embedding-level parity is loose by design; the task guard (GUARDS below) decides.
    ("*", "int8"): INT8,
    ("*", "int8-static"): Tolerance(min_cosine=0.95, max_abs_rel=3e-1, min_psnr_db=15.0),
    ("*", "palettize8"): INT8,
    ("*", "palettize6"): Tolerance(min_cosine=0.99, max_abs_rel=1.5e-1, min_psnr_db=22.0),
    ("*", "palettize4"): Tolerance(min_cosine=0.97, max_abs_rel=3e-1, min_psnr_db=15.0),
    ("*", "palettize2"): Tolerance(min_cosine=0.97, max_abs_rel=3e-1, min_psnr_db=15.0),  # = palettize4,
}


# Accuracy guard of compressed precisions (export.guard): retrieval over the shipped photographs and captions
# with the artifact for one encoder and fp32 for the other. Random-weight models (all we have here) give
# near-uniform zero-shot probabilities with near-ties, so agreement limits leave room for swaps among ties;
# measured: int8 top-1 1.0 / top-5 1.0 / prob change <= 3e-4 on reduced S0 (onnx, coreml).
TASK_TOLERANCES: dict[str, TaskTolerance] = {
    "int8": TaskTolerance(min_top1_agreement=0.8, min_top5_agreement=0.9, max_prob_change=0.01),
    "palettize8": TaskTolerance(min_top1_agreement=0.8, min_top5_agreement=0.9, max_prob_change=0.01),
    "int8-static": TaskTolerance(min_top1_agreement=0.75, min_top5_agreement=0.9, max_prob_change=0.015),
    "palettize6": TaskTolerance(min_top1_agreement=0.75, min_top5_agreement=0.9, max_prob_change=0.015),
    "palettize4": TaskTolerance(min_top1_agreement=0.65, min_top5_agreement=0.85, max_prob_change=0.02),
    "palettize2": TaskTolerance(min_top1_agreement=0.65, min_top5_agreement=0.85, max_prob_change=0.02),
}


def task_tolerance_for(precision: str) -> TaskTolerance | None:
    """The guard's limits for a compressed precision; None for float precisions (no task guard)."""
    return TASK_TOLERANCES.get(precision)


def tolerance_for(stage: str, precision: str) -> Tolerance:
    if (stage, precision) in TOLERANCES:
        return TOLERANCES[(stage, precision)]
    if stage != "reparam" and ("*", precision) in TOLERANCES:
        log.debug("no tolerance row for (%s, %s); using the default row for %s", stage, precision, precision)
        return TOLERANCES[("*", precision)]
    raise KeyError(f"no tolerance for ({stage!r}, {precision!r}); add it to {__name__}")
