"""ONNX target: torch.onnx dynamo exporter -> one self-contained ``.onnx`` file, run with onnxruntime.

Modules: ``target`` (the ``Target``), ``profile`` (per-operator profiles),
``quantize`` (compressed precisions).
"""

from __future__ import annotations

from .target import OnnxTarget

TARGET = OnnxTarget

__all__ = ["TARGET", "OnnxTarget"]
