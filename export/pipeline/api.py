"""``export_model``: the Python API the CLI mirrors one to one.

``export_model`` reads as its stages: validate the request (cheap, before any heavy work) -> build the model
-> reparameterize and check parity (train-time vs inference form) -> prepare what every artifact embeds ->
per target and encoder: export to a hidden temp path, structural checks, run in the target's runtime against
the TRAIN-TIME fp32 encoder (``verify.verify_artifact``), rename into the bundle -> carry over the previous
bundle's other artifacts (--force, same weights) -> write the manifest last and rename the bundle into place.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial as partial_fn
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from mobileclip_export.errors import ExportFailure, MobileClipExportError, VerificationError, raised_by_us
from mobileclip_export.export import verify_inputs as VI
from mobileclip_export.export.bundle.app_files import finish_bundle
from mobileclip_export.export.bundle.golden import GoldenInputs, golden_inputs
from mobileclip_export.export.bundle.layout import (
    MANIFEST,
    BundleWriter,
    check_output_dir,
    path_bytes,
    remove_created,
    remove_path,
)
from mobileclip_export.export.bundle.manifest import (
    ArtifactRecord,
    ExportResult,
    artifact_metadata,
    build_manifest,
    logit_scale_info,
    record_from_manifest,
    same_weights,
    tool_versions,
    weights_info,
)
from mobileclip_export.export.compression.calibration import TaskData
from mobileclip_export.export.compression.evalset import EvalRequest
from mobileclip_export.export.parity import compare
from mobileclip_export.export.pipeline import verify as V
from mobileclip_export.export.pipeline.encoders import encoder_export
from mobileclip_export.export.pipeline.guard import GuardJob, guard_record, needs_guard, task_data
from mobileclip_export.export.pipeline.lanes import LaneFailure, lane_count, run_lanes
from mobileclip_export.export.pipeline.plan import ExportPlan, TargetPlan, check_output_path, plan_export
from mobileclip_export.export.pipeline.progress import ProgressCallback, ProgressEvent
from mobileclip_export.export.spec import EncoderExport, TensorSpec
from mobileclip_export.export.tolerances import tolerance_for
from mobileclip_export.hashing import path_sha256
from mobileclip_export.models.preprocess import EXIF_ORIENTATION
from mobileclip_export.models.spec import ModelSpec

if TYPE_CHECKING:
    from mobileclip_export.export.pipeline.classifier import ClassifierJob

Templates = str | Sequence[str] | None  # a template set name, a file, or the templates themselves

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = (
    "{model}: no checkpoint given, weights are RANDOM (seed {seed}). The artifacts are valid for size and "
    "latency only, NOT for accuracy. Pass --checkpoint to export real weights."
)
SETTINGS_FILE = "mobileclip_tokenizer.json"  # our own settings; tokenizer.json is Hugging Face's format


def _create_model(name: str, checkpoint: str | Path | None, seed: int, reduced: bool) -> nn.Module:
    """Seam for tests (toy models before/instead of the real zoo). reparam's create_model: a checkpoint of
    our fully fused form gives the fused model (its reparameterization is then a no-op)."""
    from mobileclip_export.reparam import create_model

    return create_model(name, checkpoint, seed=seed, reduced=reduced)


def _get_spec(name: str) -> ModelSpec:
    from mobileclip_export.models import get_model_spec

    return get_model_spec(name)


def _reparameterize(model: nn.Module) -> nn.Module:
    from mobileclip_export.reparam import reparameterize_model

    return reparameterize_model(model)


def _check_checkpoint(checkpoint: str | Path | None) -> None:
    """Fail before the model is built: a missing file, or one that is no checkpoint format we read."""
    if checkpoint is None:
        return
    if not Path(checkpoint).is_file():
        from mobileclip_export.errors import UsageError

        raise UsageError(f"checkpoint {str(checkpoint)!r} does not exist or is not a file")
    from mobileclip_export.models.checkpoint import check_checkpoint_format

    check_checkpoint_format(Path(checkpoint))


class _Stage:
    """Times a stage and reports start/end to the progress callback."""

    def __init__(
        self, emit: ProgressCallback, stage: str, target: str | None = None, encoder: str | None = None
    ):
        self.emit, self.stage, self.target, self.encoder = emit, stage, target, encoder
        self.seconds = 0.0
        self.bytes: int | None = None
        self.status: str | None = None
        self.message = ""

    def __enter__(self) -> _Stage:
        self.t0 = time.perf_counter()
        self.emit(ProgressEvent("stage-start", self.stage, self.target, self.encoder))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.seconds = time.perf_counter() - self.t0
        status = self.status if exc is None else f"error: {type(exc).__name__}"
        self.emit(
            ProgressEvent(
                "stage-end",
                self.stage,
                self.target,
                self.encoder,
                self.seconds,
                self.bytes,
                status,
                self.message,
            )
        )


def _app_tokenizer_files(context_length: int) -> dict[str, bytes]:
    from mobileclip_export.models.app_tokenizer import app_tokenizer_files
    from mobileclip_export.models.tokenizer import get_tokenizer

    return dict(app_tokenizer_files(get_tokenizer(), context_length))


def _spec_list(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "description": s.description}
        for s in specs
    ]


@dataclass
class _Prepared:
    """What every artifact of this run embeds or is checked against (built once, before the targets)."""

    weights: dict[str, Any]
    logit: dict[str, float]
    versions: dict[str, str]
    tokenizer: dict[str, Any]
    tokenizer_files: dict[str, bytes | Path]
    exports: dict[str, EncoderExport]
    verify_inputs: dict[str, VI.VerifyInputs] = field(default_factory=dict)
    references: dict[str, np.ndarray] = field(default_factory=dict)
    task: TaskData | None = None  # photographs/captions + fp32 embeddings for the accuracy guard
    classifier: ClassifierJob | None = None  # when labels are baked in (--classes)
    golden: GoldenInputs | None = None  # when verifying: each artifact runs them while verification has it


def export_model(
    model: str,
    targets: str | Sequence[str] = "all",
    *,
    checkpoint: str | Path | None = None,
    encoders: str | Sequence[str] = ("image", "text"),
    precision: str | None = None,
    output_dir: str | Path = "exports",
    force: bool = False,
    verify: bool = True,
    options: dict[str, Any] | None = None,
    reduced: bool = False,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    classes: Sequence[str] | None = None,
    templates: str | Sequence[str] | None = None,
    evaluation: EvalRequest | None = None,
    jobs: int | None = None,
) -> ExportResult:
    """Export ``model``'s encoders (and with ``classes`` a classifier) to ``targets``, verify each artifact.
    Raises UsageError (bad names/options/paths, existing bundle, missing extra for an explicit target, bad
    checkpoint) before any heavy work, VerificationError if reparameterization changed the model's outputs.
    Conversion or parity failures are records with status "failed" (``result.ok`` False), never raised; the
    bundle ``{output_dir}/{model}/`` is only (re)placed when an artifact succeeded. ``jobs``: export lanes."""
    emit: ProgressCallback = progress or (lambda ev: None)
    t_start = time.perf_counter()
    spec = _get_spec(model)  # UnknownNameError lists the models
    plan = plan_export(targets, encoders, precision, options)
    _check_request(checkpoint, classes, templates, plan, jobs)
    out_dir = Path(output_dir)
    check_output_path(out_dir, model, plan)  # a name or path too long for the filesystem: before any work
    created = check_output_dir(out_dir)
    writer = BundleWriter(out_dir, model, force)
    result = ExportResult(model=model, bundle_dir=None, manifest_path=None)
    try:
        writer.check_existing()
        train_model, inf_model = _build_models(model, checkpoint, seed, reduced, result, emit)
        prep = _prepare(model, spec, plan, train_model, inf_model, checkpoint, seed, reduced)
        _reparam_parity(train_model, inf_model, spec, plan, seed, prep, result, emit)
        if verify:
            _verification_data(prep, train_model, spec, plan, emit, evaluation)
        _prepare_classifier(prep, train_model, classes, templates, seed, emit)
        writer.open()
        _export_targets(plan, prep, writer, model, verify, emit, result, jobs)
        if not any(r.ok and r.path for r in result.artifacts):
            log.error("no artifact succeeded; leaving the output directory unchanged")
            return result
        _carry_over(writer, prep, reduced, emit, result)
        result.seconds["total"] = round(time.perf_counter() - t_start, 3)
        args = dict(precision=precision, checkpoint=checkpoint, seed=seed, reduced=reduced, verify=verify)
        manifest = _manifest(spec, prep, _export_args(model, plan, args | {"force": force}), result)
        with _Stage(emit, "app files"):  # golden vectors and the other files an app needs
            finish_bundle(writer.tmp_dir, manifest, result.artifacts, prep.golden)
        _commit(writer, manifest, result)
    finally:
        writer.abort()  # no-op after commit; removes the temp dir on failure or Ctrl-C
        result.seconds.setdefault("total", round(time.perf_counter() - t_start, 3))
        if result.bundle_dir is None:
            remove_created(created, out_dir)  # a run that wrote nothing leaves no empty folder behind
    return result


def _verification_data(
    prep: _Prepared,
    train_model: nn.Module,
    spec: ModelSpec,
    plan: ExportPlan,
    emit: ProgressCallback,
    evaluation: EvalRequest | None = None,
) -> None:
    """The golden inputs with their train-time embeddings, and (for compressed precisions) the photographs
    and captions the accuracy guard scores artifacts on, with ``evaluation`` the user's labelled images:
    built once, used by every artifact."""
    with _Stage(emit, "golden inputs"):
        prep.golden = golden_inputs(train_model, spec.preprocessing, spec.context_length)
    if any(needs_guard(tp.precision) for tp in plan.targets):
        with _Stage(emit, "guard data") as st:
            prep.task = task_data(train_model, spec, evaluation)
            st.message = f"{len(prep.task.images)} photographs, {len(prep.task.ids)} captions"
    elif evaluation is not None:
        log.warning("--eval-dir judges compressed artifacts; no precision of this export is compressed")


def _export_args(model: str, plan: ExportPlan, args: dict[str, Any]) -> dict[str, Any]:
    """How the bundle was made, as recorded in the manifest (bench reuses size, seed and checkpoint)."""
    args = args | {"checkpoint": str(args["checkpoint"]) if args["checkpoint"] else None}
    return {
        "model": model,
        "targets": [tp.target.name for tp in plan.targets],
        "encoders": list(plan.encoders),
        **args,
        "options": {tp.target.name: tp.options for tp in plan.targets},
    }


def _check_request(
    checkpoint: str | Path | None,
    classes: Sequence[str] | None,
    templates: Templates,
    plan: ExportPlan,
    jobs: int | None = None,
) -> None:
    """Cheap checks before any heavy work: the checkpoint file; --classes needs the image encoder, valid
    templates, and labels that stay distinct within the context length."""
    from mobileclip_export.errors import UsageError
    from mobileclip_export.export.zeroshot import prompts as Z

    _check_checkpoint(checkpoint)
    lane_count(jobs, len(plan.targets))  # a bad $MOBILECLIP_EXPORT_JOBS before any heavy work
    if classes is not None and "image" not in plan.encoders:
        raise UsageError("--classes bakes labels into the image encoder; it needs --encoder image or both")
    if classes is not None:
        Z.check_prompts(list(classes), Z.resolve_templates(templates))


def _prepare_classifier(
    prep: _Prepared,
    model: nn.Module,
    classes: Sequence[str] | None,
    templates: Templates,
    seed: int,
    emit: ProgressCallback,
) -> None:
    """Label embeddings, the classifier graph and its two-tower reference (export/classifier_stage.py)."""
    if classes is None:
        return
    from mobileclip_export.export.pipeline.classifier import prepare

    with _Stage(emit, "classifier labels"):
        prep.classifier = prepare(model, prep.exports["image"], classes, templates, prep.logit["value"], seed)


def _build_models(
    model: str,
    checkpoint: str | Path | None,
    seed: int,
    reduced: bool,
    result: ExportResult,
    emit: ProgressCallback,
) -> tuple[nn.Module, nn.Module]:
    """The train-time model (checkpoint or seeded random weights) and its reparameterized form."""
    with _Stage(emit, "build model") as st:
        train_model = _create_model(model, checkpoint, seed, reduced).eval()
        result.random_init = bool(getattr(train_model, "random_init", checkpoint is None))
        st.message = "random weights" if result.random_init else "checkpoint"
    if result.random_init:
        msg = RANDOM_WEIGHTS_WARNING.format(model=model, seed=seed)
        result.warnings.append(msg)
        emit(ProgressEvent("warning", "build model", message=msg))
    with _Stage(emit, "reparameterize"):
        inf_model = _reparameterize(train_model).eval()
    return train_model, inf_model


def _prepare(
    model: str,
    spec: ModelSpec,
    plan: ExportPlan,
    train_model: nn.Module,
    inf_model: nn.Module,
    checkpoint: str | Path | None,
    seed: int,
    reduced: bool,
) -> _Prepared:
    """Weights facts, tool versions, tokenizer files and one ``EncoderExport`` per encoder."""
    from mobileclip_export.models.tokenizer import tokenizer_config, tokenizer_files

    versions = tool_versions([tp.target for tp in plan.targets])
    weights = weights_info(train_model, checkpoint, seed)
    logit = logit_scale_info(train_model)
    tok_cfg = tokenizer_config()
    tok_files: dict[str, bytes | Path] = {p.name: p for p in tokenizer_files()}
    if "text" in plan.encoders:
        tok_files.update(_app_tokenizer_files(spec.context_length))
    tok_files[SETTINGS_FILE] = (json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n").encode()
    exports = {
        enc: encoder_export(
            model,
            enc,
            inf_model,
            artifact_metadata(model, enc, spec, weights, logit, versions, tok_cfg, reduced),
            seed=seed,
        )
        for enc in plan.encoders
    }
    return _Prepared(weights, logit, versions, tok_cfg, tok_files, exports)


def _encoder_module(model: nn.Module, encoder: str) -> nn.Module:
    return model.image_encoder if encoder == "image" else model.text_encoder


def _reparam_parity(
    train_model: nn.Module,
    inf_model: nn.Module,
    spec: ModelSpec,
    plan: ExportPlan,
    seed: int,
    prep: _Prepared,
    result: ExportResult,
    emit: ProgressCallback,
) -> None:
    """Reparameterized vs train-time outputs on the verification inputs, whose train-time outputs become
    the references every artifact is checked against. Raises VerificationError beyond tolerance."""
    tol = tolerance_for("fp32", stage="reparam")
    with _Stage(emit, "reparam parity") as st:
        worst = []
        for enc in plan.encoders:
            vin = (
                VI.image_inputs(spec.image_size, seed)
                if enc == "image"
                else VI.text_inputs(spec.context_length)
            )
            prep.verify_inputs[enc] = vin
            ref = prep.references[enc] = V.torch_outputs(_encoder_module(train_model, enc), vin)
            stats = compare(ref, V.torch_outputs(_encoder_module(inf_model, enc), vin))
            bad = stats.violations(tol)
            status = "failed" if bad else "passed"
            result.reparam_parity[enc] = V.parity_dict(stats, status, "torch (eager)", True, bad)
            worst.append(f"{enc} cos {stats.cosine:.7f} max|d| {stats.max_abs_diff:.2e}")
            if bad:
                raise VerificationError(
                    f"reparameterization changed the {enc} encoder's outputs: {'; '.join(bad)} "
                    f"(max|diff| {stats.max_abs_diff:.3e}, cosine {stats.cosine:.7f})"
                )
        st.message = "; ".join(worst)


def _jobs(
    tp: TargetPlan, exports: dict[str, EncoderExport]
) -> list[tuple[str, Callable[[Path], Any], list[str]]]:
    """(label, export-to-path, encoders) per artifact of one target: one multi-function artifact or one
    artifact per encoder."""
    t = tp.target
    if tp.multifunction:
        both = [exports["image"], exports["text"]]
        return [
            (
                "image+text",
                lambda p: t.export_multifunction(both, tp.precision, tp.options, p),
                ["image", "text"],
            )
        ]
    return [
        (enc, (lambda p, e=exports[enc]: t.export(e, tp.precision, tp.options, p)), [enc]) for enc in exports
    ]


def _export_targets(
    plan: ExportPlan,
    prep: _Prepared,
    writer: BundleWriter,
    model: str,
    verify: bool,
    emit: ProgressCallback,
    result: ExportResult,
    jobs: int | None = None,
) -> None:
    """Every planned target into ``result``, in plan order. With several export lanes (lanes.py: this
    process and child processes, so every core converts) each lane takes the next target, heaviest
    first. In one lane, a target whose runtime here is a slow reference (``Target.verify_beside``) converts
    first and is verified in a background thread while the others convert."""
    lanes = lane_count(jobs, len(plan.targets))
    if lanes == 1:
        records = _export_lane(list(plan.targets), prep, writer, model, verify, emit)
    else:
        work = partial_fn(_export_one, prep=prep, writer=writer, model=model, verify=verify)
        weights = [tp.target.export_weight for tp in plan.targets]
        got = run_lanes(work, list(plan.targets), weights, lanes, emit)
        records = {
            tp.target.name: _lane_failed(tp, prep, writer, r) if isinstance(r, LaneFailure) else r
            for tp, r in zip(plan.targets, got, strict=True)
        }
    for tp in plan.targets:
        result.artifacts.extend(records[tp.target.name])


def _export_lane(
    tps: list[TargetPlan],
    prep: _Prepared,
    writer: BundleWriter,
    model: str,
    verify: bool,
    emit: ProgressCallback,
) -> dict[str, list[ArtifactRecord]]:
    """Targets one after another; ``verify_beside`` targets first, verified in a background thread; their
    records wait for that verification before anything reads them."""
    order = sorted(tps, key=lambda tp: not tp.target.verify_beside)  # stable: plan order otherwise
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-beside") as beside:
        finishers = {
            tp.target.name: _export_target(tp, prep, writer, model, verify, emit, beside) for tp in order
        }
        return {name: finish() for name, finish in finishers.items()}


def _export_one(
    tp: TargetPlan, emit: ProgressCallback, *, prep: _Prepared, writer: BundleWriter, model: str, verify: bool
) -> list[ArtifactRecord]:
    """One target in an export lane (run by lanes.py, here or in a child process)."""
    return _export_lane([tp], prep, writer, model, verify, emit)[tp.target.name]


def _lane_failed(
    tp: TargetPlan, prep: _Prepared, writer: BundleWriter, failure: LaneFailure
) -> list[ArtifactRecord]:
    """Failure records for the artifacts of a target whose export lane raised or died; whatever that lane
    had already placed for the target leaves the bundle (no file the manifest does not list)."""
    writer.drop_target(tp.target.name)
    out = []
    for label, _, _ in _jobs(tp, prep.exports):
        rec = ArtifactRecord(tp.target.name, label, tp.precision, options=dict(tp.options))
        rec.error, rec.parity = failure.message, V.parity_dict(None, "not run")
        out.append(rec)
    return out


def _export_target(
    tp: TargetPlan,
    prep: _Prepared,
    writer: BundleWriter,
    model: str,
    verify: bool,
    emit: ProgressCallback,
    beside: ThreadPoolExecutor,
) -> Callable[[], list[ArtifactRecord]]:
    """Convert every artifact of one target (verified here, or in ``beside`` for a slow reference runtime);
    returns the step that waits for them, adds classifier artifacts and the tokenizer files next to its text
    encoders, and gives the target's records."""
    t = tp.target
    exports = {e: t.adapt_export(x, tp.options) for e, x in prep.exports.items()}  # e.g. NHWC/uint8 inputs
    records: list[ArtifactRecord] = []
    pending: list[Future[None]] = []
    for label, run_export, encs in _jobs(tp, exports):
        rec = ArtifactRecord(target=t.name, encoder=label, precision=tp.precision, options=dict(tp.options))
        records.append(rec)
        if tp.missing:
            rec.error = tp.missing
            rec.parity = V.parity_dict(None, "not run")
            emit(ProgressEvent("stage-end", "export", t.name, label, 0.0, None, "failed", tp.missing))
            continue
        name = t.artifact_name(model, label.replace("+", "-"), tp.precision, tp.options)
        partial = writer.partial_path(t.name, name)
        if not _convert(rec, tp, run_export, partial, emit):
            continue
        encoders = [exports[e] for e in encs]
        check = partial_fn(_check_and_place, rec, tp, partial, encoders, prep, verify, emit, writer, name)
        if t.verify_beside:
            pending.append(beside.submit(check))
        else:
            check()

    def finish() -> list[ArtifactRecord]:
        for job in pending:
            job.result()
        return records + _target_files(tp, prep, writer, model, verify, emit, records)

    return finish


def _target_files(
    tp: TargetPlan,
    prep: _Prepared,
    writer: BundleWriter,
    model: str,
    verify: bool,
    emit: ProgressCallback,
    records: list[ArtifactRecord],
) -> list[ArtifactRecord]:
    """The target's classifier artifacts (``--classes``); the tokenizer files next to its text encoders."""
    extra = []
    if prep.classifier is not None:
        from mobileclip_export.export.pipeline.classifier import export_classifiers

        with _Stage(emit, "export", tp.target.name, "classifier"):
            extra = export_classifiers([tp], prep.classifier, writer, model, verify)
    if any(r.ok and r.path and r.encoder in ("text", "image+text") for r in records):
        names = writer.add_files(tp.target.name, prep.tokenizer_files)
        for r in records:
            if r.encoder in ("text", "image+text") and r.ok:
                r.details["tokenizer_files"] = names
    return extra


def _convert(
    rec: ArtifactRecord,
    tp: TargetPlan,
    run_export: Callable[[Path], Any],
    partial: Path,
    emit: ProgressCallback,
) -> bool:
    """Convert one artifact into ``partial``; False (failure recorded, partial removed) when it failed."""
    t = tp.target
    try:
        with _Stage(emit, "export", t.name, rec.encoder) as st:
            info = run_export(partial)
            if not partial.exists():
                raise ExportFailure(f"{t.name}: export returned without writing {partial.name}")
            st.bytes = path_bytes(partial)
    except Exception as err:  # one artifact failing must not stop the others (Ctrl-C still does)
        _record_failure(rec, err)
        remove_path(partial)
        return False
    rec.seconds["export"] = round(st.seconds, 3)
    rec.inputs, rec.outputs = _spec_list(info.inputs), _spec_list(info.outputs)
    rec.notes, rec.details = list(info.notes), dict(info.details)
    rec.bytes = st.bytes
    return True


def _check_and_place(
    rec: ArtifactRecord,
    tp: TargetPlan,
    partial: Path,
    encs: list[EncoderExport],
    prep: _Prepared,
    verify: bool,
    emit: ProgressCallback,
    writer: BundleWriter,
    name: str,
) -> None:
    """Verify (and guard) a converted artifact, then give it its final name in the bundle."""
    t = tp.target
    try:
        with _Stage(emit, "verify", t.name, rec.encoder) as st:
            vins, refs = prep.verify_inputs, prep.references
            feeds = prep.golden.feeds if prep.golden else None
            V.verify_artifact(rec, t, tp.precision, tp.options, partial, encs, vins, refs, verify, feeds)
            st.status = rec.parity.get("status")
            if rec.parity.get("cosine") is not None:
                st.message = f"cos {rec.parity['cosine']:.7f}, max|diff| {rec.parity['max_abs_diff']:.2e}"
        rec.seconds["verify"] = round(st.seconds, 3)
        if prep.task is not None and needs_guard(tp.precision) and rec.parity.get("cosine") is not None:
            with _Stage(emit, "guard", t.name, rec.encoder) as st:  # parity + task, maybe a re-export
                job = GuardJob(t, tp.precision, tp.options, partial)
                guard_record(rec, job, encs, prep.verify_inputs, prep.references, prep.task)
                st.status = rec.status
            rec.seconds["guard"] = round(st.seconds, 3)
        if rec.status != "failed":
            rec.sha256 = path_sha256(partial)
            rec.path = writer.place(partial, t.name, name).as_posix()
    except Exception as err:  # one artifact failing must not stop the others (Ctrl-C still does)
        _record_failure(rec, err)
    finally:
        if rec.path is None:
            remove_path(partial)


def _record_failure(rec: ArtifactRecord, err: Exception) -> None:
    """A converter's or runtime's error is this artifact's failure record (traceback at -vv). An error
    raised from our own code that is none of our error types is a bug: its traceback is logged at ERROR."""
    what = f"{rec.target} {rec.encoder} {rec.precision}"
    if isinstance(err, MobileClipExportError):
        log.debug("%s failed", what, exc_info=err)
        rec.error = str(err)
    elif raised_by_us(err):
        log.error("%s: internal error (a bug in mobileclip-export, please report it)", what, exc_info=err)
        rec.error = f"internal error: {type(err).__name__}: {err}"
    else:
        log.debug("%s failed in a converter or runtime", what, exc_info=err)
        rec.error = f"{type(err).__name__}: {err}"
    rec.status = "failed"
    if not rec.parity:
        rec.parity = V.parity_dict(None, "not run")


def _carry_over(
    writer: BundleWriter, prep: _Prepared, reduced: bool, emit: ProgressCallback, result: ExportResult
) -> None:
    """With --force and the same weights: keep the previous bundle's artifacts this run did not redo."""
    attempted = {(r.target, r.encoder, r.precision) for r in result.artifacts}
    for old in writer.carry_over(attempted, lambda m: same_weights(m, prep.weights, reduced)):
        result.artifacts.append(record_from_manifest(old))
        emit(ProgressEvent("info", "bundle", message=f"kept {old['path']} from the previous export"))


def _manifest(
    spec: Any, prep: _Prepared, export_args: dict[str, Any], result: ExportResult
) -> dict[str, Any]:
    doc = build_manifest(
        result=result,
        spec_dict=spec.to_dict(),
        weights=prep.weights,
        preprocessing={
            **spec.preprocessing.to_dict(),
            "baked_in": "mean/std inside the model; feed [0,1] RGB",
            "exif_orientation": EXIF_ORIENTATION,  # photos are turned upright before resizing
        },
        tokenizer={**prep.tokenizer, "files": list(prep.tokenizer_files)},
        logit_scale=prep.logit,
        export_args=export_args,
        versions=prep.versions,
    )
    if prep.classifier is not None:
        doc["classifier"] = prep.classifier.manifest_block()
    return doc


def _commit(writer: BundleWriter, manifest: dict[str, Any], result: ExportResult) -> None:
    """The manifest last, then the bundle renamed into place."""
    writer.write_manifest(manifest)
    result.bundle_dir = writer.commit()
    result.manifest_path = result.bundle_dir / MANIFEST
