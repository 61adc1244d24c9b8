"""Core ML ML Program (``.mlpackage``) backend, converted with coremltools from ``torch.export``.

Image encoders take a Core ML ``ImageType`` (RGB pixels 0..255) so the app hands over a CVPixelBuffer and
the model does the scaling; when the variant's std is equal across channels the mean/std are folded into
the ImageType scale/bias (``module_without_normalize``), otherwise normalization stays in the graph.
Prediction needs macOS; on Linux the NumPy MIL executor in ``mil/`` stands in as a reference.

Modules: ``options`` (option values), ``convert`` (torch.export -> ML Program, input plan, metadata),
``fp16_guard`` (keep fp16-overflowing ops in fp32), ``structure`` (checks without running), ``runners``
(macOS runtime / reference executor), ``target`` (the ``Target`` tying them together), ``mil`` (the executor).
"""

from __future__ import annotations

from .target import CoreMLTarget

TARGET = CoreMLTarget

__all__ = ["TARGET", "CoreMLTarget"]
