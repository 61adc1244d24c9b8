"""TFLite / LiteRT (``.tflite``): converted with litert-torch, run with ai-edge-litert (XNNPACK).

Modules: ``target`` (the ``Target``), ``quantize`` (compressed precisions).
"""

from __future__ import annotations

from .target import TFLiteTarget

TARGET = TFLiteTarget

__all__ = ["TARGET", "TFLiteTarget"]
