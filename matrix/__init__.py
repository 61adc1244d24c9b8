"""The variant x target x precision x encoder matrix: plan, run (local pool or Ray), merge, report.

Every cell is content addressed (``jobs.cell_key``): a verified cell with the same key is reused, so a re-run
after a crash, or with a new target, only converts what is missing. Public API: ``plan_matrix`` and
``run_matrix``.
"""

from __future__ import annotations

from mobileclip_export.matrix.jobs import Job, MatrixRequest, plan_matrix
from mobileclip_export.matrix.run import MatrixOutcome, run_matrix

__all__ = ["Job", "MatrixOutcome", "MatrixRequest", "plan_matrix", "run_matrix"]
