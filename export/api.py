"""``export_model``: the Python API the CLI mirrors one to one.

create_model -> reparameterize_model -> reparam parity (train-time vs inference form) -> per target and
encoder: export to a hidden temp path, structural checks, run in the target's runtime against the TRAIN-TIME
fp32 encoder, then rename into the bundle. The manifest is written last and the bundle renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobileclip_export.errors import ExportFailure, UsageError, VerificationError
from mobileclip_export.export import verify as V
from mobileclip_export.export.backends._tolerances import tolerance_for
from mobileclip_export.export.bundle import (
    BundleWriter,
    artifact_name,
    check_output_dir,
    path_bytes,
    remove_path,
)
from mobileclip_export.export.encoders import encoder_export
from mobileclip_export.export.manifest import ArtifactRecord, ExportResult, build_manifest, tool_versions
from mobileclip_export.export.parity import compare
from mobileclip_export.export.plan import TargetPlan, plan_export
from mobileclip_export.export.progress import ProgressCallback, ProgressEvent
from mobileclip_export.export.target import EncoderExport, RuntimeUnavailable, TensorSpec
from mobileclip_export.hashing import path_sha256

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = (
    "{model}: no checkpoint given, weights are RANDOM (seed {seed}). The artifacts are valid for size and "
    "latency only, NOT for accuracy. Pass --checkpoint to export real weights."
)
LOGIT_SCALE_MAX = 100.0
SETTINGS_FILE = "mobileclip_tokenizer.json"  # our own settings; tokenizer.json is Hugging Face's format


def _create_model(name: str, checkpoint: str | Path | None, seed: int, reduced: bool) -> nn.Module:
    """Seam for tests (toy models before/instead of the real zoo)."""
    from mobileclip_export.models import create_model

    return create_model(name, checkpoint, seed=seed, reduced=reduced)


def _get_spec(name: str) -> Any:
    from mobileclip_export.models import get_model_spec

    return get_model_spec(name)


def _reparameterize(model: nn.Module) -> nn.Module:
    from mobileclip_export.reparam import reparameterize_model

    return reparameterize_model(model)


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


def _weights_info(model: nn.Module, checkpoint: str | Path | None, seed: int) -> dict[str, Any]:
    sha = getattr(model, "checkpoint_sha256", None)
    if checkpoint is None or getattr(model, "random_init", False):
        return {"source": f"random init, seed {seed}", "random_init": True, "seed": seed}
    return {"source": "checkpoint", "random_init": False, "checkpoint": Path(checkpoint).name, "sha256": sha}


_RECORD_FIELDS = {f.name for f in dataclasses.fields(ArtifactRecord)}


def _same_weights(old_manifest: dict, weights: dict[str, Any], reduced: bool) -> bool:
    old_reduced = bool(old_manifest.get("export_args", {}).get("reduced", False))
    return old_manifest.get("weights") == weights and old_reduced == reduced


def _logit_scale(model: nn.Module) -> dict[str, float]:
    raw = getattr(model, "logit_scale", None)
    log_value = float(raw.detach()) if isinstance(raw, torch.Tensor) else math.log(1 / 0.07)
    return {"log": log_value, "value": min(math.exp(log_value), LOGIT_SCALE_MAX), "max": LOGIT_SCALE_MAX}


def _encoder_module(model: nn.Module, encoder: str) -> nn.Module:
    return model.image_encoder if encoder == "image" else model.text_encoder


def _metadata(
    model_name: str,
    encoder: str,
    spec: Any,
    weights: dict,
    logit: dict,
    versions: dict,
    tokenizer: dict,
    reduced: bool,
) -> dict[str, str]:
    pre = spec.preprocessing.to_dict()
    meta = {
        "model": model_name,
        "encoder": encoder,
        "embed_dim": str(spec.embed_dim),
        "weights": weights["source"] if weights["random_init"] else f"checkpoint sha256 {weights['sha256']}",
        "random_init": str(weights["random_init"]).lower(),
        "reduced": str(reduced).lower(),
        "logit_scale": f"{logit['value']:.6g}",
        "embedding": "unnormalized; L2-normalize before cosine similarity",
        "producer": f"mobileclip-export {versions.get('mobileclip_export', '')}",
        "torch_version": versions.get("torch", ""),
        "tool_versions": json.dumps(versions, sort_keys=True),
    }
    if encoder == "image":
        meta.update(
            {
                "image_size": str(spec.image_size),
                "input": "RGB float32 NCHW in [0, 1] (no mean/std: the model normalizes internally)",
                "preprocessing": json.dumps(pre, sort_keys=True),
            }
        )
    else:
        meta.update(
            {
                "context_length": str(spec.context_length),
                "input": "int32 CLIP BPE token ids [B, 77]: SOT, tokens, EOT, then zeros",
                "tokenizer": json.dumps(tokenizer, sort_keys=True),
            }
        )
    return meta


def _app_tokenizer_files(context_length: int) -> dict[str, bytes]:
    from mobileclip_export.models.app_tokenizer import app_tokenizer_files
    from mobileclip_export.models.tokenizer import get_tokenizer

    return dict(app_tokenizer_files(get_tokenizer(), context_length))


def _spec_list(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "description": s.description}
        for s in specs
    ]


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
) -> ExportResult:
    """Export ``model``'s encoders to ``targets`` into ``{output_dir}/{model}/`` and verify each artifact.

    Raises UsageError (bad names/options/paths, existing bundle, missing extra for an explicit target, bad
    checkpoint) before any heavy work, VerificationError if reparameterization changed the model's outputs.
    Per-artifact conversion or parity failures do not raise: they are records with status "failed" and
    ``result.ok`` is False. The bundle is only (re)placed when at least one artifact succeeded.
    """
    emit: ProgressCallback = progress or (lambda ev: None)
    t_start = time.perf_counter()
    spec = _get_spec(model)  # UnknownNameError lists the models
    plan = plan_export(targets, encoders, precision, options)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise UsageError(f"checkpoint {str(checkpoint)!r} does not exist or is not a file")
    out_dir = Path(output_dir)
    check_output_dir(out_dir)
    writer = BundleWriter(out_dir, model, force)
    writer.check_existing()

    result = ExportResult(model=model, bundle_dir=None, manifest_path=None)
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

    verify_inputs: dict[str, V.VerifyInputs] = {}
    references: dict[str, np.ndarray] = {}
    with _Stage(emit, "reparam parity") as st:
        tol = tolerance_for("reparam", "fp32")
        worst = []
        for enc in plan.encoders:
            vin = (
                V.image_inputs(spec.image_size, seed)
                if enc == "image"
                else V.text_inputs(spec.context_length)
            )
            verify_inputs[enc] = vin
            references[enc] = V.torch_outputs(_encoder_module(train_model, enc), vin)
            got = V.torch_outputs(_encoder_module(inf_model, enc), vin)
            stats = compare(references[enc], got)
            bad = stats.violations(tol)
            result.reparam_parity[enc] = V.parity_dict(
                stats, "failed" if bad else "passed", "torch (eager)", True, bad
            )
            worst.append(f"{enc} cos {stats.cosine:.7f} max|d| {stats.max_abs_diff:.2e}")
            if bad:
                raise VerificationError(
                    f"reparameterization changed the {enc} encoder's outputs: {'; '.join(bad)} "
                    f"(max|diff| {stats.max_abs_diff:.3e}, cosine {stats.cosine:.7f})"
                )
        st.message = "; ".join(worst)

    targets_all = [tp.target for tp in plan.targets]
    versions = tool_versions(targets_all)
    weights = _weights_info(train_model, checkpoint, seed)
    logit = _logit_scale(train_model)
    from mobileclip_export.models.tokenizer import tokenizer_config, tokenizer_files

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
            _metadata(model, enc, spec, weights, logit, versions, tok_cfg, reduced),
            seed=seed,
        )
        for enc in plan.encoders
    }

    writer.open()
    try:
        for tp in plan.targets:
            records = _export_target(tp, exports, verify_inputs, references, writer, model, verify, emit)
            result.artifacts.extend(records)
            if any(r.ok and r.path and r.encoder in ("text", "image+text") for r in records):
                names = writer.add_files(tp.target.name, tok_files)
                for r in records:
                    if r.encoder in ("text", "image+text") and r.ok:
                        r.details["tokenizer_files"] = names
        if not any(r.ok and r.path for r in result.artifacts):
            log.error("no artifact succeeded; leaving the output directory unchanged")
            writer.abort()
            result.seconds["total"] = round(time.perf_counter() - t_start, 3)
            return result
        attempted = {(r.target, r.encoder, r.precision) for r in result.artifacts}
        for old in writer.carry_over(attempted, lambda m: _same_weights(m, weights, reduced)):
            result.artifacts.append(ArtifactRecord(**{k: v for k, v in old.items() if k in _RECORD_FIELDS}))
            emit(ProgressEvent("info", "bundle", message=f"kept {old['path']} from the previous export"))
        result.seconds["total"] = round(time.perf_counter() - t_start, 3)
        manifest = build_manifest(
            result=result,
            spec_dict=spec.to_dict(),
            weights=weights,
            preprocessing={
                **spec.preprocessing.to_dict(),
                "baked_in": "mean/std inside the model; feed [0,1] RGB",
            },
            tokenizer={**tok_cfg, "files": list(tok_files)},
            logit_scale=logit,
            export_args={
                "model": model,
                "targets": [tp.target.name for tp in plan.targets],
                "encoders": list(plan.encoders),
                "precision": precision,
                "checkpoint": str(checkpoint) if checkpoint else None,
                "seed": seed,
                "reduced": reduced,
                "verify": verify,
                "force": force,
                "options": {tp.target.name: tp.options for tp in plan.targets},
            },
            versions=versions,
        )
        from mobileclip_export.export.app_bundle import finish_bundle

        with _Stage(emit, "app files"):
            finish_bundle(writer.tmp_dir, manifest, result.artifacts, train_model, spec, verify)
        writer.write_manifest(manifest)
        result.bundle_dir = writer.commit()
        result.manifest_path = result.bundle_dir / "manifest.json"
    finally:
        writer.abort()  # no-op after commit; removes the temp dir on failure or Ctrl-C
    return result


def _export_target(
    tp: TargetPlan,
    exports: dict[str, EncoderExport],
    vins: dict[str, V.VerifyInputs],
    refs: dict[str, np.ndarray],
    writer: BundleWriter,
    model: str,
    verify: bool,
    emit: ProgressCallback,
) -> list[ArtifactRecord]:
    t = tp.target
    from mobileclip_export.export.image_input import wrap_export

    exports = {e: wrap_export(x, tp.options) for e, x in exports.items()}  # NHWC/uint8 when asked
    if tp.multifunction:
        jobs: list[tuple[str, Callable[[Path], Any], list[str]]] = [
            (
                "image+text",
                lambda p: t.export_multifunction(
                    [exports["image"], exports["text"]], tp.precision, tp.options, p
                ),
                ["image", "text"],
            )
        ]
    else:
        jobs = [
            (enc, (lambda p, e=exports[enc]: t.export(e, tp.precision, tp.options, p)), [enc])
            for enc in exports
        ]
    records = []
    for label, run_export, encs in jobs:
        rec = ArtifactRecord(target=t.name, encoder=label, precision=tp.precision, options=dict(tp.options))
        records.append(rec)
        if tp.missing:
            rec.error = tp.missing
            rec.parity = V.parity_dict(None, "not run")
            emit(ProgressEvent("stage-end", "export", t.name, label, 0.0, None, "failed", tp.missing))
            continue
        name = artifact_name(model, label.replace("+", "-"), tp.precision, t.extension)
        partial = writer.partial_path(t.name, name)
        try:
            with _Stage(emit, "export", t.name, label) as st:
                info = run_export(partial)
                if not partial.exists():
                    raise ExportFailure(f"{t.name}: export returned without writing {partial.name}")
                st.bytes = path_bytes(partial)
            rec.seconds["export"] = round(st.seconds, 3)
            rec.inputs, rec.outputs = _spec_list(info.inputs), _spec_list(info.outputs)
            rec.notes, rec.details = list(info.notes), dict(info.details)
            rec.bytes = st.bytes
            with _Stage(emit, "verify", t.name, label) as st:
                _verify_artifact(rec, tp, partial, [exports[e] for e in encs], vins, refs, verify)
                st.status = rec.parity.get("status")
                if rec.parity.get("cosine") is not None:
                    st.message = f"cos {rec.parity['cosine']:.7f}, max|diff| {rec.parity['max_abs_diff']:.2e}"
            rec.seconds["verify"] = round(st.seconds, 3)
            if rec.status == "failed":
                remove_path(partial)
                continue
            rec.sha256 = path_sha256(partial)
            rec.path = writer.place(partial, t.name, name).as_posix()
        except Exception as err:  # one artifact failing must not stop the others (Ctrl-C still does)
            log.debug("%s %s failed", t.name, label, exc_info=True)
            remove_path(partial)
            rec.status = "failed"
            rec.error = str(err) if isinstance(err, ExportFailure) else f"{type(err).__name__}: {err}"
            if not rec.parity:
                rec.parity = V.parity_dict(None, "not run")
    return records


def _verify_artifact(
    rec: ArtifactRecord,
    tp: TargetPlan,
    path: Path,
    encs: list[EncoderExport],
    vins: dict[str, V.VerifyInputs],
    refs: dict[str, np.ndarray],
    verify: bool,
) -> None:
    t = tp.target
    checks: dict[str, Any] = {}
    for enc in encs:
        checks[enc.encoder] = t.structural_checks(path, enc) or {}
    rec.details["structural_checks"] = checks if len(encs) > 1 else checks[encs[0].encoder]
    problems = [f"{e}: {p}" if len(encs) > 1 else p for e, c in checks.items() for p in c.get("problems", [])]
    if problems:
        rec.status, rec.error = "failed", "structural check failed: " + "; ".join(problems)
        rec.parity = V.parity_dict(None, "not run")
        return
    if not verify:
        rec.status, rec.parity = "unverified", V.parity_dict(None, "skipped: --no-verify")
        return
    try:
        runner = t.load(path, tp.options)
    except RuntimeUnavailable as err:
        rec.status, rec.parity = "unverified", V.parity_dict(None, f"skipped: {err}")
        return
    # A dynamic batch dimension is also checked with the whole input set in one call.
    dynamic = {i["name"] for i in rec.inputs if i.get("shape") and i["shape"][0] in (-1, None)}
    tol = tolerance_for(t.name, tp.precision)
    try:
        per_enc = {}
        for enc in encs:
            name, vin, ref = enc.inputs[0].name, vins[enc.encoder], refs[enc.encoder]
            keep = V.spread_subset(len(vin.labels), runner.max_verify_inputs)
            if len(keep) < len(vin.labels):
                vin, ref = V.subset(vin, keep), ref[keep]
                labels = ", ".join(vin.labels)
                rec.notes.append(f"{enc.encoder}: verified on {len(keep)} inputs ({labels}) (slow runtime)")
            stats = compare(ref, V.runner_outputs(runner, name, vin))
            bad = stats.violations(tol)
            if name in dynamic:
                batched = compare(ref, np.asarray(runner.run({name: vin.data}), np.float32))
                rec.details.setdefault("batched_parity", {})[enc.encoder] = batched.to_dict()
                bad += [f"batch of {len(vin.data)}: {v}" for v in batched.violations(tol)]
            per_enc[enc.encoder] = (stats, bad)
    finally:
        runner.close()
    worst_enc = min(per_enc, key=lambda e: (not per_enc[e][1], per_enc[e][0].cosine))
    stats, bad = per_enc[worst_enc]
    status = "failed" if any(v for _, v in per_enc.values()) else "passed"
    rec.parity = V.parity_dict(
        stats,
        status,
        runner.label,
        runner.is_deployment_runtime,
        [f"{e}: {v}" for e, (_, vs) in per_enc.items() for v in vs] if len(encs) > 1 else bad,
    )
    if len(encs) > 1:
        rec.parity["by_encoder"] = {e: s.to_dict() for e, (s, _) in per_enc.items()}
    if status == "failed":
        rec.status = "failed"
        rec.error = f"parity failed vs the train-time PyTorch model: {'; '.join(rec.parity['violations'])}"
    else:
        rec.status = "verified"
