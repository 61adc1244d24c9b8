"""The ``web`` target (alias ``transformersjs``): one folder transformers.js loads unchanged, each dtype
verified in Node and in headless Chromium, the dtype pin in ``config.json`` naming only files that passed."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import MissingDependencyError, UsageError
from mobileclip_export.export.spec import (
    ArtifactInfo,
    BenchCandidate,
    EncoderExport,
    ExternalTiming,
    OptionSpec,
    Runner,
    RuntimeUnavailable,
)
from mobileclip_export.export.target import Target

from . import build
from .folder import BY_PRECISION, DTYPES, INPUT, web_encoder
from .runtime import NodeSession, js_versions, missing_runtimes

log = logging.getLogger(__name__)

DTYPES_OPTION = "web_dtypes"


def parse_dtypes(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"fp32,fp16,q8"`` -> known transformers.js dtypes in our order (fp32 is always built: q8 derives
    from it and it is the safe pin)."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    names = {str(v).strip() for v in items if str(v).strip()}
    unknown = sorted(names - set(DTYPES))
    if unknown:
        raise UsageError(f"--web-dtypes {','.join(unknown)} is not supported (choices: {', '.join(DTYPES)})")
    return tuple(d for d in DTYPES if d in names | {"fp32"})


class WebRunner(Runner):
    """The folder through transformers.js in Node with the dtype ``config.json`` pins (what an app gets)."""

    app_preprocessing = (
        "transformers.js AutoProcessor and AutoTokenizer from the folder (sharp decodes the images: colour "
        "profiles converted to sRGB, crop offset rounded down, bilinear without antialiasing, so pixels "
        "differ from our PIL preprocessing; tokens equal ours except a literal <|startoftext|> or "
        "<|endoftext|> typed in a text; see docs/web.md)"
    )
    batch = 16  # images per request: one batch of decoded pixels alive in Node at a time

    def __init__(self, folder: Path) -> None:
        self.session = NodeSession(folder)
        version = js_versions().get("@huggingface/transformers", "?")
        self.label = f"transformers.js {version} (Node, onnxruntime-node, the dtype config.json pins)"

    def embed_files(self, paths: Sequence[Path]) -> np.ndarray:
        items = [Path(p).resolve() for p in paths]
        step = self.batch
        parts = [self.session.embed_files(items[i : i + step]) for i in range(0, len(items), step)]
        return np.concatenate(parts, axis=0).astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.session.embed_texts(list(texts)).astype(np.float32)

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        for encoder, name in INPUT.items():
            for key in (name, encoder):  # multi-function artifacts are also fed by encoder name
                if key in inputs:
                    return self.session.embed(encoder, np.asarray(inputs[key]))
        raise ValueError(f"web runner takes {sorted(INPUT.values())}, got {sorted(inputs)}")

    def close(self) -> None:
        self.session.close()


class WebTarget(Target):
    name = "web"
    order = 25
    aliases = ("transformersjs",)
    description = "transformers.js folder (ONNX per dtype), verified in Node and headless Chromium (WASM)"
    extension = ""
    extra = "onnx"
    export_weight = 64.0  # full-size S0 here: every dtype, verified in Node and Chromium
    requires = ("onnx", "onnxruntime", "onnxscript")
    version_dists = ("onnx", "onnxruntime", "onnxscript")
    supports_multifunction = True
    precisions = tuple(BY_PRECISION)  # the dtype config.json pins: fp32, fp16, int8 (= q8)
    default_precision = "fp32"
    options = (
        OptionSpec(
            "multifunction",
            "one artifact for both encoders (the web target's default: one transformers.js folder)",
            True,
            None,
            bool,
        ),
        OptionSpec(
            DTYPES_OPTION, "web: dtypes to build and verify, comma-separated (fp32 always)", "fp32,fp16,q8"
        ),
        OptionSpec(
            "skip_browser", "web: verify in Node only (no headless Chromium check)", False, None, bool
        ),
    )

    def ensure_available(self) -> None:
        super().ensure_available()
        missing = missing_runtimes()
        if missing:
            raise MissingDependencyError(f"target {self.name!r} needs {'; '.join(missing)}")

    def validate(self, precision: str, options: Mapping[str, Any]) -> dict[str, Any]:
        out = super().validate(precision, options)
        out[DTYPES_OPTION] = ",".join(
            parse_dtypes([*parse_dtypes(out[DTYPES_OPTION]), BY_PRECISION[precision].name])
        )
        return out

    def adapt_export(self, enc: EncoderExport, options: Mapping[str, Any]) -> EncoderExport:
        return web_encoder(enc)

    def artifact_name(self, model: str, encoder: str, precision: str, options: Mapping[str, Any]) -> str:
        return model if encoder == "image-text" else f"{model}-{encoder}"

    def export(
        self, enc: EncoderExport, precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        return self.export_multifunction([enc], precision, options, path)

    def export_multifunction(
        self, encs: Sequence[EncoderExport], precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        dtypes = parse_dtypes(options.get(DTYPES_OPTION, "fp32,fp16,q8"))
        browser = not options.get("skip_browser")
        return build.build_folder(
            list(encs), dtypes, BY_PRECISION[precision].name, Path(path), browser=browser
        )

    def load(self, path: Path, options: Mapping[str, Any]) -> Runner:
        missing = missing_runtimes(browser=False)
        if missing:
            raise RuntimeUnavailable("; ".join(missing))
        return WebRunner(Path(path))

    def structural_checks(self, path: Path, enc: EncoderExport) -> dict[str, Any]:
        return build.structure(Path(path), enc)

    def bench_candidates(
        self, path: Path, record: Mapping[str, Any], threads: int
    ) -> list[BenchCandidate] | None:
        from . import bench

        self.ensure_available()  # the browser rows need Node's packages and Chromium: say so before timing
        return bench.candidates(Path(path), threads)

    def bench_external(
        self,
        path: Path,
        record: Mapping[str, Any],
        inputs: Mapping[str, np.ndarray],
        runs: int,
        threads: int,
        precisions: tuple[str, ...] | None = None,
    ) -> list[ExternalTiming]:
        from . import bench

        return bench.external(Path(path), inputs, runs, threads, precisions)

    def bench_fields(self, row: Mapping[str, Any]) -> dict[str, Any]:
        from . import bench

        return bench.fields(row)

    def versions(self) -> dict[str, str]:
        return {**super().versions(), **js_versions()}


__all__ = ["WebRunner", "WebTarget"]
