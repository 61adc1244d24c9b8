"""What a variant *is*, as data: encoders, sizes, preprocessing and the published reference numbers.

The specs are loaded from ``models/configs/<name>.json`` (one file per variant) so that adding a
variant never means editing code. Everything here is frozen: a spec is shared by every model built
from it and recorded verbatim in export manifests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IDENTITY_MEAN = (0.0, 0.0, 0.0)
IDENTITY_STD = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Preprocessing:
    """Image preprocessing the checkpoint was trained with.

    Pipeline: resize the shortest side to ``resize`` with ``interpolation``, center-crop ``crop``,
    scale to [0, 1] RGB, then ``(x - mean) / std``. The last step is done inside the model
    (``ImageEncoder``), so exported artifacts take [0, 1] RGB and cannot be normalized twice.
    """

    resize: int
    crop: int
    interpolation: str = "bilinear"  # "bilinear" | "bicubic"
    mean: tuple[float, float, float] = IDENTITY_MEAN
    std: tuple[float, float, float] = IDENTITY_STD
    resize_mode: str = "shortest"
    color_space: str = "RGB"
    input_range: tuple[float, float] = (0.0, 1.0)

    @property
    def is_identity_normalization(self) -> bool:
        return tuple(self.mean) == IDENTITY_MEAN and tuple(self.std) == IDENTITY_STD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Published:
    """Reference numbers from the MobileCLIP README / model cards (iPhone 12 Pro Max latency).

    Params are reparameterized counts in millions; GMACs are our counts on the reparameterized
    reference models (no published MAC numbers exist).
    """

    params_image_m: float
    params_text_m: float
    latency_image_ms: float
    latency_text_ms: float
    gmacs_image: float
    gmacs_text: float
    imagenet_top1: float | None = None
    avg38: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. ``image_encoder``/``text_encoder`` are architecture names
    (``mci0``..``mci4``, ``vit_b16``, ``vit_base_mci_224``, ``vit_l14``; ``mct``, ``base-512``,
    ``base-768``)."""

    name: str
    image_encoder: str
    text_encoder: str
    embed_dim: int
    image_size: int
    preprocessing: Preprocessing
    published: Published
    causal_text: bool = False
    # The published image tower's projection has a bias: every MobileCLIP2 tower (open_clip
    # ``timm_proj: null`` uses timm's classifier Linear) and the timm-defined S3/S4/L-14; Apple's v1
    # ``head.proj``/``classifier.proj`` have none.
    image_head_bias: bool = False
    context_length: int = 77
    vocab_size: int = 49408
    family: str = "mobileclip"  # "mobileclip" | "mobileclip2"
    display_name: str = ""
    checkpoint_hint: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        pre = dict(d.pop("preprocessing"))
        for k in ("mean", "std", "input_range"):
            if k in pre:
                pre[k] = tuple(float(v) for v in pre[k])
        d["preprocessing"] = Preprocessing(**pre)
        d["published"] = Published(**d.pop("published"))
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)
