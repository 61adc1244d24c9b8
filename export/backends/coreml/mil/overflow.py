"""fp16 overflow analysis: which ops overflow float16 where float32 stays finite.

Kept apart from :mod:`.fp16` (the emulation model the executor and ops use) so that the analysis can
import the executor and loader at module level without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .executor import Program
from .fp16 import OverflowEvent, OverflowLog
from .loader import load_program


def fp16_overflow_events(path_or_program: Any, feeds: Mapping[str, np.ndarray]) -> list[OverflowEvent]:
    """Every fp16 overflow event of a run with fp16 emulation on, kept only where the same op run in
    float32 (emulation off, same stored weights) stays finite."""
    prog = path_or_program if isinstance(path_or_program, Program) else load_program(path_or_program)
    olog = OverflowLog()
    prog.with_fp16_emulation(True)._execute(feeds, keep_all=False, overflow_log=olog)
    if not olog.events:
        return []
    flagged = set(olog.ops())
    finite32: dict[str, bool] = {}

    def watch(op: Any, vals: tuple[np.ndarray, ...]) -> None:
        if op.name in flagged:
            finite32[op.name] = all(bool(np.isfinite(v).all()) for v in vals if v.dtype.kind == "f")

    prog.with_fp16_emulation(False)._execute(feeds, keep_all=False, on_op=watch)
    return [e for e in olog.events if finite32.get(e.op_name, False)]


def find_fp16_overflows(path_or_program: Any, feeds: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the ops (program order) where float16 rounding turns finite values into inf, although the
    op stays finite in float32: the ops to keep in fp32 (coremltools ``op_selector``) or to rescale."""
    return list(dict.fromkeys(e.op_name for e in fp16_overflow_events(path_or_program, feeds)))
