"""The fp16 emulation model: how "Core ML computes this op in float16" is reproduced in NumPy.

Model (documented, deliberately simple): every op computes in float32 from its (already rounded) inputs and
its outputs are rounded to float16 when the program types them fp16. Ops whose fp16 kernels are known to
overflow internally also round their intermediates: layer_norm (mean, x - mean, its square, the variance;
coremltools issues #2110/#2728), softmax (exp and its sum) and scaled_dot_product_attention (the scores).
Rounding a *finite* float32 value to an infinite float16 is an overflow event, recorded with the op name.
Downstream ops receive inf already (their float32 compute is non-finite too, so rounding adds no event):
only the op where an overflow originates is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FP16_MAX = float(np.finfo(np.float16).max)  # 65504


@dataclass(frozen=True)
class OverflowEvent:
    """One fp16 rounding that turned finite values into inf (``what``: "output" or an intermediate)."""

    op_name: str
    op_type: str
    what: str
    count: int  # how many elements overflowed
    max_abs_fp32: float  # the largest finite magnitude that was rounded


@dataclass
class OverflowLog:
    events: list[OverflowEvent] = field(default_factory=list)

    def ops(self) -> list[str]:
        """Op names with at least one event, in program order, without repeats."""
        return list(dict.fromkeys(e.op_name for e in self.events))


def round_fp16(
    x: np.ndarray,
    *,
    log: OverflowLog | None = None,
    op_name: str = "",
    op_type: str = "",
    what: str = "output",
) -> np.ndarray:
    """Round to float16 (round-to-nearest-even, as the hardware does); record finite -> inf overflows."""
    x = np.asarray(x)
    with np.errstate(over="ignore", invalid="ignore"):
        y = x.astype(np.float16)
    if log is not None and y.size:
        new_inf = np.isinf(y) & np.isfinite(x)
        n = int(new_inf.sum())
        if n:
            log.events.append(OverflowEvent(op_name, op_type, what, n, float(np.abs(x[new_inf]).max())))
    return y
