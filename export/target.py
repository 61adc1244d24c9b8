"""The one small interface every backend implements.

A backend module in ``export/backends/`` defines a ``Target`` subclass and exposes it as the module-level
name ``TARGET``. Module import must stay cheap (no converter imports at module level): the registry imports
every backend module to read names, aliases and options, and ``--help`` must not pay for coremltools.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mobileclip_export.errors import MissingDependencyError, UsageError, install_hint

if TYPE_CHECKING:  # keep `--help` and target listing free of torch/numpy imports
    import numpy as np
    from torch import nn

    from mobileclip_export.export.op_profile import OpProfile


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output, as an app sees it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32" | "float16" | "int32" | "int64" | "image"
    description: str = ""


@dataclass(frozen=True)
class OptionSpec:
    """A target-specific option (e.g. ``compute_units``); the CLI flag is ``--`` + name with dashes.

    ``type=bool`` makes a value-less switch (``--dynamic-batch``). Several targets may declare the same name
    (one flag, each declaring target receives the value). ``minimum``/``maximum`` make it an integer range
    (inclusive) that ``Target.validate`` enforces, so no backend checks ranges by hand.
    """

    name: str
    help: str
    default: Any = None
    choices: tuple[Any, ...] | None = None
    type: Callable[[str], Any] = str
    minimum: int | None = None
    maximum: int | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is invalid (choices, integer range), or None when it is fine."""
        if self.choices is not None and value not in self.choices:
            return f"choices: {', '.join(map(str, self.choices))}"
        if self.minimum is None and self.maximum is None:
            return None
        low, high = self.minimum, self.maximum
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if is_int and (low is None or value >= low) and (high is None or value <= high):
            return None
        if high is None:
            return "expected a positive integer" if low == 1 else f"expected an integer >= {low}"
        if low is None:
            return f"expected an integer <= {high}"
        return f"expected an integer in {low}..{high}"


def num_threads_option(runtime: str) -> OptionSpec:
    """The one ``--num-threads`` option (each target that declares it receives the value)."""
    return OptionSpec(
        "num_threads",
        f"CPU threads of {runtime} when running the artifact here (default: all cores)",
        default=None,
        type=int,
        minimum=1,
    )


@dataclass(frozen=True)
class EncoderExport:
    """Everything a backend needs to convert one encoder; built by the pipeline, not by backends.

    ``module`` is the reparameterized fp32 eval-mode encoder. For the image encoder its input is RGB float in
    [0, 1]; ``normalize_mean``/``normalize_std`` say what normalization the module applies internally (all
    zeros / ones when it applies none) so a backend with image inputs can fold it into its preprocessing.
    """

    model_name: str
    encoder: str  # "image" | "text"
    module: nn.Module
    example_inputs: tuple[Any, ...]  # torch tensors; text ids are int32
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Flat string facts to embed in the artifact (model, embed dim, preprocessing, weights, tool versions...).
    metadata: Mapping[str, str]
    image_size: int | None = None
    normalize_mean: tuple[float, float, float] | None = None
    normalize_std: tuple[float, float, float] | None = None
    # For a backend that bakes normalization into its input (Core ML ImageType): the same encoder without it.
    module_without_normalize: nn.Module | None = None


@dataclass
class ArtifactInfo:
    """What a backend reports back about one written artifact."""

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    notes: list[str] = field(default_factory=list)  # e.g. delegated/non-delegated ops, fallbacks applied
    details: dict[str, Any] = field(default_factory=dict)  # machine-readable extras for the manifest


class RuntimeUnavailable(Exception):
    """The artifact's runtime cannot run on this machine (e.g. Core ML prediction off macOS)."""


class Runner(ABC):
    """A loaded artifact ready to run. ``run`` takes numpy inputs keyed by input name (images as float32 NCHW
    in [0, 1], ids as int32) and returns the embedding as float32 numpy ``[B, D]``."""

    #: Human label of what executes it, e.g. "onnxruntime 1.31.1 (CPUExecutionProvider)".
    label: str = ""
    #: False when numbers come from a reference/emulating runtime, not the deployment runtime.
    is_deployment_runtime: bool = True
    #: Cap on verification inputs per encoder, for runtimes too slow to run the full set (None = all).
    max_verify_inputs: int | None = None

    @abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


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
        from mobileclip_export.export.image_input import wrap_export

        return wrap_export(enc, options)

    def artifact_name(self, model: str, encoder: str, precision: str, options: Mapping[str, Any]) -> str:
        """File name of an artifact in the bundle (a target may follow an app's expected naming)."""
        from mobileclip_export.export.bundle.layout import artifact_name

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
