"""Web target: a folder transformers.js (Node, browsers via onnxruntime-web) loads unchanged.

Modules: ``target`` (the ``Target``), ``folder`` (layout, config files, graphs via the onnx backend),
``build`` (write, verify per dtype, pin), ``checks`` (parity, guard, tokenizer and pixel checks),
``runtime`` (Node, npm packages, Chromium discovery), ``browser`` (headless Chromium on 127.0.0.1),
``card`` (LICENSE and README with a runnable JavaScript snippet). ``js/`` holds the pinned npm packages
and the scripts the checks run.
"""

from __future__ import annotations

from .target import WebTarget

TARGET = WebTarget

__all__ = ["TARGET", "WebTarget"]
