"""``--naming apple``: the file and feature names of Apple's published MobileCLIP Core ML models.

From Apple's demo app (apple/ml-mobileclip ``ios_app``) and the Hugging Face repo apple/coreml-mobileclip:
files ``mobileclip_s0_image.mlpackage`` / ``mobileclip_s0_text.mlpackage`` (Xcode generates the Swift
classes ``mobileclip_s0_image`` / ``mobileclip_s0_text`` from them), image input ``image`` (an RGB image at
the variant's size), text input ``text`` (int32 [1, 77]), output ``final_emb_1`` (the unnormalized
embedding). An app written against those files runs ours (e.g. a MobileCLIP2 variant) unchanged.
"""

from __future__ import annotations

import dataclasses

from mobileclip_export.export.spec import EncoderExport, TensorSpec

NAMINGS = ("default", "apple")
APPLE_OUTPUT = "final_emb_1"
APPLE_INPUTS = {"image": "image", "text": "text"}


def apple_file_name(model: str, encoder: str, extension: str) -> str:
    """``mobileclip_s0`` + ``image`` -> ``mobileclip_s0_image.mlpackage`` (no precision in the name)."""
    return f"{model}_{encoder}{extension}"


def apple_export(enc: EncoderExport) -> EncoderExport:
    """``enc`` with Apple's input and output names (shapes and dtypes are already Apple's at batch 1)."""
    (inp,) = enc.inputs
    (out,) = enc.outputs
    return dataclasses.replace(
        enc,
        inputs=(TensorSpec(APPLE_INPUTS[enc.encoder], inp.shape, inp.dtype, inp.description),),
        outputs=(TensorSpec(APPLE_OUTPUT, out.shape, out.dtype, out.description),),
        metadata={**enc.metadata, "naming": "apple (ml-mobileclip demo app / apple/coreml-mobileclip)"},
    )
