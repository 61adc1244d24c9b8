"""Classifier artifacts: the image encoder with the label set baked in (``--classes labels.txt``).

Graph: image encoder -> embedding ``e`` -> L2-normalize -> Linear(D, N, no bias) whose weight is
``logit_scale * T`` where ``T`` holds the template-averaged, L2-normalized label embeddings (CLIP's zero-shot
recipe), so ``logits = logit_scale * cos(image, label)``. Outputs, in this order: ``logits`` [1, N] (first:
what a runner returns) and ``embedding`` [1, D] (unnormalized, as the plain image encoder's).

Label embeddings come from the TRAIN-TIME text encoder in fp32. Verification compares the artifact's logits
with the two-tower computation (train-time image encoder, same ``T``) and requires identical top-1.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mobileclip_export.export.spec import EncoderExport, TensorSpec
from mobileclip_export.export.zeroshot import prompts as Z

CLASSIFIER = "classifier"  # the artifact's encoder label in the manifest and its file name
LABELS_FILE = "labels.txt"
EMBEDDINGS_FILE = "label_embeddings.npy"


class ZeroShotClassifier(nn.Module):
    """``x -> (logit_scale * normalize(encoder(x)) @ T.T, encoder(x))``."""

    def __init__(self, encoder: nn.Module, label_embeddings: np.ndarray, logit_scale: float):
        super().__init__()
        self.encoder = encoder
        n, d = label_embeddings.shape
        self.head = nn.Linear(d, n, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(np.asarray(label_embeddings, np.float32)) * logit_scale)
        self.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        emb = self.encoder(x)
        # rsqrt of the clamped squared norm: plain ops every converter maps (no linalg_vector_norm).
        unit = emb * torch.rsqrt((emb * emb).sum(dim=-1, keepdim=True).clamp_min(1e-24))
        return self.head(unit), emb


def text_embeddings(train_model: nn.Module, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """Template-averaged, normalized label embeddings ``[N, D]`` from the train-time text encoder."""
    from mobileclip_export.export.zeroshot.encoders import TorchEncoders

    ctx = int(getattr(train_model, "context_length", 77))
    return Z.label_embeddings(TorchEncoders(train_model).text, labels, templates, ctx)


def classifier_export(
    image: EncoderExport, label_embeddings: np.ndarray, logit_scale: float, labels: Sequence[str]
) -> EncoderExport:
    """The classifier as an image-input ``EncoderExport`` (backends treat it as the image encoder)."""
    n, d = label_embeddings.shape
    plain = image.module_without_normalize
    meta = dict(image.metadata)
    meta.update(
        {
            "classifier_labels": json.dumps(list(labels)),
            "num_classes": str(n),
            "outputs": "logits = logit_scale * cos(image, label) [1, N] in label order; embedding [1, D]",
        }
    )
    return dataclasses.replace(
        image,
        module=ZeroShotClassifier(image.module, label_embeddings, logit_scale),
        module_without_normalize=(
            None if plain is None else ZeroShotClassifier(plain, label_embeddings, logit_scale)
        ),
        outputs=(
            TensorSpec("logits", (1, n), "float32", "logit_scale * cosine to each label, in label order"),
            TensorSpec("embedding", (1, d), "float32", "unnormalized image embedding"),
        ),
        metadata=meta,
    )


@torch.no_grad()
def two_tower_logits(
    train_model: nn.Module, images: np.ndarray, label_embeddings: np.ndarray, logit_scale: float
) -> np.ndarray:
    """The reference: train-time image encoder, normalized, against the label embeddings (float64)."""
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
    emb = train_model.image_encoder(x).double().numpy()
    return float(logit_scale) * Z.l2_normalize(emb) @ np.asarray(label_embeddings, np.float64).T


def top1_agreement(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    same = np.argmax(got, axis=1) == np.argmax(ref, axis=1)
    return {"top1_agree": int(same.sum()), "n_inputs": int(len(same)), "ok": bool(same.all())}


def bundle_files(labels: Sequence[str], label_embeddings: np.ndarray) -> dict[str, bytes]:
    """Files placed next to the classifier artifacts: the label order and the unscaled matrix ``T``."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(label_embeddings, np.float32), allow_pickle=False)
    return {LABELS_FILE: ("\n".join(labels) + "\n").encode(), EMBEDDINGS_FILE: buf.getvalue()}


def manifest_block(
    labels: Sequence[str], templates: Sequence[str], label_embeddings: np.ndarray, logit_scale: float
) -> dict[str, Any]:
    return {
        "labels": list(labels),
        "templates": list(templates),
        "files": [LABELS_FILE, EMBEDDINGS_FILE],
        "label_embeddings": {
            "shape": list(label_embeddings.shape),
            "dtype": "float32",
            "normalized": True,
            "scaled": False,
            "note": f"rows L2-normalized, template-averaged; the graph holds T x {logit_scale:.6g}",
        },
        "logit_scale": float(logit_scale),
        "outputs": ["logits", "embedding"],
    }
