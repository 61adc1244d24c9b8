"""Multiply-accumulates of the graph that runs, counted by PyTorch's own ``FlopCounterMode``.

The counter sees aten ops after composite decomposition (``nn.Linear`` -> ``addmm``, attention -> an SDPA
kernel or its bmm decomposition), so whatever the Python code looks like, the count is of what runs. Counted,
as in the reference's section 6: convolutions, matrix multiplies (linear layers, attention matmuls) and fused
SDPA kernels; not counted: norms, activations, elementwise ops, softmax and embedding gathers. PyTorch counts
FLOPs = 2 x MACs. What it does not do is kept here: weight bytes (all, and those streamed per inference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_flash_sdpa(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    """The CPU fused-attention kernel is missing from PyTorch's table; same formula as its other SDPAs."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_sdpa}


@dataclass(frozen=True)
class MacReport:
    """MACs of one forward pass at the given inputs, plus the weight bytes a forward pass must stream."""

    macs: int
    by_op: dict[str, int] = field(default_factory=dict)  # aten op name (e.g. "convolution", "addmm") -> MACs
    param_bytes: int = 0  # every parameter and persistent buffer, as stored
    streamed_param_bytes: int = 0  # minus embedding tables (only a few rows are gathered per inference)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def weight_bytes(module: nn.Module) -> tuple[int, int]:
    """(all parameter + buffer bytes, the same without nn.Embedding weights), counting shared tensors once."""
    seen: set[int] = set()
    total = 0
    embedding_ids = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    embedding = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        nbytes = tensor.numel() * tensor.element_size()
        total += nbytes
        if id(tensor) in embedding_ids:
            embedding += nbytes
    return total, total - embedding


def count_macs(module: nn.Module, example_inputs: Sequence[Any]) -> MacReport:
    """Run ``module(*example_inputs)`` once under PyTorch's flop counter (no grad); MACs per op family."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    with torch.inference_mode(), counter:
        module(*example_inputs)
    flops = counter.get_flop_counts().get("Global", {})
    by_op = {getattr(op, "__name__", str(op)): int(n) // 2 for op, n in flops.items() if n}
    total, streamed = weight_bytes(module)
    return MacReport(
        macs=counter.get_total_flops() // 2,
        by_op=by_op,
        param_bytes=total,
        streamed_param_bytes=streamed,
    )
