"""The interface every backend implements: class attributes describe it, methods convert, load and check.

A backend module in ``export/backends/`` defines a ``Target`` subclass and exposes it as the module-level
name ``TARGET``. Module import must stay cheap (no converter imports at module level): the registry imports
every backend module to read names, aliases and options, and ``--help`` must not pay for coremltools.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mobileclip_export.errors import MissingDependencyError, UsageError, install_hint
from mobileclip_export.export.image_input import wrap_export
from mobileclip_export.export.spec import (
    ArtifactInfo,
    BenchCandidate,
    EncoderExport,
    ExternalTiming,
    OptionSpec,
    Runner,
    artifact_name,
)

if TYPE_CHECKING:  # keep `--help` and target listing free of torch/numpy imports
    import numpy as np

    from mobileclip_export.export.op_profile import OpProfile


class Target(ABC):
    """One export backend. Class attributes describe it; methods do the work."""

    name: ClassVar[str]
    order: ClassVar[int] = 100  # position in listings and in `--target all`
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    extension: ClassVar[str]  # ".mlpackage", ".onnx", ".pte", ".tflite", ".aimodel"
    extra: ClassVar[str]  # pip extra that installs it: pip install 'mobileclip-export[<extra>]'
    # Capability: ``export_multifunction`` writes one artifact serving both encoders (the user asks with the
    # bool option ``multifunction``, which such a target declares); its runner is then fed ``{"image": x}``
    # or ``{"text": ids}`` one encoder at a time.
    supports_multifunction: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()  # import names that must be importable
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    default_precision: ClassVar[str] = "fp32"
    options: ClassVar[tuple[OptionSpec, ...]] = ()
    version_dists: ClassVar[tuple[str, ...]] = ()  # distributions whose versions go into the manifest
    # True when this machine runs the artifacts only in a slow single-threaded reference runtime that releases
    # the GIL: the pipeline then converts this target first and verifies it in a background thread while the
    # other targets convert (same inputs, same tolerances; only the wall time changes).
    verify_beside: ClassVar[bool] = False
    # Seconds this target takes to convert and verify full-size S0 here (both encoders, default precision):
    # only the ratios matter, to share the targets of one run fairly between the export lanes.
    export_weight: ClassVar[float] = 20.0

    # ---- dependency and option checks (cheap, no heavy imports) ----
    def missing_dependencies(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def ensure_available(self) -> None:
        missing = self.missing_dependencies()
        if missing:
            raise MissingDependencyError(
                f"target {self.name!r} needs {', '.join(missing)}, which is not installed; "
                f"install it with: {install_hint(self.extra)}"
            )

    def validate(self, precision: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check precision and options; return options with defaults filled. UsageError names the problem."""
        if precision not in self.precisions:
            raise UsageError(
                f"target {self.name!r} does not support precision {precision!r} "
                f"(supported: {', '.join(self.precisions)})"
            )
        known = {o.name: o for o in self.options}
        out: dict[str, Any] = {}
        for key, value in options.items():
            if value is None:
                continue
            if key not in known:
                flag = "--" + key.replace("_", "-")
                raise UsageError(f"option {flag} is not supported by target {self.name!r}")
            spec = known[key]
            problem = spec.problem(value)
            if problem is not None:
                raise UsageError(f"{spec.flag} {value!r} is not valid for target {self.name!r} ({problem})")
            out[key] = value
        for spec in self.options:
            out.setdefault(spec.name, spec.default)
        return out

    # ---- how the pipeline presents an encoder to this target ----
    def adapt_export(self, enc: EncoderExport, options: Mapping[str, Any]) -> EncoderExport:
        """The encoder as this target exports and checks it under ``options`` (default: the image-input
        layout a declared ``image_input`` option asks for; a target may also rename its I/O)."""
        return wrap_export(enc, options)

    def artifact_name(self, model: str, encoder: str, precision: str, options: Mapping[str, Any]) -> str:
        """File name of an artifact in the bundle (a target may follow an app's expected naming)."""
        return artifact_name(model, encoder, precision, self.extension)

    def card_section(self, records: list[dict[str, Any]], manifest: Mapping[str, Any]) -> str | None:
        """Markdown for the bundle's model card: how an app feeds this target's artifacts (``records``: this
        target's manifest entries), with the bundle's own file and tensor names. None: no section."""
        return None

    # ---- the work ----
    @abstractmethod
    def export(
        self, enc: EncoderExport, precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        """Convert ``enc`` and write the artifact to exactly ``path`` (a temp location the caller renames)."""

    def export_multifunction(
        self, encs: Sequence[EncoderExport], precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        """One artifact serving every encoder in ``encs`` (only when ``supports_multifunction``)."""
        raise UsageError(f"target {self.name!r} does not support --multifunction")

    @abstractmethod
    def load(self, path: Path, options: Mapping[str, Any]) -> Runner:
        """Load an artifact for running here; raise RuntimeUnavailable(reason) when this machine cannot."""

    def structural_checks(self, path: Path, enc: EncoderExport) -> dict[str, Any]:
        """Checks possible without running (op census, I/O names, no batch_norm...). Values are JSON-able;
        a key ``problems`` (list[str]) non-empty means the artifact is wrong."""
        return {}

    #: Name of this runtime's fp32 GEMM in the benchmark's peak measurement (``None``: it offers none).
    gemm_name: str | None = None

    def gemm(self, n: int, threads: int) -> tuple[Callable[[Any], Any], str]:
        """An ``n x n`` fp32 GEMM in this target's runtime, as (run(feeds), runtime label), for the
        benchmark's machine ceiling; only called when ``gemm_name`` is set."""
        raise NotImplementedError(f"{self.name} declares no GEMM")

    def profile(
        self, path: Path, inputs: Mapping[str, np.ndarray], threads: int, runs: int
    ) -> OpProfile | None:
        """Per-operator times of ``runs`` runs in this target's runtime (its own profiler); ``None`` when
        the target has no profiler reachable here."""
        return None

    # ---- how ``bench`` times this target's artifacts (defaults: ``load`` one file per encoder) ----
    def bench_candidates(
        self, path: Path, record: Mapping[str, Any], threads: int
    ) -> list[BenchCandidate] | None:
        """What ``bench`` times of this artifact, interleaved with the other candidates; ``None``: load it
        with ``load`` and feed it the record's input (one artifact per encoder). ``threads``: the run's
        thread count (the process is pinned to that many cores)."""
        return None

    def bench_external(
        self,
        path: Path,
        record: Mapping[str, Any],
        inputs: Mapping[str, np.ndarray],
        runs: int,
        threads: int,
        precisions: tuple[str, ...] | None = None,
    ) -> list[ExternalTiming]:
        """Timings of this artifact taken outside this process (e.g. in a browser), on the benchmark's
        ``inputs`` (encoder -> array; only the encoders asked for), at ``precisions`` (None: all it has),
        after the interleaved runs; they become rows beside the others."""
        return []

    def bench_fields(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Fields added to this target's report rows (``extra``), e.g. under its ecosystem's own benchmark
        names; ``row``: the row as stored in report.json."""
        return {}

    def versions(self) -> dict[str, str]:
        """Converter/runtime versions for the manifest: installed ``version_dists``, missing ones skipped."""
        import importlib.metadata

        out = {}
        for dist in self.version_dists:
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
        return out
