"""Reading a checkpoint file safely: bytes -> a flat ``{name: tensor}`` dict -> a normalized ``Checkpoint``.

Checkpoints are untrusted: ``.pt/.pth/.bin/.ckpt`` go through ``torch.load(weights_only=True)`` only, which
refuses any pickle that would import or call something (nothing is executed); ``.safetensors`` cannot
carry code at all. Every failure is one ``CheckpointError`` line naming the file and what is wrong with it.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mobileclip_export.errors import CheckpointError
from mobileclip_export.hashing import file_sha256

from .detect import detect_format, needs_inference_form, normalize

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module", "weights")


@dataclass
class Checkpoint:
    """A checkpoint read from disk and normalized (``module.`` stripped, containers unwrapped)."""

    state_dict: dict[str, Tensor]
    format: str
    reparameterized: bool
    sha256: str
    path: Path


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":  # pickle protocol >= 2 (torch legacy format and plain pickles)
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return "safetensors"
    return "other"


def _describe_head(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(64)
    try:
        text = head.decode("utf-8")
        return f"text starting {text[:40]!r}"
    except UnicodeDecodeError:
        return f"binary data starting {head[:8].hex()}"


def _check_torch_container(path: Path) -> None:
    """Before ``torch.load``: a zip must hold ``data.pkl``; anything else must at least be a pickle."""
    kind = _sniff(path)
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as err:  # zip magic but no central directory: cut short
            raise CheckpointError(f"{path} is truncated or corrupt (zip: {err}): re-download it") from None
        if not any(n.endswith("data.pkl") for n in names):
            shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
            raise CheckpointError(
                f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl; holds {shown})"
            )
    elif kind != "pickle":
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {_describe_head(path)}")


def _unpickling_error(path: Path, err: pickle.UnpicklingError) -> CheckpointError:
    msg = str(err)
    if "Weights only load failed" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
        glob = re.search(r"(?:Unsupported global|GLOBAL)[:\s]+(\S+)", msg)
        what = f" (it would import {glob.group(1).strip('`,.')})" if glob else ""
        return CheckpointError(
            f"refused unsafe pickle: {path} is not a plain tensor checkpoint{what}; nothing was "
            "executed. Only tensors/containers load (torch.load weights_only=True); re-save the "
            "state_dict or use .safetensors"
        )
    if "truncated" in msg or "ran out of input" in msg.lower():
        return CheckpointError(f"{path} is truncated (pickle data ends early): re-download it")
    return CheckpointError(f"{path} is not a readable PyTorch checkpoint: {msg.splitlines()[0]}")


def _torch_load(path: Path) -> object:
    _check_torch_container(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _unpickling_error(path, err) from None
    except (EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(err).__name__}): re-download it"
        ) from None
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        if "zip archive" in first or "central directory" in first or "file_size" in first:
            raise CheckpointError(f"{path} is truncated or corrupt ({first}): re-download it") from None
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint: {first}") from None


def _safetensors_load(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as err:
        raise CheckpointError(
            f"{path} is not a valid safetensors file (truncated or corrupt: {err})"
        ) from None


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"state_dict": ...}}, ...
        if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state_dict (a mapping of name -> tensor)"
        )
    if not obj:
        raise CheckpointError(f"{path} holds an empty state_dict")
    bad = [(k, type(v).__name__) for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        shown = ", ".join(f"{k!r}: {t}" for k, t in bad[:3])
        raise CheckpointError(
            f"{path} is not a tensor state_dict: {len(bad)} of {len(obj)} values are not tensors ({shown}"
            f"{' ...' if len(bad) > 3 else ''}); containers tried: {', '.join(_CONTAINER_KEYS)}"
        )
    return {str(k): v for k, v in obj.items()}


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read ``path`` as a flat ``{name: tensor}`` dict, safely (weights only); raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty (0 bytes): {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES or (suffix not in TORCH_SUFFIXES and _sniff(path) == "safetensors"):
        return _unwrap(_safetensors_load(path), path)
    return _unwrap(_torch_load(path), path)


def check_checkpoint_format(path: str | Path) -> None:
    """Cheap pre-flight before a model is built (reads 16 bytes): the file is in a format we can read."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist, is not a file, or is empty")
    if _sniff(path) == "other":
        raise CheckpointError(
            f"{path} is not a checkpoint (PyTorch zip/pickle or safetensors): {_describe_head(path)}"
        )


def _check_finite(sd: Mapping[str, Tensor], path: Path) -> None:
    """NaN/inf weights are named at load, not found later as a parity 'cosine nan'."""
    bad = {}
    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad[k] = int((~torch.isfinite(v)).sum())
    if bad:
        shown = ", ".join(f"{k} ({n} of {sd[k].numel()})" for k, n in list(bad.items())[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CheckpointError(f"{path} has NaN/inf values in {len(bad)} tensor(s): {shown}{more}")


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read, hash, detect and normalize a checkpoint (no model needed)."""
    path = Path(path)
    raw = load_state_dict_file(path)
    _check_finite(raw, path)
    fmt = detect_format(raw)
    sd = normalize(raw, fmt)
    return Checkpoint(sd, fmt, needs_inference_form(sd), file_sha256(path), path)
