"""The one small interface every backend implements.

A backend module in ``export/backends/`` defines a ``Target`` subclass and exposes it as the module-level
name ``TARGET``. Module import must stay cheap (no converter imports at module level): the registry imports
every backend module to read names, aliases and options, and ``--help`` must not pay for coremltools.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mobileclip_export.errors import MissingDependencyError, UsageError

if TYPE_CHECKING:  # keep `--help` and target listing free of torch/numpy imports
    import numpy as np
    from torch import nn


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
    (one flag, each declaring target receives the value). A target may also define
    ``export_multifunction(encs, precision, options, path) -> ArtifactInfo``; the pipeline calls it instead
    of ``export`` (once, with both encoders) when the target declares a bool option ``multifunction`` and the
    user sets it; its runner is then fed ``{"image": x}`` or ``{"text": ids}`` one encoder at a time.
    """

    name: str
    help: str
    default: Any = None
    choices: tuple[Any, ...] | None = None
    type: Callable[[str], Any] = str


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
                f"install it with: pip install 'mobileclip-export[{self.extra}]'"
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
            if spec.choices is not None and value not in spec.choices:
                raise UsageError(
                    f"--{key.replace('_', '-')} {value!r} is not valid for target {self.name!r} "
                    f"(choices: {', '.join(map(str, spec.choices))})"
                )
            out[key] = value
        for spec in self.options:
            out.setdefault(spec.name, spec.default)
        return out

    # ---- the work ----
    @abstractmethod
    def export(
        self, enc: EncoderExport, precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        """Convert ``enc`` and write the artifact to exactly ``path`` (a temp location the caller renames)."""

    @abstractmethod
    def load(self, path: Path, options: Mapping[str, Any]) -> Runner:
        """Load an artifact for running here; raise RuntimeUnavailable(reason) when this machine cannot."""

    def structural_checks(self, path: Path, enc: EncoderExport) -> dict[str, Any]:
        """Checks possible without running (op census, I/O names, no batch_norm...). Values are JSON-able;
        a key ``problems`` (list[str]) non-empty means the artifact is wrong."""
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
