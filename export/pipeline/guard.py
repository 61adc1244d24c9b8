"""The export stage that runs the accuracy guard on a compressed artifact (after its parity check).

Past the task limits the artifact fails with a message naming the most sensitive layers. With the option
``auto_keep_fp`` the stage instead re-exports with the most sensitive layers kept uncompressed (1, 2, 4, ...
of them) until the guard passes, and records what was kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import ExportFailure
from mobileclip_export.export.compression.calibration import TaskData, caption_ids, photographs
from mobileclip_export.export.compression.evalset import EvalRequest, build_eval_task
from mobileclip_export.export.compression.guard import GuardReport, guard_artifact, layer_sensitivity
from mobileclip_export.export.compression.precisions import (
    AUTO_KEEP_OPTION,
    KEEP_FP_OPTION,
    is_compressed,
    parse_layers,
)
from mobileclip_export.export.spec import EncoderExport, RuntimeUnavailable
from mobileclip_export.export.target import Target
from mobileclip_export.export.tolerances import task_tolerance_for, tolerance_for

log = logging.getLogger(__name__)

_MAX_KEEP_ROUNDS = 6  # keeps up to 2^5 = 32 layers
_SENSITIVITY_INPUTS = 2  # photographs / captions the per-layer PyTorch pass runs (it only ranks)


def task_data(train_model: Any, spec: Any, evaluation: EvalRequest | None = None) -> TaskData:
    """Photographs, captions and their fp32 train-time embeddings (one batched forward each); with
    ``evaluation`` (--eval-dir) also the user's images and their fp32 zero-shot figures."""
    import torch

    images = photographs(spec)
    ids = caption_ids(spec.context_length)
    with torch.no_grad():
        ref_i = train_model.image_encoder(torch.from_numpy(images)).float().numpy()
        ref_t = train_model.text_encoder(torch.from_numpy(ids)).float().numpy()
    scale = float(train_model.logit_scale.detach().exp()) if hasattr(train_model, "logit_scale") else 100.0
    ev = build_eval_task(evaluation, train_model, spec) if evaluation is not None else None
    trained = not getattr(train_model, "random_init", False)
    return TaskData(images, ids, ref_i, ref_t, scale, trained, ev)


def needs_guard(precision: str) -> bool:
    return is_compressed(precision) and task_tolerance_for(precision) is not None


def _embed_with(runner: Any, input_name: str) -> Callable[[np.ndarray], np.ndarray]:
    def embed(x: np.ndarray) -> np.ndarray:
        rows = [
            np.asarray(runner.run({input_name: x[i : i + 1]}), np.float32).reshape(1, -1)
            for i in range(len(x))
        ]
        return np.concatenate(rows)

    return embed


def _measure(
    t: Target,
    path: Path,
    options: Mapping[str, Any],
    *,
    enc: EncoderExport,
    task: TaskData,
    precision: str,
    verify: tuple[np.ndarray, np.ndarray],
) -> GuardReport:
    runner = t.load(path, options)
    try:
        tol = task_tolerance_for(precision)
        if tol is None:
            raise ExportFailure(f"no accuracy guard limits for {precision!r} in the tolerance table")
        tols = (tolerance_for(precision), tol)
        return guard_artifact(
            task, enc.encoder, _embed_with(runner, enc.inputs[0].name), precision, tols, verify
        )
    finally:
        runner.close()


def _sensitivity_inputs(enc: EncoderExport, task: TaskData) -> np.ndarray:
    return (task.images if enc.encoder == "image" else task.ids)[:_SENSITIVITY_INPUTS]


@dataclass(frozen=True)
class GuardJob:
    """One artifact under guard: where it is, how it was made, and how to make it again."""

    target: Target
    precision: str
    options: Mapping[str, Any]
    path: Path
    # Writes the artifact again at ``path`` with other options (auto keep); guard_record supplies it.
    reexport: Callable[[Mapping[str, Any]], Any] | None = None


def run_guard(
    job: GuardJob,
    encs: Sequence[EncoderExport],
    task: TaskData,
    verify: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> tuple[dict[str, Any], list[str]]:
    """Guard each encoder of the artifact; returns (manifest block, failure messages naming worst layers).

    ``verify[encoder]`` is (verification inputs, fp32 train-time outputs) of that encoder."""
    block: dict[str, Any] = {}
    failures: list[str] = []
    for enc in encs:
        measure = partial(
            _measure,
            job.target,
            job.path,
            enc=enc,
            task=task,
            precision=job.precision,
            verify=verify[enc.encoder],
        )
        try:
            report = measure(job.options)
        except RuntimeUnavailable as err:
            block[enc.encoder] = {"status": f"skipped: {err}"}
            continue
        if not report.passed:
            report.worst_layers = layer_sensitivity(enc.module, _sensitivity_inputs(enc, task), job.precision)
            if job.options.get(AUTO_KEEP_OPTION) and len(encs) == 1:
                report = _auto_keep(job, measure, report)
        report.kept_layers = report.kept_layers or list(parse_layers(job.options.get(KEEP_FP_OPTION)))
        block[enc.encoder] = report.to_dict()
        if not report.passed:
            failures.append(report.message())
    return (block if len(encs) > 1 else block[encs[0].encoder]), failures


def _auto_keep(
    job: GuardJob, measure: Callable[[Mapping[str, Any]], GuardReport], report: GuardReport
) -> GuardReport:
    """Re-export keeping the given layers plus the 1, 2, 4, ... most sensitive ones until the guard passes."""
    ranked = report.worst_layers
    given = list(parse_layers(job.options.get(KEEP_FP_OPTION)))
    order = given + [n for n, _ in ranked if n not in given]
    for r in range(_MAX_KEEP_ROUNDS):
        keep = order[: len(given) + (1 << r)]
        log.info("guard: %s fails (%s); keeping %s uncompressed", job.precision, report.violations, keep)
        opts = {**job.options, KEEP_FP_OPTION: ",".join(keep)}
        try:
            assert job.reexport is not None, "auto keep needs a reexport callable"
            job.reexport(opts)
        except ExportFailure as err:
            log.warning("re-export with kept layers failed: %s", err)
            break
        report = measure(opts)
        report.worst_layers, report.kept_layers = ranked, keep
        if report.passed or len(keep) >= len(order):
            break
    return report


def guard_record(
    rec: Any,
    job: GuardJob,
    encs: list[EncoderExport],
    vins: Mapping[str, Any],
    refs: Mapping[str, np.ndarray],
    task: TaskData,
) -> None:
    """Guard the artifact of manifest record ``rec`` (after its parity check); with auto keep, re-export it
    (``job.reexport`` is replaced) and check the mixed-precision artifact again. Sets ``rec.status/error``."""
    from mobileclip_export.export.bundle.layout import path_bytes, remove_path
    from mobileclip_export.export.pipeline.verify import verify_artifact

    def reexport(opts: Mapping[str, Any]) -> None:
        remove_path(job.path)
        info = job.target.export(encs[0], job.precision, opts, job.path)
        rec.details.update(info.details)

    job = GuardJob(job.target, job.precision, job.options, job.path, reexport)
    verify = {e.encoder: (vins[e.encoder].data, refs[e.encoder]) for e in encs}
    block, failures = run_guard(job, encs, task, verify)
    rec.details["accuracy_guard"] = block
    if rec.details.get("kept_fp_layers") and not parse_layers(job.options.get(KEEP_FP_OPTION)):
        rec.bytes = path_bytes(job.path)  # auto keep wrote a mixed-precision artifact: verify it again
        rec.status, rec.error = "verified", None
        verify_artifact(rec, job.target, job.precision, job.options, job.path, encs, vins, refs, True)
    if failures:
        rec.status, rec.error = "failed", "; ".join(failures)
