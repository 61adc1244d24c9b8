"""The one registry of NumPy op implementations, keyed by MIL op type.

An implementation is ``fn(ctx: OpContext, a: Args) -> np.ndarray | tuple[np.ndarray, ...]``. It computes in
float32 (fp16 inputs arrive upcast); the executor casts results to the declared output types, so an
implementation only rounds *intermediates* (via ``ctx.round``) where the fp16 emulation model asks for it.
Families live in ``_ops_*.py`` and register with ``@register_op("name", ...)``; a second registration of a
name is a programming error and raises.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import MilExecutorError, UnsupportedOpError
from .fp16 import OverflowLog, round_fp16

_FAMILIES = ("_ops_constexpr", "_ops_math", "_ops_nn", "_ops_quant", "_ops_tensor")
_REGISTRY: dict[str, Callable[..., Any]] = {}
_loaded = False


def register_op(*op_types: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the implementation of each MIL op type in ``op_types``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for t in op_types:
            if t in _REGISTRY:
                raise ValueError(f"op {t!r} is already registered (by {_REGISTRY[t].__qualname__})")
            _REGISTRY[t] = fn
        return fn

    return deco


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        for fam in _FAMILIES:
            importlib.import_module(f"{__package__}.{fam}")
        _loaded = True


def get_op(op_type: str, op_name: str = "?") -> Callable[..., Any]:
    _ensure_loaded()
    try:
        return _REGISTRY[op_type]
    except KeyError:
        raise UnsupportedOpError(op_type, op_name) from None


def supported_ops() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


@dataclass
class OpContext:
    """What an implementation may know about the op it evaluates."""

    op_type: str
    op_name: str
    fp16: bool  # the op's outputs are fp16 and fp16 emulation is on: round intermediates via ``round``
    log: OverflowLog | None = None
    out_dtypes: tuple[str, ...] = ()

    def round(self, x: np.ndarray, what: str) -> np.ndarray:
        """Round an intermediate to fp16 (recording overflows) when emulating fp16; back as float32."""
        if not self.fp16:
            return x
        return round_fp16(x, log=self.log, op_name=self.op_name, op_type=self.op_type, what=what).astype(
            np.float32
        )

    def error(self, msg: str) -> MilExecutorError:
        return MilExecutorError(f"{self.op_type} {self.op_name!r}: {msg}")


class Args:
    """An op's inputs by parameter name; missing optional ones come from ``get`` defaults."""

    def __init__(self, ctx: OpContext, values: dict[str, Any]):
        self._ctx, self._values = ctx, values

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise self._ctx.error(
                f"missing required input {name!r} (has: {', '.join(self._values)})"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def ints(self, name: str, default: Iterable[int] | None = None) -> list[int]:
        v = self._values.get(name)
        if v is None:
            if default is None:
                raise self._ctx.error(f"missing required input {name!r}")
            return list(default)
        return [int(i) for i in np.asarray(v).reshape(-1)]

    def int(self, name: str, default: int | None = None) -> int:
        v = self._values.get(name)
        if v is None:
            if default is None:
                raise self._ctx.error(f"missing required input {name!r}")
            return default
        return int(np.asarray(v).reshape(-1)[0])

    def float(self, name: str, default: float | None = None) -> float:
        v = self._values.get(name)
        if v is None:
            if default is None:
                raise self._ctx.error(f"missing required input {name!r}")
            return default
        return float(np.asarray(v).reshape(-1)[0])

    def bool(self, name: str, default: bool = False) -> bool:
        v = self._values.get(name)
        return default if v is None else bool(np.asarray(v).reshape(-1)[0])

    def str(self, name: str, default: str | None = None) -> str:
        v = self._values.get(name)
        if v is None:
            if default is None:
                raise self._ctx.error(f"missing required input {name!r}")
            return default
        return str(v)


def norm_axes(axes: Iterable[int], rank: int) -> tuple[int, ...]:
    return tuple(sorted(int(a) % rank if rank else 0 for a in axes))
