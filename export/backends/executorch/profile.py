"""ExecuTorch per-op profile: the runtime's ETDump read back by the devtools Inspector.

The pip runtime records portable-kernel calls (``native_call_<op>``) and, inside the XNNPACK delegate,
one event per XNNPACK operator (``Fully Connected (NC, F32) GEMM #3``): the instance number is dropped so
operators group by kind. The wrappers (``OPERATOR_CALL``, ``DELEGATE_CALL``, ``Method::execute``) would
count the same time twice and are skipped.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mobileclip_export.export.op_profile import OpProfile

_WRAPPERS = {"OPERATOR_CALL", "DELEGATE_CALL", "Method::execute", "Method::init", "Program::load_method"}
_LAYOUT = re.compile(r"^(transpose|permute_copy|copy)\b", re.IGNORECASE)


def _kind(name: str) -> str:
    name = re.sub(r" #\d+$", "", name)
    return name.removeprefix("native_call_")


def profile_executorch(path: Path, inputs: Mapping[str, np.ndarray], threads: int, runs: int) -> OpProfile:
    import executorch.version
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    from mobileclip_export.export.backends.executorch.runtime import set_threads

    set_threads(threads)
    module = portable_lib._load_for_executorch(str(path), enable_etdump=True, debug_buffer_size=0)
    meta = module.method_meta("forward").input_tensor_meta(0)
    want = {3: torch.int32, 4: torch.int64, 5: torch.float16}.get(meta.dtype(), torch.float32)
    x = torch.from_numpy(np.ascontiguousarray(next(iter(inputs.values()))[:1])).to(want)
    for _ in range(runs + 1):  # the first run is a warm-up, dropped below
        module.forward([x])
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "run.etdp"
        module.write_etdump_result_to_file(str(dump))
        inspector = Inspector(etdump_path=str(dump))
    prof = OpProfile(f"ExecuTorch {executorch.version.__version__} ETDump + devtools Inspector", runs)
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for ev in block.events:
            if ev.name in _WRAPPERS or ev.perf_data is None:
                continue
            kind = _kind(ev.name)
            for ms in ev.perf_data.raw[1:]:
                prof.add(kind, ms, outside=not ev.is_delegated_op, layout=bool(_LAYOUT.search(kind)))
    if not any(not r.outside_delegate for r in prof.ops):
        prof.notes.append("no per-op events from inside the delegate (runtime built without its profiler)")
    return prof
