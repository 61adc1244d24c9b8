"""Run an ML Program (see :mod:`.ir`) op by op in NumPy, with optional fp16 emulation (:mod:`.fp16`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .errors import FeedError, MilExecutorError
from .fp16 import OverflowLog, round_fp16
from .ir import NP_DTYPES, Graph, IODesc, OpNode, VarInfo
from .ops import Args, OpContext, get_op

log = logging.getLogger(__name__)


class Program:
    """A loaded ML Program function, runnable with NumPy. Build it with :func:`load_program`.

    Attributes:
        inputs / outputs: ``IODesc`` per model input/output (name, kind "image"/"tensor", shape, dtype,
            for images colour space and the preprocessing scale/bias found in the program).
        fp16_emulation: whether fp16-typed values are rounded to float16 (see :mod:`.fp16`).
        graph: the executor's IR; ``graph.op_counts()`` is the op census.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        inputs: tuple[IODesc, ...] = (),
        outputs: tuple[IODesc, ...] = (),
        fp16_emulation: bool = False,
        source: str = "",
        metadata: Mapping[str, str] | None = None,
    ):
        self.graph = graph
        self.inputs = inputs or tuple(
            IODesc(v.name, "tensor", v.shape, v.dtype) for v in graph.inputs.values()
        )
        self.outputs = outputs or tuple(IODesc(n, "tensor", None, "?") for n in graph.outputs)
        self.fp16_emulation = fp16_emulation
        self.source = source
        self.metadata = dict(metadata or {})
        self._consts32: dict[str, np.ndarray] = {}
        self._folded: dict[str, tuple[Any, ...]] = {}  # constexpr_* results: weights expand once per program
        for op in graph.ops:  # fail at load time, not halfway through a run
            get_op(op.type, op.name)

    def __repr__(self) -> str:
        return (
            f"Program({self.source or '<memory>'}, {len(self.graph.ops)} ops, "
            f"inputs={[i.name for i in self.inputs]}, fp16_emulation={self.fp16_emulation})"
        )

    def with_fp16_emulation(self, on: bool) -> Program:
        """The same program (shared graph) with fp16 emulation switched on or off."""
        return Program(
            self.graph,
            inputs=self.inputs,
            outputs=self.outputs,
            fp16_emulation=on,
            source=self.source,
            metadata=self.metadata,
        )

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evaluate the program.

        Image inputs are fed as the float32 NCHW tensor Core ML builds from the picture: pixel values in
        [0, 255], channels in the input's colour space; the program itself applies the ImageType scale/bias.
        Token ids as int32. Returns each model output in its program dtype (float16 arrays for fp16 outputs
        under emulation)."""
        env = self._execute(feeds, keep_all=False)
        return {n: env[n] for n in self.graph.outputs}

    def trace(
        self, feeds: Mapping[str, np.ndarray], *, overflow_log: OverflowLog | None = None
    ) -> dict[str, np.ndarray]:
        """Every op output by output var name, in program order (inputs first), for debugging and diffing."""
        return self._execute(feeds, keep_all=True, overflow_log=overflow_log)

    # ---- internals ----
    def _prepare_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = self.graph.inputs
        missing = [n for n in expected if n not in feeds]
        extra = [n for n in feeds if n not in expected]
        if missing or extra:
            raise FeedError(
                f"program inputs are {', '.join(expected)}; missing: {missing or 'none'}, "
                f"unknown: {extra or 'none'}"
            )
        out: dict[str, np.ndarray] = {}
        kinds = {i.name: i for i in self.inputs}
        for name, info in expected.items():
            x = np.asarray(feeds[name])
            if info.shape is not None and tuple(x.shape) != info.shape:
                raise FeedError(
                    f"input {name!r} has shape {tuple(x.shape)}, the program expects {info.shape}"
                )
            if info.dtype.startswith("int") and not np.issubdtype(x.dtype, np.integer):
                raise FeedError(f"input {name!r} must be integer ({info.dtype}), got {x.dtype}")
            desc = kinds.get(name)
            if desc is not None and desc.enumerated and tuple(x.shape) not in desc.enumerated:
                shapes = ", ".join(str(list(s)) for s in desc.enumerated)
                raise FeedError(f"input {name!r} has shape {list(x.shape)}; the model takes only {shapes}")
            if desc is not None and desc.kind == "image" and x.size and float(np.max(x)) <= 1.0:
                log.warning(
                    "image input %r has max %.3g: Core ML feeds pixels in [0, 255]; a [0, 1] image is "
                    "normalized twice",
                    name,
                    float(np.max(x)),
                )
            out[name] = self._cast(x, info, None, None)
        return out

    def _cast(self, y: Any, info: VarInfo, op: OpNode | None, olog: OverflowLog | None) -> np.ndarray:
        y = np.asarray(y)
        if info.dtype == "fp16":
            if self.fp16_emulation:
                return round_fp16(
                    y, log=olog, op_name=op.name if op else info.name, op_type=op.type if op else "input"
                )
            return y.astype(np.float32, copy=False)
        dt = NP_DTYPES.get(info.dtype)
        if dt is None:
            return y
        return y.astype(dt, copy=False)

    def _execute(
        self,
        feeds: Mapping[str, np.ndarray],
        *,
        keep_all: bool,
        overflow_log: OverflowLog | None = None,
        on_op: Callable[[OpNode, tuple[np.ndarray, ...]], None] | None = None,
    ) -> dict[str, Any]:
        g = self.graph
        env: dict[str, Any] = dict(self._prepare_feeds(feeds))
        last_use = {} if keep_all else _last_uses(g)
        for i, op in enumerate(g.ops):
            fn = get_op(op.type, op.name)
            fp16_out = self.fp16_emulation and any(o.dtype == "fp16" for o in op.outputs)
            ctx = OpContext(op.type, op.name, fp16_out, overflow_log, tuple(o.dtype for o in op.outputs))
            args = Args(ctx, {k: self._value(env, v) for k, v in op.inputs.items()})
            try:
                with np.errstate(all="ignore"):
                    res = self._folded.get(op.name) or fn(ctx, args)
            except MilExecutorError:
                raise
            except Exception as err:
                shapes = {k: getattr(args.get(k), "shape", None) for k in op.inputs}
                raise MilExecutorError(f"{op.type} {op.name!r} failed on inputs {shapes}: {err}") from err
            res = res if isinstance(res, tuple) else (res,)
            if op.type.startswith("constexpr_"):
                self._folded[op.name] = res
            if len(res) != len(op.outputs):
                raise MilExecutorError(
                    f"{op.type} {op.name!r} produced {len(res)} outputs, "
                    f"the program declares {len(op.outputs)}"
                )
            vals = []
            for info, y in zip(op.outputs, res):
                y = self._cast(y, info, op, overflow_log)
                if info.shape is not None and tuple(y.shape) != info.shape:
                    raise MilExecutorError(
                        f"{op.type} {op.name!r}: output {info.name!r} has shape "
                        f"{tuple(y.shape)}, the program declares {info.shape}"
                    )
                env[info.name] = y
                vals.append(y)
            if on_op is not None:
                on_op(op, tuple(vals))
            if not keep_all:
                for name in [n for n, last in last_use.get(i, ())]:
                    env.pop(name, None)
        return env

    def _value(self, env: Mapping[str, Any], ref: str | tuple[str, ...]) -> Any:
        if isinstance(ref, tuple):
            return [self._value(env, r) for r in ref]
        if ref in env:
            v = env[ref]
        elif ref in self.graph.consts:
            v = self._consts32.get(ref)
            if v is None:  # upcast fp16 weights once per program, not once per run
                v = self.graph.consts[ref]
                if isinstance(v, np.ndarray) and v.dtype == np.float16:
                    v = self._consts32[ref] = v.astype(np.float32)
                return v
            return v
        else:
            raise MilExecutorError(f"value {ref!r} is used before it is defined")
        if isinstance(v, np.ndarray) and v.dtype == np.float16:
            return v.astype(np.float32)
        return v


def _last_uses(g: Graph) -> dict[int, list[tuple[str, int]]]:
    """op index -> vars whose last reader is that op (so ``run`` can free them); outputs are never freed."""
    last: dict[str, int] = {}
    for i, op in enumerate(g.ops):
        for ref in op.inputs.values():
            for name in ref if isinstance(ref, tuple) else (ref,):
                if name not in g.consts:
                    last[name] = i
    keep = set(g.outputs)
    out: dict[int, list[tuple[str, int]]] = {}
    for name, i in last.items():
        if name not in keep:
            out.setdefault(i, []).append((name, i))
    return out
