"""The trained fixture's task: procedurally rendered coloured shapes, and the fixture checkpoint itself.

Images are drawn with NumPy + Pillow from a seed (no downloaded data): one shape of one colour on a noisy grey
background, at a random place, size and rotation. The 25 classes are colour x shape ("red circle"), prompted
as "a photo of a red circle." or with CLIP's templates.

The shipped file (``FIXTURE_DELTA``, a few MB) holds every trained tensor of a reduced MobileCLIP-S0 but the
49408-row token embedding, of which it keeps only the rows of the tokens the prompts use (``token_ids``,
``token_rows``); every other row is zero (training started them at zero and nothing moved them).
``fixture_checkpoint(path)`` writes the full checkpoint in our own key format, loadable with
``--checkpoint``. ``tests/fixtures/train_fixture.py`` trains it and reproduces the shipped file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIXTURE_DELTA = HERE / "data" / "shapes_s0_reduced.delta.safetensors"
MODEL = "mobileclip_s0"
EMBEDDING_KEY = "text_encoder.embedding_layer.weight"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 75, 215),
    "yellow": (235, 205, 30),
    "purple": (145, 55, 185),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
CLASSES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
PHOTO_TEMPLATE = "a photo of a {}."
# Seeds of the rendered sets: training draws from its own stream, the held-out set from this one.
HELD_OUT_SEED = 2026


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a square, triangle, star or cross of circumradius ``r`` turned by ``angle``."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    elif shape == "star":
        pts = [
            ((1.0 if i % 2 == 0 else 0.42) * math.cos(a), (1.0 if i % 2 == 0 else 0.42) * math.sin(a))
            for i, a in enumerate(np.arange(10) * math.pi / 5 - math.pi / 2)
        ]
    else:  # cross: a plus sign, arms a third of its span wide
        w = 1 / 3
        pts = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
               (-w, -w), (-w, -1)]  # fmt: skip
        pts = [(x * 0.8, y * 0.8) for x, y in pts]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def render(label: int, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One image of class ``CLASSES[label]``: uint8 ``[size, size, 3]``."""
    from PIL import Image, ImageDraw

    colour_name, shape = CLASSES[label].split(" ")
    grey = int(rng.integers(60, 200))
    im = Image.new("RGB", (size, size), (grey,) * 3)
    draw = ImageDraw.Draw(im)
    r = size * rng.uniform(0.16, 0.32)
    cx, cy = rng.uniform(r, size - r, 2)
    rgb = tuple(int(np.clip(v + rng.integers(-25, 26), 0, 255)) for v in COLOURS[colour_name])
    if shape == "circle":
        draw.ellipse([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=rgb)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rng.uniform(-0.35, 0.35)), fill=rgb)
    arr = np.asarray(im, np.float32) + rng.normal(0.0, 6.0, (size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def render_set(n_per_class: int, seed: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` images of every class: (uint8 ``[N, size, size, 3]``, int labels ``[N]``)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    return np.stack([render(int(i), rng, size) for i in labels]), labels


def write_image_folder(root: Path, n_per_class: int, seed: int = HELD_OUT_SEED, size: int = 256) -> Path:
    """An ImageFolder (one folder per class, named by its label) of PNGs; returns ``root``."""
    from PIL import Image

    images, labels = render_set(n_per_class, seed, size)
    for i, (img, lab) in enumerate(zip(images, labels)):
        folder = root / CLASSES[lab]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW in [0, 1] (the encoders' input)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def fixture_checkpoint(path: Path, delta: Path = FIXTURE_DELTA) -> Path:
    """Write the full fixture checkpoint (our key format, safetensors) from the shipped delta."""
    from safetensors.torch import load_file, save_file

    from mobileclip_export.models import create_model

    tensors = {k: v if k == "token_ids" else v.float() for k, v in load_file(str(delta)).items()}
    ids, rows = tensors.pop("token_ids"), tensors.pop("token_rows")
    sd = create_model(MODEL, reduced=True).state_dict()
    emb = sd[EMBEDDING_KEY].new_zeros(sd[EMBEDDING_KEY].shape)
    emb[ids.long()] = rows
    full = {**{k: v.clone() for k, v in sd.items() if not k.endswith("num_batches_tracked")}, **tensors}
    full[EMBEDDING_KEY] = emb
    missing = sorted(set(full) - set(tensors) - {EMBEDDING_KEY})
    if missing:
        raise ValueError(f"{delta} lacks {len(missing)} tensors, e.g. {missing[:3]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in full.items()}, str(path))
    return path
