"""Per-operator profiles of an artifact in its runtime: one neutral record shape for every backend.

A backend's profiler (``Target.profile``) returns an ``OpProfile``: time per operator kind summed over the
profiled runs, and for each kind whether it ran outside the runtime's accelerating delegate (portable /
builtin kernels between delegate calls) and whether it is a layout conversion (transpose / reorder /
dim-order copy). ``summary`` turns it into the table and shares the bench report shows and saves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class OpTime:
    op: str  # operator kind as the runtime names it
    ms: float  # summed over the profiled runs
    calls: int
    outside_delegate: bool = False
    layout: bool = False


@dataclass
class OpProfile:
    runtime: str  # which profiler produced it (e.g. "ETDump + devtools Inspector")
    runs: int
    ops: list[OpTime] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    has_delegate: bool = True  # False: the runtime has no delegate, "outside" shares are meaningless

    def add(self, op: str, ms: float, *, outside: bool = False, layout: bool = False) -> None:
        for row in self.ops:
            if row.op == op and row.outside_delegate == outside:
                row.ms += ms
                row.calls += 1
                return
        self.ops.append(OpTime(op, ms, 1, outside, layout))

    def summary(self, top: int = 12) -> dict[str, Any]:
        total = sum(r.ms for r in self.ops) or 1e-12
        rows = sorted(self.ops, key=lambda r: -r.ms)
        per_run = max(self.runs, 1)
        table = [
            {
                **asdict(r),
                "ms_per_run": r.ms / per_run,
                "calls_per_run": r.calls / per_run,
                "share": r.ms / total,
            }
            for r in rows
        ]
        outside = sum(r.ms for r in self.ops if r.outside_delegate) / total if self.has_delegate else None
        return {
            "runtime": self.runtime,
            "runs": self.runs,
            "profiled_ms_per_run": total / per_run,
            "share_outside_delegate": outside,
            "share_layout_conversions": sum(r.ms for r in self.ops if r.layout) / total,
            "top": table[:top],
            "all": table,
            "notes": list(self.notes),
        }
