"""A NumPy reference executor for Core ML ML Programs (``.mlpackage``), for numeric checks off macOS.

It verifies the *program* (graph, weights, fp16 typing), not Apple's kernels: see the README section
"Core ML numeric verification without a Mac".

    prog = load_program("m.mlpackage")          # fp16 emulation on when the program has fp16 values
    out = prog.run({"image": pixels_0_255})     # dict of outputs
    find_fp16_overflows(prog, feeds)            # ops whose fp16 rounding overflows where fp32 does not
    first_divergence(prog, feeds, torch_module, example_inputs, tol)  # first MIL op that disagrees
"""

from __future__ import annotations

from .divergence import (
    DivergenceReport,
    OpComparison,
    compare_programs,
    first_divergence,
    torch_comparisons,
    torch_intermediates,
)
from .errors import FeedError, MilExecutorError, ProgramLoadError, UnsupportedOpError
from .executor import Program
from .fp16 import OverflowEvent
from .ir import IODesc
from .loader import load_program
from .ops import register_op, supported_ops
from .overflow import find_fp16_overflows, fp16_overflow_events

__all__ = [
    "DivergenceReport",
    "FeedError",
    "IODesc",
    "MilExecutorError",
    "OpComparison",
    "OverflowEvent",
    "Program",
    "ProgramLoadError",
    "UnsupportedOpError",
    "compare_programs",
    "find_fp16_overflows",
    "first_divergence",
    "fp16_overflow_events",
    "load_program",
    "register_op",
    "supported_ops",
    "torch_comparisons",
    "torch_intermediates",
]
