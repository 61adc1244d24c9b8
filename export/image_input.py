"""Mobile image-input layouts: ``float-nchw`` (default), ``float-nhwc``, ``uint8-nhwc``.

Android bitmaps and camera frames are NHWC bytes; rather than every app writing a transpose and a /255 loop,
a backend declares the option ``image_input`` (``IMAGE_INPUT_OPTION``): the pipeline hands it the encoder
through ``Target.adapt_export`` (which calls ``wrap_export``), and the backend calls ``wrap_runner`` after
loading. The transpose and scaling then live inside the graph (a
wrapper module around the unchanged encoder), and the wrapped runner keeps the Runner contract (float32 NCHW
in [0, 1] in), converting to the artifact's own layout, so verification, golden vectors and benchmarks run
every layout the same way. uint8 conversion is ``round(x * 255)``: exact for 8-bit images (the verification
images are 8-bit, so the train-time reference sees the same pixels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mobileclip_export.export.spec import EncoderExport, OptionSpec, Runner, TensorSpec

if TYPE_CHECKING:
    import numpy as np

DEFAULT = "float-nchw"
LAYOUTS = ("float-nchw", "float-nhwc", "uint8-nhwc")
DESCRIPTIONS = {
    "float-nchw": "RGB float32 NCHW in [0, 1]",
    "float-nhwc": "RGB float32 NHWC in [0, 1] (transpose inside the graph)",
    "uint8-nhwc": "RGB uint8 NHWC in [0, 255], e.g. Android bitmap bytes without alpha (/255 and transpose "
    "inside the graph)",
}
IMAGE_INPUT_OPTION = OptionSpec(
    "image_input",
    "layout/dtype of the image input: float-nchw (default), float-nhwc, or uint8-nhwc (RGB bytes; scaling "
    "and transpose folded into the graph)",
    DEFAULT,
    LAYOUTS,
)


def layout_of(options: Mapping[str, Any]) -> str:
    return str(options.get("image_input") or DEFAULT)


def _layout_module(module: Any, layout: str) -> Any:
    import torch
    from torch import nn

    class ImageInputLayout(nn.Module):
        """``module`` fed NHWC (and uint8) pixels: permute to NCHW, scale bytes to [0, 1]."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = module
            self.eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not x.is_floating_point():
                # The compute dtype of the encoder (fp16 when a backend halves the whole module).
                dtype = next((p.dtype for p in self.inner.parameters()), torch.float32)
                x = x.to(dtype) * (1.0 / 255.0)
            return self.inner(x.permute(0, 3, 1, 2))

    return ImageInputLayout()


def wrap_export(enc: EncoderExport, options: Mapping[str, Any]) -> EncoderExport:
    """``enc`` with its image input in the layout ``options["image_input"]`` asks for. Anything whose input
    is an NCHW image is wrapped (image encoders, classifier artifacts); text encoders stay unchanged."""
    layout = layout_of(options)
    if layout == DEFAULT or len(enc.inputs[0].shape) != 4:
        return enc
    import torch

    (x,) = enc.example_inputs
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    if layout == "uint8-nhwc":
        nhwc = (nhwc * 255).round().clamp(0, 255).to(torch.uint8)
    (spec,) = enc.inputs
    n, c, h, w = spec.shape
    dtype = "uint8" if layout == "uint8-nhwc" else spec.dtype
    new_spec = TensorSpec(spec.name, (n, h, w, c), dtype, DESCRIPTIONS[layout])
    meta = {**enc.metadata, "input": DESCRIPTIONS[layout], "image_input": layout}
    return dataclasses.replace(
        enc,
        module=_layout_module(enc.module, layout),
        example_inputs=(nhwc,),
        inputs=(new_spec,),
        metadata=meta,
        module_without_normalize=None,  # the layout wrapper needs the normalizing encoder inside
    )


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """Float32 NCHW [0, 1] images in ``layout`` (uint8: round(x * 255), exact for 8-bit images)."""
    import numpy as np

    if layout == DEFAULT:
        return x
    out = np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))
    if layout == "uint8-nhwc":
        out = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    return out


class LayoutRunner(Runner):
    """Takes float32 NCHW in [0, 1] like every runner; feeds the wrapped artifact its own layout."""

    def __init__(self, inner: Runner, layout: str) -> None:
        self.inner, self.layout = inner, layout
        self.label = f"{inner.label}; input {layout}"
        self.is_deployment_runtime = inner.is_deployment_runtime
        self.max_verify_inputs = inner.max_verify_inputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.inner.run({k: to_layout(v, self.layout) if v.ndim == 4 else v for k, v in inputs.items()})

    def close(self) -> None:
        self.inner.close()


def wrap_runner(runner: Runner, options: Mapping[str, Any]) -> Runner:
    layout = layout_of(options)
    return runner if layout == DEFAULT else LayoutRunner(runner, layout)
