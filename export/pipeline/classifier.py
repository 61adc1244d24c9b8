"""The export stage that adds one classifier artifact per target (``--classes labels.txt``).

For each planned target: convert ``classifier.classifier_export(...)`` with the target's backend, run its
structural checks, run it in the target's runtime on the verification images (the standard image set plus the
sample photographs when installed) and compare its ``logits`` with the two-tower computation of the
TRAIN-TIME model (tolerances from the one table, and identical top-1 wherever the reference is not a near
tie), then place it in the bundle next to ``labels.txt`` and ``label_embeddings.npy``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from mobileclip_export.errors import ExportFailure, UsageError
from mobileclip_export.export import verify_inputs as VI
from mobileclip_export.export.bundle.layout import BundleWriter, path_bytes, remove_path
from mobileclip_export.export.bundle.manifest import ArtifactRecord
from mobileclip_export.export.parity import compare
from mobileclip_export.export.pipeline import verify as V
from mobileclip_export.export.pipeline.plan import TargetPlan
from mobileclip_export.export.spec import EncoderExport, RuntimeUnavailable, artifact_name
from mobileclip_export.export.target import Target
from mobileclip_export.export.tolerances import tolerance_for
from mobileclip_export.export.zeroshot import classifier as C
from mobileclip_export.export.zeroshot import prompts as Z

log = logging.getLogger(__name__)


@dataclass
class ClassifierJob:
    """Everything the stage needs, built once per export."""

    labels: list[str]
    templates: list[str]
    label_embeddings: np.ndarray  # [N, D] normalized, unscaled
    logit_scale: float
    export: EncoderExport
    images: np.ndarray  # verification images [B, 3, H, W] in [0, 1]
    image_labels: tuple[str, ...]
    reference: np.ndarray  # two-tower logits [B, N]

    def manifest_block(self) -> dict[str, Any]:
        return C.manifest_block(self.labels, self.templates, self.label_embeddings, self.logit_scale)


def read_classes(path: str | Path) -> list[str]:
    """Labels from a file, one per line (blank lines skipped); UsageError names the problem."""
    if not Path(path).is_file():
        raise UsageError(f"--classes {str(path)!r} does not exist or is not a file (one label per line)")
    return Z.parse_labels(None, path)


def _verification_images(
    image_size: int, preprocessing: Any, seed: int
) -> tuple[np.ndarray, tuple[str, ...]]:
    base = VI.image_inputs(image_size, seed)
    try:
        from mobileclip_export.models.preprocess import preprocess_batch
        from mobileclip_export.models.samples import SAMPLES, sample_paths

        photos = preprocess_batch(sample_paths(), preprocessing)
    except UsageError as err:  # MissingDependencyError: no sample photographs installed
        log.info("classifier verification without sample photographs: %s", err)
        return base.data, base.labels
    return np.concatenate([base.data, photos]), (*base.labels, *(s.name for s in SAMPLES))


def prepare(
    train_model: nn.Module,
    image_export: EncoderExport,
    labels: Sequence[str],
    templates: str | Sequence[str] | None,
    logit_scale: float,
    seed: int,
) -> ClassifierJob:
    """Label embeddings from the train-time text encoder, the classifier graph and its reference logits."""
    temps = Z.resolve_templates(templates)
    emb = C.text_embeddings(train_model, list(labels), temps)
    spec = train_model.spec
    images, names = _verification_images(spec.image_size, spec.preprocessing, seed)
    return ClassifierJob(
        labels=list(labels),
        templates=temps,
        label_embeddings=emb,
        logit_scale=float(logit_scale),
        export=C.classifier_export(image_export, emb, logit_scale, labels),
        images=images,
        image_labels=names,
        reference=C.two_tower_logits(train_model, images, emb, logit_scale),
    )


def top1_check(got: np.ndarray, ref: np.ndarray, max_abs_diff: float) -> dict[str, Any]:
    """Top-1 agreement; a disagreement counts only where the reference's top-2 margin exceeds twice the
    measured max|diff| (otherwise it is a near tie that any rounding may flip, reported as such)."""
    part = np.sort(ref, axis=1)
    margin = part[:, -1] - part[:, -2] if ref.shape[1] > 1 else np.full(len(ref), np.inf)
    differ = np.argmax(got, axis=1) != np.argmax(ref, axis=1)
    ties = differ & (margin <= 2 * max_abs_diff)
    return {
        "top1_agree": int((~differ).sum()),
        "n_inputs": int(len(ref)),
        "near_ties_flipped": int(ties.sum()),
        "failures": int((differ & ~ties).sum()),
    }


def _verify(
    rec: ArtifactRecord, job: ClassifierJob, target: Target, precision: str, path: Path, opts: dict
) -> None:
    try:
        runner = target.load(path, opts)
    except RuntimeUnavailable as err:
        rec.status, rec.parity = "unverified", V.parity_dict(None, f"skipped: {err}")
        return
    keep = VI.spread_subset(len(job.images), runner.max_verify_inputs)
    vin = VI.VerifyInputs("image", job.images[keep], tuple(job.image_labels[i] for i in keep))
    try:
        got = V.runner_outputs(runner, job.export.inputs[0].name, vin)
    finally:
        runner.close()
    ref = job.reference[keep]
    if got.shape != ref.shape:
        raise ExportFailure(f"classifier's first output has shape {got.shape}, expected logits {ref.shape}")
    stats = compare(ref, got)
    bad = stats.violations(tolerance_for(precision))
    top1 = top1_check(got, ref, stats.max_abs_diff)
    if top1["failures"]:
        bad.append(f"top-1 differs from the two-tower computation on {top1['failures']} input(s)")
    rec.parity = V.parity_dict(
        stats, "failed" if bad else "passed", runner.label, runner.is_deployment_runtime, bad
    )
    rec.parity["top1"] = top1
    rec.details["verified_on"] = list(vin.labels)
    rec.status = "failed" if bad else "verified"
    if bad:
        rec.error = f"classifier parity failed vs the two-tower PyTorch computation: {'; '.join(bad)}"


def export_classifiers(
    plans: Sequence[TargetPlan], job: ClassifierJob, writer: BundleWriter, model: str, verify: bool
) -> list[ArtifactRecord]:
    """One classifier artifact per target plan (its target, precision, options, missing extra)."""
    records = []
    for tp in plans:
        t = tp.target
        rec = ArtifactRecord(
            target=t.name, encoder=C.CLASSIFIER, precision=tp.precision, options=dict(tp.options)
        )
        records.append(rec)
        if tp.missing:
            rec.error, rec.parity = tp.missing, V.parity_dict(None, "not run")
            continue
        name = artifact_name(model, C.CLASSIFIER, tp.precision, t.extension)
        partial = writer.partial_path(t.name, name)
        try:
            _export_one(rec, job, tp, partial, verify)
            if rec.status == "failed":
                remove_path(partial)
                continue
            from mobileclip_export.hashing import path_sha256

            rec.sha256, rec.bytes = path_sha256(partial), path_bytes(partial)
            rec.path = writer.place(partial, t.name, name).as_posix()
            rec.details["classifier_files"] = writer.add_files(
                t.name, C.bundle_files(job.labels, job.label_embeddings)
            )
        except Exception as err:  # one target failing must not stop the others
            log.debug("%s classifier failed", t.name, exc_info=True)
            remove_path(partial)
            rec.status = "failed"
            rec.error = str(err) if isinstance(err, ExportFailure) else f"{type(err).__name__}: {err}"
            rec.parity = rec.parity or V.parity_dict(None, "not run")
    return records


def _export_one(
    rec: ArtifactRecord, job: ClassifierJob, tp: TargetPlan, partial: Path, verify: bool
) -> None:
    import time

    from mobileclip_export.export.image_input import wrap_export

    # The image-input layout applies (a classifier takes an image); I/O renames such as Apple naming do not.
    enc = wrap_export(job.export, tp.options)
    t0 = time.perf_counter()
    info = tp.target.export(enc, tp.precision, tp.options, partial)
    rec.seconds["export"] = round(time.perf_counter() - t0, 3)
    rec.inputs = [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in info.inputs]
    rec.outputs = [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in info.outputs]
    rec.notes, rec.details = list(info.notes), dict(info.details)
    rec.details["labels"] = list(job.labels)
    checks = tp.target.structural_checks(partial, enc) or {}
    rec.details["structural_checks"] = checks
    if checks.get("problems"):
        rec.status, rec.error = "failed", "structural check failed: " + "; ".join(checks["problems"])
        rec.parity = V.parity_dict(None, "not run")
        return
    if not verify:
        rec.status, rec.parity = "unverified", V.parity_dict(None, "skipped: --no-verify")
        return
    t0 = time.perf_counter()
    _verify(rec, job, tp.target, tp.precision, partial, tp.options)
    rec.seconds["verify"] = round(time.perf_counter() - t0, 3)
