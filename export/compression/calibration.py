"""Calibration and task data shipped with the toolkit: the sample photographs, preprocessed exactly as the
variant's preprocessing says, and a caption set for the text encoder. Nothing is downloaded.

The captions name what each photograph shows (``models.samples``) plus distractors, so image-to-text
retrieval over them is a small but real task for the accuracy guard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mobileclip_export.export.compression.evalset import EvalTask

log = logging.getLogger(__name__)

_DISTRACTORS = (
    "a dog",
    "a bowl of fruit",
    "a city street at night",
    "a mountain landscape",
    "a bicycle",
    "a plate of food",
    "a bird on a branch",
    "a red car",
    "a group of people",
    "a diagram",
)


def captions() -> tuple[str, ...]:
    """``a photo of <subject>`` for every shipped photograph, then the distractors."""
    from mobileclip_export.models.samples import SAMPLES

    return tuple(f"a photo of {s.subject}" for s in SAMPLES) + tuple(f"a photo of {d}" for d in _DISTRACTORS)


def caption_ids(context_length: int = 77) -> np.ndarray:
    from mobileclip_export.models.tokenizer import tokenize

    return tokenize(list(captions()), context_length).astype(np.int32)


def calibration_captions() -> tuple[str, ...]:
    """The captions, plus the empty text and all of them joined into one text the tokenizer truncates: the
    activations of every token position (padding after an early end of text, a full context) get a
    calibrated range, not only those short captions reach."""
    caps = captions()
    return (*caps, "", ", ".join(caps), ", ".join(reversed(caps)))


def photographs(spec: object, limit: int | None = None) -> np.ndarray:
    """float32 ``[N, 3, S, S]`` in [0, 1]: the shipped photographs through the variant's exact preprocessing
    (the encoders normalize themselves)."""
    from mobileclip_export.models.preprocess import preprocess_batch
    from mobileclip_export.models.samples import sample_paths

    paths = sample_paths()[:limit] if limit else sample_paths()
    return preprocess_batch(paths, spec.preprocessing).astype(np.float32)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TaskData:
    """Photographs and captions with the fp32 train-time embeddings the guard compares against."""

    images: np.ndarray  # [N,3,S,S] float32 in [0,1]
    ids: np.ndarray  # [M,77] int32
    ref_image: np.ndarray  # [N,D] train-time fp32 image embeddings
    ref_text: np.ndarray  # [M,D] train-time fp32 text embeddings
    logit_scale: float  # exp of the model's log-space parameter (100 for CLIP-style models)
    # Random weights make captions near-ties (rankings flip at cosine 0.9997): the task is then reported,
    # not enforced; the embedding parity still is.
    enforce_task: bool = True
    # The user's labelled images (--eval-dir): zero-shot accuracy and its drop, enforced per artifact.
    evaluation: EvalTask | None = None


def folder_images(folder: str | Path, spec: object, limit: int = 32) -> np.ndarray:
    """Up to ``limit`` images found under ``folder`` (recursively; evenly spread over the sorted list)
    through the variant's preprocessing, for calibration on the user's own data. A file whose real path
    leaves the folder (a symlink out) is refused, as is a folder without images."""
    from mobileclip_export.errors import UsageError
    from mobileclip_export.export.compression.evalset import IMAGE_SUFFIXES
    from mobileclip_export.models.preprocess import preprocess_batch

    root = Path(folder).resolve()
    if not root.is_dir():
        raise UsageError(f"calibration images: {str(folder)!r} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    for p in files:
        if not p.resolve().is_relative_to(root):
            raise UsageError(f"calibration image {str(p)!r} leads outside {str(root)!r}; refused")
    if not files:
        raise UsageError(f"calibration images: no image ({', '.join(IMAGE_SUFFIXES)}) under {str(folder)!r}")
    step = -(-len(files) // limit)
    return preprocess_batch(files[::step][:limit], spec.preprocessing).astype(np.float32)  # type: ignore[attr-defined]


def calibration_inputs(enc: object, limit: int | None = None, folder: str | Path | None = None) -> np.ndarray:
    """Inputs for calibrating an encoder's activations: the photographs (or the images under ``folder``) at
    the encoder's image size (in the artifact's input layout), or the caption ids at its context length
    (``enc`` is an ``EncoderExport``)."""
    from mobileclip_export.models import get_model_spec

    spec = get_model_spec(enc.model_name)  # type: ignore[attr-defined]
    if enc.encoder == "text":  # type: ignore[attr-defined]
        from mobileclip_export.models.tokenizer import tokenize

        length = int(enc.inputs[0].shape[1])  # type: ignore[attr-defined]
        return tokenize(list(calibration_captions()), length).astype(np.int32)[:limit]
    images = folder_images(folder, spec, limit or 32) if folder else photographs(spec, limit)
    size = enc.image_size  # type: ignore[attr-defined]
    if size and images.shape[-1] != size:  # reduced test variants run at a smaller size
        import torch

        t = torch.nn.functional.interpolate(torch.from_numpy(images), size=(size, size), mode="bilinear")
        images = t.numpy()
    images = np.ascontiguousarray(images, dtype=np.float32)
    layout = enc.metadata.get("image_input")  # type: ignore[attr-defined]
    if layout:  # an artifact taking NHWC / uint8 input calibrates on the same pixels in its own layout
        from mobileclip_export.export.image_input import to_layout

        images = to_layout(images, layout)
    return images
