"""The Core AI target: names, options, single- and multi-function export; work lives in sibling modules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mobileclip_export.errors import UsageError
from mobileclip_export.export.batching import BATCH_SIZE_OPTION, fixed_batch_of, with_batch
from mobileclip_export.export.spec import (
    ArtifactInfo,
    EncoderExport,
    OptionSpec,
    Runner,
    RuntimeUnavailable,
    TensorSpec,
)
from mobileclip_export.export.target import Target

from .convert import MAIN_ENTRYPOINT, PIP_HINT, convert_and_save, function_name, io_specs


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


class CoreAITarget(Target):
    name = "coreai"
    order = 50
    aliases = ("aimodel",)
    description = "Apple Core AI .aimodel (coreai-torch); verified on Linux by the Core AI reference runtime"
    extension = ".aimodel"
    extra = "coreai"
    export_weight = 30.0  # full-size S0 here: 6 s to convert, ~36 s to verify (in a thread beside)
    requires = ("coreai", "coreai_torch")
    version_dists = ("coreai-core", "coreai-torch")
    verify_beside = True  # the Linux runtime: a single-threaded reference, seconds per input, GIL released
    precisions = ("fp16", "fp32")
    default_precision = "fp16"
    supports_multifunction = True
    options = (
        OptionSpec(
            "multifunction",
            "write one asset with both encoders as functions encode_image and encode_text",
            default=False,
            choices=(True, False),
            type=_parse_bool,
        ),
        BATCH_SIZE_OPTION,
    )

    def adapt_export(self, enc: EncoderExport, options: Mapping[str, Any]) -> EncoderExport:
        return with_batch(super().adapt_export(enc, options), fixed_batch_of(options))

    def export(
        self, enc: EncoderExport, precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        """One encoder as the single function ``main``. The ``multifunction`` option is the pipeline's cue to
        call ``export_multifunction`` instead; it does not change a single-encoder asset."""
        self._check(enc)
        description = f"MobileCLIP {enc.model_name} {enc.encoder} encoder ({precision})"
        facts = {**enc.metadata, "precision": precision, "entrypoint": MAIN_ENTRYPOINT}
        convert_and_save([(enc, MAIN_ENTRYPOINT)], precision, path, facts, description)
        ins, outs = io_specs(enc, precision, MAIN_ENTRYPOINT)
        return ArtifactInfo(
            path=Path(path),
            inputs=ins,
            outputs=outs,
            notes=self._notes(precision),
            details={"functions": {MAIN_ENTRYPOINT: self._io_details(ins, outs)}, "precision": precision},
        )

    def export_multifunction(
        self, encs: Sequence[EncoderExport], precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        """Both encoders in one ``.aimodel``, as functions ``encode_image`` and ``encode_text``.

        How the pipeline uses it: when ``options["multifunction"]`` is true, call this once with the image and
        text ``EncoderExport``s instead of ``export`` per encoder, then ``runner = target.load(path, opts)``;
        ``runner.run({"image": x})`` runs ``encode_image`` and ``runner.run({"text": ids})`` runs
        ``encode_text`` (the feed names pick the function), so the usual per-encoder parity check works on the
        one asset. ``ArtifactInfo.details["functions"]`` lists each function's inputs and outputs; each
        function's output keeps its single-encoder name (``embedding``).
        """
        if not encs:
            raise UsageError("export_multifunction needs at least one encoder")
        entries = []
        for enc in encs:
            self._check(enc)
            entries.append((enc, function_name(enc.encoder)))
        names = [e for _, e in entries]
        if len(set(names)) != len(names):
            raise UsageError(f"one function per encoder: got duplicate entry points {names}")
        all_inputs = [s.name for enc in encs for s in enc.inputs]
        if len(set(all_inputs)) != len(all_inputs):
            raise UsageError(f"input names must differ between functions to route feeds: {all_inputs}")
        facts = self._merged_facts(encs, names)
        facts.update(precision=precision, entrypoints=",".join(names))
        model = encs[0].model_name
        description = f"MobileCLIP {model} encoders ({precision}): functions {', '.join(names)}"
        convert_and_save(entries, precision, path, facts, description)
        ins: list[TensorSpec] = []
        outs: list[TensorSpec] = []
        functions = {}
        for enc, entrypoint in entries:
            i, o = io_specs(enc, precision, entrypoint)
            ins += i
            outs += o
            functions[entrypoint] = self._io_details(i, o)
        return ArtifactInfo(
            path=Path(path),
            inputs=tuple(ins),
            outputs=tuple(outs),
            notes=self._notes(precision),
            details={"functions": functions, "precision": precision, "multifunction": True},
        )

    def load(self, path: Path, options: Mapping[str, Any]) -> Runner:
        try:
            import coreai.runtime  # noqa: F401 - loads the native runtime
        except ImportError as err:
            raise RuntimeUnavailable(f"the Core AI runtime cannot load here ({err}); {PIP_HINT}") from err
        from .runner import CoreAIRunner

        return CoreAIRunner(Path(path))

    def structural_checks(self, path: Path, enc: EncoderExport) -> dict[str, Any]:
        """Function I/O from the asset summary, op census, storage types; problems where they differ
        from ``enc`` (a multi-function asset is checked for ``enc``'s function)."""
        from .structure import structural_checks

        return structural_checks(path, enc)

    # ---- helpers ----
    @staticmethod
    def _check(enc: EncoderExport) -> None:
        if enc.encoder not in ("image", "text"):
            raise UsageError(f"unknown encoder {enc.encoder!r}; choose one of: image, text")

    @staticmethod
    def _notes(precision: str) -> list[str]:
        notes = ["verified with the Core AI CPU reference runtime on Linux; device kernels not exercised"]
        if precision == "fp16":
            notes.append(
                "fp16 graph (module.half()): image input and embedding are float16; "
                "the runner casts float32 feeds"
            )
        return notes

    @staticmethod
    def _io_details(ins: Sequence[TensorSpec], outs: Sequence[TensorSpec]) -> dict[str, Any]:
        return {
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in ins],
            "outputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in outs],
        }

    @staticmethod
    def _merged_facts(encs: Sequence[EncoderExport], names: Sequence[str]) -> dict[str, str]:
        """Facts shared by all encoders stay flat; differing ones are prefixed with their function name."""
        keys = {k for enc in encs for k in enc.metadata}
        facts: dict[str, str] = {}
        for key in sorted(keys):
            values = [enc.metadata.get(key) for enc in encs]
            if all(v == values[0] for v in values):
                facts[key] = str(values[0])
            else:
                facts.update({f"{n}.{key}": str(v) for n, v in zip(names, values) if v is not None})
        return facts
