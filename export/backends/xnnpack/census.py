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
    "quantized_decomposed_embedding_byte_default": "int8 token-embedding gather (quantized kernels): "
    "XNNPACK has no gather op",
    "aten_argmax_default": f"EOT position: {_INTEGER_OPS}",
    "aten_arange_start_step": f"positions for the one-hot EOT mask: {_INTEGER_OPS}",
    "aten_eq_tensor": f"one-hot EOT mask: {_INTEGER_OPS}",
    "dim_order_ops__to_dim_order_copy_default": "casts on the ids side (one-hot EOT mask bool -> float; int8 "
    "embedding ids int32 -> int64): XNNPACK converts no dtypes",
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


# TFLite builtin op name -> why the XNNPACK delegate of LiteRT leaves it to the builtin kernels.
ALLOWED_UNDELEGATED_TFLITE: dict[str, str] = {
    "EMBEDDING_LOOKUP": "token-embedding table gather by integer ids: XNNPACK has no gather op",
    "GATHER": "token-embedding table gather by integer ids: XNNPACK has no gather op",
    "ARG_MAX": f"EOT position: {_INTEGER_OPS}",
    "GATHER_ND": "EOT row pick by an integer position: XNNPACK has no gather op",
    "ONE_HOT": f"one-hot EOT mask: {_INTEGER_OPS}",
    "EQUAL": f"one-hot EOT mask: {_INTEGER_OPS}",
    "CAST": "one-hot EOT mask bool -> float: XNNPACK converts no dtypes",
    "RESHAPE": f"the EOT position back to [B, 1] (ARG_MAX drops the axis): {_INTEGER_OPS}",
}


def delegated_ops(ops: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Which operators each ``DELEGATE`` node replaced, from an interpreter's op list (``_get_ops_details``).

    The list keeps the original nodes next to the ``DELEGATE`` nodes that replaced them, so a node is
    delegated when it lies between a delegate node's outputs and its inputs: walk back from the outputs,
    stopping at the delegate's input tensors.
    """
    producer = {int(t): op for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]}
    claimed: set[int] = set()
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    for node in delegates:
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            op = producer.get(stack.pop())
            if op is None or op["index"] in claimed:
                continue
            claimed.add(op["index"])
            stack += [int(t) for t in op["inputs"] if int(t) not in boundary and int(t) >= 0]
    counts: dict[str, int] = {}
    for op in ops:
        if op["op_name"] != "DELEGATE" and op["index"] not in claimed:
            counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    undelegated = {
        name: {"count": n, "reason": ALLOWED_UNDELEGATED_TFLITE.get(name, "unexpected")}
        for name, n in sorted(counts.items())
    }
    return {
        "delegated_subgraphs": len(delegates),
        "delegated_nodes": len(claimed),
        "undelegated": undelegated,
        "unexpected": sorted(k for k, v in undelegated.items() if v["reason"] == "unexpected"),
    }
