"""``bench --reference-onnx``: a plain ONNX export of the reference model, timed beside our artifacts.

The point of comparison for our own ONNX artifact: ``torch.onnx.export`` of the train-time model as anyone
would write it, run in onnxruntime with the same runner, thread count and inputs as ours, interleaved in the
same run (row ``reference-export``, kind ``baseline``). A file's encoder is read from its first graph input:
a 4-D float input is an image encoder, a 2-D integer one a text encoder. Its parity column compares it with
the train-time PyTorch model of the run (same model and seed), so a file of another model shows as such.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.benchmarks import harness as H
from mobileclip_export.errors import UsageError, install_hint

REFERENCE_EXPORT = "reference-export"  # the row's name (a baseline, like the PyTorch eager rows)
_FLOAT, _INTEGER = {1: "float32"}, {6: "int32", 7: "int64"}  # onnx.TensorProto element types we feed


def _input_of(path: Path) -> tuple[str, str, int]:
    """(name, numpy dtype, rank) of the model's first graph input; a clear error for anything else."""
    try:
        import onnx
    except ImportError as err:
        hint = install_hint(_runtime().extra)
        raise UsageError(f"--reference-onnx needs the onnx package ({hint})") from err
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf decode errors come in several types
        raise UsageError(f"--reference-onnx {path}: not an ONNX model ({type(err).__name__})") from err
    if not model.graph.input:
        raise UsageError(f"--reference-onnx {path}: the graph has no inputs")
    first = model.graph.input[0]
    kind = first.type.tensor_type
    dtype = {**_FLOAT, **_INTEGER}.get(kind.elem_type)
    if dtype is None:
        raise UsageError(f"--reference-onnx {path}: input {first.name!r} is neither float32 nor int32/int64")
    return first.name, dtype, len(kind.shape.dim)


def encoder_of(path: Path) -> tuple[str, str, str]:
    """(encoder, input name, input dtype) of a reference ONNX file."""
    name, dtype, rank = _input_of(path)
    if dtype == "float32" and rank == 4:
        return "image", name, dtype
    if dtype != "float32" and rank == 2:
        return "text", name, dtype
    raise UsageError(
        f"--reference-onnx {path}: input {name!r} ({dtype}, rank {rank}) is neither an image "
        "(4-D float) nor a text (2-D integer ids) encoder input"
    )


def resolve(paths: Iterable[Path]) -> dict[str, tuple[Path, str, str]]:
    """Encoder -> (file, input name, dtype), from files and folders of ``*.onnx``; one file per encoder."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.glob("*.onnx"))
            if not found:
                raise UsageError(f"--reference-onnx {p}: no .onnx file in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"--reference-onnx {p}: no such file or folder")
    out: dict[str, tuple[Path, str, str]] = {}
    for f in files:
        encoder, name, dtype = encoder_of(f)
        if encoder in out:
            first = out[encoder][0]
            raise UsageError(f"--reference-onnx: two {encoder} encoders ({first} and {f}); give one")
        out[encoder] = (f, name, dtype)
    return out


def _runtime() -> Any:
    """The target whose artifacts are ``.onnx`` files: its runner is the one our own ONNX rows use."""
    from mobileclip_export.export.registry import all_targets

    found = [t for t in all_targets().values() if t.extension == ".onnx"]
    if not found:
        raise UsageError("--reference-onnx: no target here runs .onnx files")
    return found[0]


def candidates(
    references: Mapping[str, tuple[Path, str, str]],
    data: Mapping[str, np.ndarray],
    encoders: Iterable[str],
    threads: int,
) -> list[H.Candidate]:
    """One baseline candidate per selected encoder with a reference file."""
    out = []
    for encoder in encoders:
        if encoder not in references:
            continue
        path, name, dtype = references[encoder]
        target = _runtime()
        box: list[Any] = []

        def load(path: Path = path, target: Any = target, box: list[Any] = box) -> tuple[H.RunFn, str, bool]:
            runner = target.load(path, {"num_threads": threads})
            box.append(runner)
            return runner.run, f"{runner.label}; plain export of the train-time model", True

        def close(box: list[Any] = box) -> None:
            for runner in box:
                runner.close()

        out.append(
            H.Candidate(
                target=REFERENCE_EXPORT,
                encoder=encoder,
                precision="fp32",
                load=load,
                feeds={name: np.ascontiguousarray(data[encoder].astype(dtype))},
                kind=H.BASELINE,
                size_bytes=path.stat().st_size,
                artifact=str(path),
                close=close,
            )
        )
    return out
