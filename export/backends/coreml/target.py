"""The Core ML target: names, options and the export/load/check steps, each in its own module."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mobileclip_export.errors import UsageError
from mobileclip_export.export.compression.precisions import (
    AUTO_KEEP_HELP,
    AUTO_KEEP_OPTION,
    KEEP_FP_HELP,
    KEEP_FP_OPTION,
    parse_layers,
)
from mobileclip_export.export.spec import ArtifactInfo, EncoderExport, OptionSpec, Runner
from mobileclip_export.export.target import Target

from .naming import NAMINGS, apple_export, apple_file_name
from .options import (
    CALIBRATION_OPTION,
    COMPRESSIONS,
    COMPUTE_UNITS,
    DEPLOYMENT_TARGETS,
    IOS18_OR_LATER,
    STATIC,
    parse_batch_sizes,
)


class CoreMLTarget(Target):
    name = "coreml"
    order = 10
    aliases = ("mlpackage", "ios")
    description = "Core ML ML Program via coremltools; runs on macOS/iOS"
    extension = ".mlpackage"
    extra = "coreml"
    export_weight = 27.0  # full-size S0 here: image 11.5 + 8.9 s, text 5.3 + 1.8 s
    requires = ("coremltools",)
    version_dists = ("coremltools", "torch")
    precisions = ("fp16", "fp32", *COMPRESSIONS)
    default_precision = "fp16"
    options = (
        OptionSpec(
            "minimum_deployment_target", "oldest OS the model must load on", "iOS17", DEPLOYMENT_TARGETS
        ),
        OptionSpec("compute_units", "Core ML compute units used to load/run it", "all", tuple(COMPUTE_UNITS)),
        OptionSpec(
            "batch_sizes",
            "enumerated batch sizes, e.g. 1,4,8 (fixed batch 1 by default; an image encoder then takes a "
            "float tensor in [0,1] instead of an ImageType, which carries one image)",
            None,
            None,
            parse_batch_sizes,
        ),
        OptionSpec(
            CALIBRATION_OPTION,
            "coreml int8-static / palettize4-static: a folder of images (searched recursively; e.g. a "
            "split of your task data, kept apart from --eval-dir) whose activation ranges calibrate the "
            "image encoder, instead of the 12 shipped photographs",
        ),
        OptionSpec(KEEP_FP_OPTION, KEEP_FP_HELP, None, None, parse_layers),
        OptionSpec(AUTO_KEEP_OPTION, AUTO_KEEP_HELP, False, None, bool),
        OptionSpec(
            "naming",
            "coreml: 'apple' writes Apple's published MobileCLIP Core ML names "
            "(mobileclip_s0_image.mlpackage, inputs image/text, output final_emb_1) so apps built on them "
            "run ours unchanged",
            "default",
            NAMINGS,
        ),
    )

    def validate(self, precision: str, options: Mapping[str, Any]) -> dict[str, Any]:
        opts = dict(options)
        if opts.get("batch_sizes") is not None:
            opts["batch_sizes"] = parse_batch_sizes(opts["batch_sizes"])
        out = super().validate(precision, opts)
        _check_static(precision, out["minimum_deployment_target"])
        if out.get(CALIBRATION_OPTION) is not None:
            if precision not in STATIC:
                raise UsageError(f"--calibration-images applies to {' / '.join(STATIC)}, not {precision}")
            if not Path(out[CALIBRATION_OPTION]).is_dir():
                raise UsageError(f"--calibration-images: {out[CALIBRATION_OPTION]!r} is not a folder")
        if out["naming"] == "apple" and out["batch_sizes"] not in (None, (1,)):
            raise UsageError(
                "--naming apple needs batch 1 (Apple's image input is one ImageType); drop --batch-sizes"
            )
        return out

    def adapt_export(self, enc: EncoderExport, options: Mapping[str, Any]) -> EncoderExport:
        return apple_export(enc) if options.get("naming") == "apple" else enc

    def card_section(self, records: list[dict[str, Any]], manifest: Mapping[str, Any]) -> str | None:
        from .card import card_section

        return card_section(records, dict(manifest))

    def artifact_name(self, model: str, encoder: str, precision: str, options: Mapping[str, Any]) -> str:
        if options.get("naming") == "apple":
            return apple_file_name(model, encoder, self.extension)
        return super().artifact_name(model, encoder, precision, options)

    def export(
        self, enc: EncoderExport, precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        from .convert import convert, input_plan, input_spec, output_specs
        from .fp16_guard import fp16_guard

        opts = self.validate(precision, options)
        compression, precision = (precision, "fp16") if precision in COMPRESSIONS else (None, precision)
        plan = input_plan(enc, opts["batch_sizes"])
        notes = [plan.normalization] if plan.normalization else []
        convert(enc, plan, precision, opts, set()).save(str(path))
        details: dict[str, Any] = {
            "minimum_deployment_target": opts["minimum_deployment_target"],
            "compute_units": opts["compute_units"],
            "batch_sizes": list(opts["batch_sizes"] or (1,)),
            "image_input": plan.is_image,
            "image_scale": plan.scale if plan.is_image else None,
            "image_bias": list(plan.bias) if plan.is_image else None,
        }
        if precision == "fp16":
            keep_fp32, guard_note = fp16_guard(enc, plan, opts, path)
            notes.append(guard_note)
            details["fp32_ops"] = sorted(keep_fp32)
        if compression:  # weights compressed after the fp16 program passed its overflow guard
            from .compress import compress_export

            details.update(compress_export(enc, compression, opts, path))
            if compression in STATIC:
                notes.append(f"{STATIC[compression]}: int8 activations; {details['intended_compute_units']}")
        return ArtifactInfo(
            path=path,
            inputs=(input_spec(enc, plan, opts),),
            outputs=output_specs(enc, opts),
            notes=notes,
            details=details,
        )

    def load(self, path: Path, options: Mapping[str, Any]) -> Runner:
        from .runners import load_runner

        return load_runner(path, options.get("compute_units"))

    def structural_checks(self, path: Path, enc: EncoderExport) -> dict[str, Any]:
        from .structure import structural_checks

        return structural_checks(path, enc)


def _check_static(precision: str, deployment_target: str) -> None:
    """W8A8 needs the iOS17 quantize/dequantize ops; A8W4 also the iOS18 int8 lookup tables."""
    if precision not in STATIC:
        return
    oldest = "iOS17" if STATIC[precision] == "W8A8" else "iOS18"
    ok = IOS18_OR_LATER + (("iOS17", "macOS14") if oldest == "iOS17" else ())
    if deployment_target not in ok:
        raise UsageError(
            f"precision {precision} ({STATIC[precision]}) needs {oldest} or later, got "
            f"minimum_deployment_target {deployment_target}: add --minimum-deployment-target {oldest}"
        )
