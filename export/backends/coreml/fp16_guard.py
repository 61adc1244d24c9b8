"""The fp16 overflow guard: convert, find ops whose fp16 values overflow (NumPy reference executor), keep them
in fp32 and convert again, a few rounds at most."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import ExportFailure
from mobileclip_export.export.spec import EncoderExport

from .convert import InputPlan, convert, feeds, remove_artifact
from .mil import FeedError, MilExecutorError, find_fp16_overflows

log = logging.getLogger(__name__)

_FP16_MAX_ROUNDS = 6  # each round keeps newly overflowing ops (and their consumers) in fp32
_CAST_SUFFIX = "_cast_fp16"


def base_name(op_name: str) -> str:
    """The op's name at the time the fp16 pass sees it (the pass appends ``_cast_fp16``)."""
    return op_name[: -len(_CAST_SUFFIX)] if op_name.endswith(_CAST_SUFFIX) else op_name


def fp16_guard(
    enc: EncoderExport, plan: InputPlan, opts: Mapping[str, Any], path: Path
) -> tuple[set[str], str]:
    """Find ops whose fp16 values overflow (reference executor), keep them in fp32, convert again."""
    x = enc.example_inputs[0].detach().cpu().numpy()[:1]
    batch = (opts["batch_sizes"] or (1,))[0]  # the program's default shape
    inputs = feeds(plan, enc, np.repeat(x, batch, axis=0))
    keep: set[str] = set()
    for _ in range(_FP16_MAX_ROUNDS):
        try:
            overflowing = find_fp16_overflows(path, inputs)
        except (MilExecutorError, FeedError) as err:  # e.g. an op it lacks: the export stands
            log.warning("fp16 overflow check could not run: %s", err)
            return keep, f"fp16 overflow check skipped: the reference executor failed ({err})"
        if not overflowing:
            if not keep:
                return keep, "fp16 overflow check: no op overflows fp16 on the example input"
            return keep, f"fp16 overflow guard: kept {len(keep)} op(s) in fp32: {', '.join(sorted(keep))}"
        new = {base_name(n) for n in overflowing} - keep
        if not new:
            break
        log.info("fp16 overflow in %s; converting again with them in fp32", sorted(new))
        keep |= new
        model = convert(enc, plan, "fp16", opts, keep)
        remove_artifact(path)
        model.save(str(path))
    raise ExportFailure(
        f"Core ML fp16 overflows in {sorted(overflowing)} even with {len(keep)} op(s) kept in fp32; "
        "export with --precision fp32"
    )
