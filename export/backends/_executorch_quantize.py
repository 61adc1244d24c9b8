"""ExecuTorch ``int8`` for the XNNPACK delegate: PT2E quantization with ExecuTorch's own XNNPACKQuantizer.

Linears get dynamic per-channel int8 (activations quantized at run time: no calibration, accurate); convs get
static per-channel int8 with activation ranges calibrated on the shipped photographs (``export.calibration``).
What stays float: the token embedding table (XNNPACK has no embedding kernel) and ops outside linears/convs.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_CALIBRATION_INPUTS = 6


def quantize_module(
    module: Any, example: tuple[Any, ...], calibration: np.ndarray
) -> tuple[Any, dict[str, Any]]:
    """The PT2E-quantized graph module of ``module`` (fp32, eval) and manifest details."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer

    # executorch 1.5.1 ignores set_module_type/set_operator_type here (nothing gets annotated), so two global
    # quantizers split the graph by a node filter: linears dynamic, convolutions static.
    def is_linear(n: Any) -> bool:
        return "linear" in str(n.target)

    def is_conv(n: Any) -> bool:
        return "conv" in str(n.target)

    dyn = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    )
    static = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer = ComposableQuantizer([dyn.set_filter_function(is_linear), static.set_filter_function(is_conv)])
    with torch.no_grad():
        gm = torch.export.export(module, example).module()
        prepared = prepare_pt2e(gm, quantizer)
        rows = calibration[:_CALIBRATION_INPUTS]
        for i in range(len(rows)):
            x = torch.from_numpy(np.ascontiguousarray(rows[i : i + 1]))
            prepared(x.to(example[0].dtype))
        converted = convert_pt2e(prepared)
    details = {
        "compression": {
            "linear": "int8 per channel, dynamic activations",
            "conv": "int8 per channel, static activations",
            "calibration_inputs": len(rows),
            "library": "executorch XNNPACKQuantizer (torchao PT2E)",
        }
    }
    return converted, details
