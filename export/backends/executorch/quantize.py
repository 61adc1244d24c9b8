"""ExecuTorch ``int8`` for the XNNPACK delegate: PT2E quantization with ExecuTorch's own XNNPACKQuantizer.

Linears get dynamic per-channel int8 (activations quantized at run time: no calibration, accurate); convs get
static per-channel int8 with activation ranges calibrated on the shipped photographs (``export.calibration``).
Two rewrites first, so no large weight is left in fp32:
- ``x @ W`` projection heads (a matmul on a constant) become linears, which the quantizer knows;
- the token embedding (XNNPACK has no gather kernel) becomes ExecuTorch's
  ``quantized_decomposed.embedding_byte`` (int8 rows, one scale per row: the llama exporter's 8-bit
  embedding), run by the quantized-kernels library.
Pads share their input's scale (``_shared_pad_quantizer``) so the XNNPACK form's tiled 7x7 depthwise convs
stay tiled: whole, XNNPACK ran them as grouped IGEMM and int8 S0 image was slower than fp32 (84 vs 65 ms).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_CALIBRATION_INPUTS = 6
# The portable runtime needs this library for embedding_byte (apps: link ExecuTorch's quantized kernels).
RUNTIME_KERNELS = "executorch.kernels.quantized"


def quantize_module(
    module: Any, example: tuple[Any, ...], calibration: np.ndarray
) -> tuple[Any, dict[str, Any]]:
    """The PT2E-quantized graph module of ``module`` (fp32, eval) and manifest details."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    embeddings = _byte_embeddings(module)
    with torch.no_grad():
        gm = torch.export.export(module, example).module()
        heads = _matmuls_as_linears(gm)
        prepared = prepare_pt2e(gm, _quantizer())
        rows = calibration[:_CALIBRATION_INPUTS]
        for i in range(len(rows)):
            x = torch.from_numpy(np.ascontiguousarray(rows[i : i + 1]))
            prepared(x.to(example[0].dtype))
        converted = convert_pt2e(prepared)
    compression: dict[str, Any] = {
        "linear": "int8 per channel, dynamic activations",
        "conv": "int8 per channel, static activations",
        "calibration_inputs": len(rows),
        "library": "executorch XNNPACKQuantizer (torchao PT2E)",
    }
    if heads:
        compression["projection_heads_as_linear"] = heads
    if embeddings:
        compression["embedding"] = {
            "layers": embeddings,
            "scheme": "int8 per row (quantized_decomposed.embedding_byte)",
            "runtime_kernels": "ExecuTorch quantized kernels (quantized_ops_lib / kernels_quantized)",
        }
    return converted, {"compression": compression}


def _quantizer() -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer

    from mobileclip_export.export.backends.xnnpack.form import MatmulLayerNorm

    # executorch 1.5.1 ignores set_module_type/set_operator_type here (nothing gets annotated), so two global
    # quantizers split the graph by a node filter: linears dynamic, convolutions static. The filter also sees
    # each op's weight and bias nodes, which must pass (judging them by name left e.g. ``se.fc1`` in fp32).
    # LayerNorm's mean and variance reductions (linears in the XNNPACK form) stay fp32: int8 there would
    # shift every normalization.
    def is_linear(n: Any) -> bool:
        if n.op != "call_function":
            return True
        weight = str(getattr(n.args[1], "target", "")) if len(n.args) > 1 else ""
        return "linear" in str(n.target) and not weight.endswith(MatmulLayerNorm.MEAN_WEIGHTS)

    def is_conv(n: Any) -> bool:  # conv + relu is one pattern, the relu included
        return n.op != "call_function" or any(k in str(n.target) for k in ("conv", "relu"))

    dyn = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    )
    static_config = get_symmetric_quantization_config(is_per_channel=True)
    static = XNNPACKQuantizer().set_global(static_config)
    pads = _shared_pad_quantizer(static_config.input_activation)
    parts = [dyn.set_filter_function(is_linear), static.set_filter_function(is_conv), pads]
    return ComposableQuantizer(parts)


def _shared_pad_quantizer(activation: Any) -> Any:
    """A quantizer that gives every pad one scale for input and output, shared by the slices read from it.

    The XNNPACK form's tiled 7x7 depthwise convolution starts with a pad; left to itself the pad ends up
    between a dequantize and a quantize of different scales, which XNNPACK refuses ("StaticConstantPad ...
    invalid parameter"). Zero padding is exact at its input's scale: the pad takes its producer's output
    scale, or a calibrated ``activation`` one when the producer is float.
    """
    import torch
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        Quantizer,
        SharedQuantizationSpec,
    )

    aten = torch.ops.aten
    pads = (aten.pad.default, aten.constant_pad_nd.default)
    slices = (aten.slice.Tensor, aten.slice_copy.Tensor)
    key = "quantization_annotation"

    def annotate(node: Any, src: Any, input_spec: Any) -> None:
        node.meta[key] = QuantizationAnnotation(
            input_qspec_map={src: input_spec},
            output_qspec=SharedQuantizationSpec((src, node)),
            _annotated=True,
        )
        for user in node.users:  # the tiles' (chained) slices keep the same scale
            if user.target in slices and key not in user.meta:
                annotate(user, node, SharedQuantizationSpec(node))

    class SharedPad(Quantizer):
        def annotate(self, model: Any) -> Any:
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in pads or key in node.meta:
                    continue
                src = node.args[0]
                produced = src.meta.get(key)
                shared = produced is not None and produced.output_qspec is not None
                annotate(node, src, SharedQuantizationSpec(src) if shared else activation)
            return model

        def validate(self, model: Any) -> None:
            return None

    return SharedPad()


def _matmuls_as_linears(gm: Any) -> list[str]:
    """Rewrite ``x @ W`` (``W`` a 2-D constant) as ``linear(x, W.T)`` in place; the names of the ``W``s."""
    import torch

    aten = torch.ops.aten
    graph, done = gm.graph, []
    for node in list(graph.nodes):
        if node.target not in (aten.matmul.default, aten.mm.default) or node.args[1].op != "get_attr":
            continue
        target = node.args[1].target
        owner, _, attr = target.rpartition(".")
        weight = getattr(gm.get_submodule(owner) if owner else gm, attr)
        if weight.dim() != 2:
            continue
        name = target.replace(".", "_") + "_as_linear"
        gm.register_buffer(name, weight.detach().t().contiguous())
        with graph.inserting_before(node):
            linear = graph.call_function(aten.linear.default, (node.args[0], graph.get_attr(name)))
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        graph.erase_node(node)
        done.append(target)
    graph.eliminate_dead_code()
    gm.recompile()
    return done


def _byte_embeddings(module: Any) -> list[str]:
    """Swap every ``nn.Embedding`` of ``module`` (in place) for its int8 ``ByteEmbedding``; their names."""
    from torch import nn

    names = [name for name, m in module.named_modules() if type(m) is nn.Embedding and name]
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, ByteEmbedding(getattr(parent, attr)))
    return names


def ByteEmbedding(embedding: Any) -> Any:  # noqa: N802 - a module factory (torch is imported lazily)
    """An ``nn.Embedding`` as int8 rows with one fp32 scale per row, looked up by ``embedding_byte``.

    Scales come from torchao's symmetric per-channel observer and the rows from the ``quantize_per_channel``
    op that PT2E itself uses, so the table is exactly what ExecuTorch's own quantizers would store.
    """
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401 - defines embedding_byte
    import torch
    from torch import nn
    from torchao.quantization.pt2e import PerChannelMinMaxObserver

    weight = embedding.weight.detach().float()
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.int8, qscheme=torch.per_channel_symmetric)
    observer(weight)
    scales, zero_points = observer.calculate_qparams()
    q = torch.ops.quantized_decomposed.quantize_per_channel.default(
        weight, scales.float(), zero_points, 0, -128, 127, torch.int8
    )

    class _ByteEmbedding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("weight", q)
            self.register_buffer("scales", scales.float())

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            op = torch.ops.quantized_decomposed.embedding_byte.default
            return op(self.weight, self.scales, None, -128, 127, ids.long())  # the kernel takes int64 only

    return _ByteEmbedding()
