"""The verification inputs every artifact is checked on, the same in every runtime.

Chosen to catch the usual export bugs: random images (general numerics), structured images (gradient,
checkerboard, constant: normalization and padding mistakes show up as large errors on flat inputs), and
texts of different lengths (empty, short, long, and > 77 tokens: EOT pooling and truncation). Images hold
8-bit values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

VERIFY_TEXTS: tuple[str, ...] = (
    "",
    "a dog",
    "a photo of a cat sitting on a wooden chair next to a window on a sunny afternoon",
    " ".join(
        "a very long caption that keeps going with many different words so that the tokenizer has to "
        "truncate it and force the end of text token into the last slot".split()
        * 3
    ),
)


@dataclass(frozen=True)
class VerifyInputs:
    encoder: str
    data: np.ndarray  # images float32 [N,3,H,W] in [0,1], or ids int32 [N,77]
    labels: tuple[str, ...]


def random_images(image_size: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` uniform-noise RGB images [3, H, W] in [0, 1), seeded."""
    rng = np.random.default_rng(seed)
    return [rng.random((3, image_size, image_size), dtype=np.float32) for _ in range(n)]


def gradient_image(image_size: int) -> np.ndarray:
    """RGB [3, H, W]: horizontal ramp, vertical ramp, reversed horizontal ramp (exposes flips and scaling)."""
    ramp = np.linspace(0.0, 1.0, image_size, dtype=np.float32)
    shape = (image_size, image_size)
    horizontal, vertical = np.broadcast_to(ramp, shape), np.broadcast_to(ramp[:, None], shape)
    return np.stack([horizontal, vertical, np.broadcast_to(ramp[::-1], shape)])


def image_inputs(image_size: int, seed: int = 0, n_random: int = 2) -> VerifyInputs:
    h = w = image_size
    imgs = random_images(image_size, n_random, seed)
    labels = [f"random-{i}" for i in range(n_random)]
    imgs.append(gradient_image(image_size))
    labels.append("gradient")
    yy, xx = np.mgrid[0:h, 0:w]
    checker = (((yy // 16) + (xx // 16)) % 2).astype(np.float32)
    imgs.append(np.stack([checker, 1 - checker, checker]))
    labels.append("checkerboard")
    imgs.append(np.full((3, h, w), 0.5, dtype=np.float32))
    labels.append("constant-0.5")
    # 8-bit pixel values (k / 255), like every real image: a uint8 image input then sees exactly the pixels
    # the float reference saw.
    data = np.rint(np.stack(imgs) * np.float32(255.0)) / np.float32(255.0)
    return VerifyInputs("image", np.ascontiguousarray(data, dtype=np.float32), tuple(labels))


def text_inputs(context_length: int = 77, texts: Sequence[str] = VERIFY_TEXTS) -> VerifyInputs:
    from mobileclip_export.models.tokenizer import tokenize

    ids = tokenize(list(texts), context_length)
    labels = tuple(f"text[{len(t.split())} words]" for t in texts)
    return VerifyInputs("text", ids.astype(np.int32), labels)


def spread_subset(n: int, cap: int | None) -> list[int]:
    """Indices of at most ``cap`` of ``n`` inputs, spread over the list so each kind (random, structured,
    short/long text) stays represented."""
    if cap is None or cap >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(cap - 1, 1)) for i in range(max(cap, 1))})


def subset(inputs: VerifyInputs, keep: Sequence[int]) -> VerifyInputs:
    return VerifyInputs(inputs.encoder, inputs.data[list(keep)], tuple(inputs.labels[i] for i in keep))
