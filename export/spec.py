"""The data the pipeline and every backend exchange: tensors, options, the encoder to convert, what was
written, and a loaded artifact (``Runner``). Plain dataclasses and one ABC, so every layer can import them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # keep `--help` and target listing free of torch/numpy imports
    import numpy as np
    from torch import nn


def artifact_name(model: str, encoder: str, precision: str, extension: str) -> str:
    """The bundle's default artifact file name (a target may override ``Target.artifact_name``)."""
    return f"{model}-{encoder}-{precision}{extension}"


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

    #: Set when the runtime brings an app framework's own image processor and tokenizer (``embed_files`` /
    #: ``embed_texts`` work): what it does differently from our preprocessing, said by ``predict``.
    app_preprocessing: str | None = None

    def embed_files(self, paths: Sequence[Path]) -> np.ndarray:
        """Image files decoded and preprocessed by the app framework's processor, embedded: ``[N, D]``."""
        raise NotImplementedError(f"{type(self).__name__} has no app-side image processor")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts tokenized by the app framework's tokenizer, embedded: ``[N, D]``."""
        raise NotImplementedError(f"{type(self).__name__} has no app-side tokenizer")


@dataclass
class BenchCandidate:
    """One more thing ``bench`` times, interleaved with everything else: a target's way of timing an artifact
    that is not one file in one runtime (e.g. every model file of a folder). ``variant`` tells its rows apart
    from the artifact's other rows; ``fields`` go into the row's ``extra``."""

    encoder: str
    precision: str
    variant: str
    load: Callable[[], Runner]
    input_name: str
    input_dtype: str  # "float32" | "int32" | "int64": the benchmark input is cast to it
    size_bytes: int | None = None
    artifact: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExternalTiming:
    """A measurement taken outside this process (e.g. in a browser), reported beside the timed rows.
    ``samples_ms``: the timed warm runs; ``output``: the embedding of the benchmark input (for parity)."""

    encoder: str
    precision: str
    variant: str
    runtime: str
    status: str = "ok"  # "ok" | "failed: <why>"
    load_ms: float | None = None
    first_ms: float | None = None
    samples_ms: list[float] = field(default_factory=list)
    output: np.ndarray | None = None
    size_bytes: int | None = None
    artifact: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
