"""ExecuTorch ``.pte`` backend: ``torch.export`` -> ``to_edge_transform_and_lower`` -> ``.pte``.

Modules: ``target`` (the ``Target``), ``profile`` (per-operator profiles),
``quantize`` (compressed precisions).
"""

from __future__ import annotations

from .target import ExecuTorchTarget

TARGET = ExecuTorchTarget

__all__ = ["TARGET", "ExecuTorchTarget"]
