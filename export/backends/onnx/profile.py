"""onnxruntime's own profiler (``SessionOptions.enable_profiling``): node events summed per op type.

ORT has no delegate here (CPUExecutionProvider runs every node), so no "outside" share; its layout
conversions are the NCHWc ``ReorderInput`` / ``ReorderOutput`` nodes its optimizer inserts and ``Transpose``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mobileclip_export.export.op_profile import OpProfile

_LAYOUT_OPS = {"Transpose", "ReorderInput", "ReorderOutput"}


def profile_onnx(path: Path, inputs: Mapping[str, np.ndarray], threads: int, runs: int) -> OpProfile:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.optimized_model_filepath = ""
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        feeds = {k: np.ascontiguousarray(v) for k, v in inputs.items() if k in names}
        if not feeds and len(names) == len(inputs) == 1:  # one input: its name does not matter
            feeds = {names[0]: np.ascontiguousarray(next(iter(inputs.values())))}
        session.run(None, feeds)  # warm-up, dropped below
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    prof = OpProfile(
        f"onnxruntime {ort.__version__} profiler (CPUExecutionProvider)", runs, has_delegate=False
    )
    timed = sorted((ev["ts"], ev["ts"] + ev["dur"]) for ev in events if ev.get("name") == "model_run")[
        1:
    ]  # the first model_run is the warm-up
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        if not any(start <= ev["ts"] <= end for start, end in timed):
            continue
        op = ev.get("args", {}).get("op_name", "?")
        prof.add(op, ev["dur"] / 1000.0, layout=op in _LAYOUT_OPS)
    return prof
