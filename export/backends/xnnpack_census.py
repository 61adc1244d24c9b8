"""What XNNPACK left undelegated, judged against an explicit, reasoned allow-list (no torch import here).

The census guard: an encoder lowered for XNNPACK should be one delegated subgraph; an operator outside it
is either named here with the reason it cannot be delegated, or reported as unexpected (and fails the
tests in ``tests/test_xnnpack_census.py`` / ``tests/test_executorch.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_INTEGER_OPS = "integer op on the token ids before the float graph (XNNPACK computes no integer ops)"

# ExecuTorch edge operator name (as ``get_delegation_info`` spells it) -> why it stays outside XNNPACK.
ALLOWED_UNDELEGATED: dict[str, str] = {
    "aten_embedding_default": "token-embedding table gather by integer ids: XNNPACK has no gather op",
    "aten_argmax_default": f"EOT position: {_INTEGER_OPS}",
    "aten_arange_start_step": f"positions for the one-hot EOT mask: {_INTEGER_OPS}",
    "aten_eq_tensor": f"one-hot EOT mask: {_INTEGER_OPS}",
    "dim_order_ops__to_dim_order_copy_default": "one-hot EOT mask bool -> float: XNNPACK converts no dtypes",
}


def undelegated_census(by_operator: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """``undelegated``: op -> {count, reason}; ``unexpected``: ops outside the delegate with no reason."""
    undelegated: dict[str, dict[str, Any]] = {}
    for op, counts in sorted(by_operator.items()):
        if counts.get("non_delegated"):
            reason = ALLOWED_UNDELEGATED.get(op)
            undelegated[op] = {"count": counts["non_delegated"], "reason": reason or "unexpected"}
    unexpected = sorted(op for op, v in undelegated.items() if v["reason"] == "unexpected")
    return {"undelegated": undelegated, "unexpected": unexpected}
