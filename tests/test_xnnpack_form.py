"""XNNPACK deploy forms are the same arithmetic (eager, no lowering); the census allow-list judges ops."""

from __future__ import annotations

import copy

import torch
from torch import nn

from mobileclip_export.export.backends.xnnpack.census import (
    ALLOWED_UNDELEGATED,
    delegated_ops,
    undelegated_census,
)
from mobileclip_export.export.backends.xnnpack.form import MatmulLayerNorm, xnnpack_module
from mobileclip_export.export.parity import compare

from _toys import randomized_encoder_export, structured_inputs


def test_matmul_layer_norm_matches_torch():
    norm = nn.LayerNorm(768, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(0)) * 3 + 2  # offset mean
    with torch.no_grad():
        stats = compare(norm(x).numpy()[0], MatmulLayerNorm(norm)(x).numpy()[0])
    assert stats.max_abs_diff < 1e-5 and stats.cosine >= 0.9999999, stats


def test_xnnpack_module_keeps_outputs_and_leaves_the_original_alone():
    enc = randomized_encoder_export("mobileclip_s0", "text")
    before = {k: v.clone() for k, v in enc.module.state_dict().items()}
    shaped = xnnpack_module(copy.deepcopy(enc.module))
    assert not any(type(m) is nn.LayerNorm for m in shaped.modules())
    assert any(type(m) is nn.LayerNorm for m in enc.module.modules())  # the caller's module is untouched
    ids = torch.from_numpy(structured_inputs("text"))
    with torch.no_grad():
        stats = compare(enc.module(ids).numpy(), shaped(ids).numpy())
    assert stats.cosine >= 0.99999 and stats.max_abs_diff < 1e-4, stats
    assert before.keys() == enc.module.state_dict().keys()


def test_census_names_reasons_and_flags_unknown_ops():
    census = undelegated_census(
        {
            "aten_embedding_default": {"delegated": 0, "non_delegated": 1},
            "aten_native_layer_norm_default": {"delegated": 0, "non_delegated": 3},
            "aten_linear_default": {"delegated": 9, "non_delegated": 0},
        }
    )
    assert census["unexpected"] == ["aten_native_layer_norm_default"]
    assert census["undelegated"]["aten_embedding_default"] == {
        "count": 1,
        "reason": ALLOWED_UNDELEGATED["aten_embedding_default"],
    }
    assert "aten_linear_default" not in census["undelegated"]


def _op(index: int, name: str, inputs: list[int], outputs: list[int]) -> dict:
    return {"index": index, "op_name": name, "inputs": inputs, "outputs": outputs}


def test_tflite_delegated_ops_walk_back_from_each_delegate():
    # ids(0) -> GATHER(table 1) -> t2 -> [FC -> t3 -> ADD -> t4] delegated; ARG_MAX on ids stays outside
    ops = [
        _op(0, "GATHER", [1, 0], [2]),
        _op(1, "FULLY_CONNECTED", [2, 5, -1], [3]),
        _op(2, "ADD", [3, 6], [4]),
        _op(3, "ARG_MAX", [0, 7], [8]),
        _op(4, "TRANSPOSE", [4, 9], [10]),
        _op(5, "DELEGATE", [2, 5, 6], [4]),
    ]
    census = delegated_ops(ops)
    assert census["delegated_subgraphs"] == 1 and census["delegated_nodes"] == 2
    assert {k: v["count"] for k, v in census["undelegated"].items()} == {
        "ARG_MAX": 1,
        "GATHER": 1,
        "TRANSPOSE": 1,
    }
    assert census["unexpected"] == ["TRANSPOSE"]


def test_tiled_depthwise_is_the_same_convolution():
    from mobileclip_export.export.backends.xnnpack.form import TiledDepthwise

    for k, stride, size in ((7, 1, 16), (7, 2, 15), (11, 1, 9)):
        conv = nn.Conv2d(8, 8, k, stride, k // 2, groups=8).eval()
        x = torch.randn(1, 8, size, size, generator=torch.Generator().manual_seed(k))
        with torch.no_grad():
            ref, got = conv(x), TiledDepthwise(conv)(x)
        assert ref.shape == got.shape
        assert (ref - got).abs().max() < 1e-5  # same products, another summation order
    shaped = xnnpack_module(
        nn.Sequential(nn.Conv2d(4, 4, 7, 1, 3, groups=4), nn.Conv2d(4, 4, 3, 1, 1, groups=4))
    )
    assert [type(m).__name__ for m in shaped] == ["TiledDepthwise", "Conv2d"]  # 3x3 has a DWConv kernel
