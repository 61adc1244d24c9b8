"""The one builder of ``EncoderExport``: what a backend needs to convert one encoder of a MobileCLIP model.

Used by the export pipeline and by the test helpers alike, so names, shapes (``spec.context_length``, not a
literal 77), descriptions and the normalization facts a backend may fold can never drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mobileclip_export.export.spec import EncoderExport, TensorSpec

if TYPE_CHECKING:  # torch stays out of --help
    from torch import nn

EXAMPLE_TEXT = "a photo of a cat"


def example_input(encoder: str, spec: Any, seed: int = 0) -> Any:
    """The tracing example: a seeded random image in [0, 1], or the ids of ``EXAMPLE_TEXT`` (int32)."""
    import numpy as np
    import torch

    if encoder == "image":
        size = spec.image_size
        return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    from mobileclip_export.models.tokenizer import tokenize

    return torch.from_numpy(tokenize([EXAMPLE_TEXT], spec.context_length).astype(np.int32))


def encoder_export(
    model_name: str,
    encoder: str,
    model: nn.Module,
    metadata: Mapping[str, str],
    *,
    seed: int = 0,
    example: Any = None,
) -> EncoderExport:
    """``EncoderExport`` of ``model``'s (reparameterized) ``encoder``; ``model.spec`` gives sizes and
    preprocessing. ``example`` (one row) replaces the default tracing input of ``example_input``."""
    spec = model.spec
    x = example_input(encoder, spec, seed) if example is None else example
    embed = (TensorSpec("embedding", (1, spec.embed_dim), "float32", "unnormalized embedding"),)
    if encoder == "image":
        size = spec.image_size
        module = model.image_encoder
        return EncoderExport(
            model_name,
            "image",
            module,
            (x,),
            (TensorSpec("image", (1, 3, size, size), "float32", "RGB in [0, 1], NCHW"),),
            embed,
            metadata,
            image_size=size,
            normalize_mean=tuple(spec.preprocessing.mean),
            normalize_std=tuple(spec.preprocessing.std),
            module_without_normalize=getattr(module, "model", None),
        )
    ids = (TensorSpec("text", (1, spec.context_length), "int32", "CLIP BPE token ids, zero padded"),)
    return EncoderExport(model_name, "text", model.text_encoder, (x,), ids, embed, metadata)
