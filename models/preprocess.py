"""The one image preprocessing used by ``predict``, golden vectors and calibration.

Reference: the eval transform of open_clip / Apple's MobileCLIP code, i.e. torchvision on a PIL image:
``Resize(size)`` on the shortest side (torchvision computes the long side as ``int(size * long / short)`` and
calls PIL's antialiased ``Image.resize`` with the variant's filter), ``CenterCrop(crop)`` (offsets
``round((dim - crop) / 2)``, Python's round-half-to-even; zero padding when the image is smaller), then
``ToTensor`` (uint8 -> float / 255). The image is converted to RGB *first*, as Apple's example does
(``Image.open(...).convert("RGB")``): grey is replicated, palette expanded, alpha dropped. Converting first
also keeps palette images from being resized with PIL's forced nearest filter.

Mean/std is applied only with ``normalize=True``: our image encoders and artifacts apply it themselves.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Union

import numpy as np

from mobileclip_export.errors import MissingDependencyError, UsageError, install_hint
from mobileclip_export.models.spec import Preprocessing

if TYPE_CHECKING:
    from PIL import Image

ImageSource = Union[str, Path, bytes, "Image.Image"]
EXTRA = "zeroshot"
_RESAMPLE = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST", "lanczos": "LANCZOS"}


def _pil() -> ModuleType:
    try:
        from PIL import Image
    except ImportError as err:
        raise MissingDependencyError(
            f"image loading needs Pillow; install it with: {install_hint(EXTRA)}"
        ) from err
    return Image


def load_rgb(src: ImageSource) -> Image.Image:
    """Open ``src`` (path, encoded bytes or a PIL image) and convert it to RGB. UsageError if unreadable."""
    Image = _pil()
    if isinstance(src, Image.Image):
        im = src
    else:
        try:
            im = Image.open(io.BytesIO(src) if isinstance(src, bytes) else Path(src))
            im.load()
        except FileNotFoundError as err:
            raise UsageError(f"image {str(src)!r} does not exist") from err
        except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
            name = "<bytes>" if isinstance(src, bytes) else repr(str(src))
            raise UsageError(f"image {name} is not a readable image file: {err}") from err
    return im if im.mode == "RGB" else im.convert("RGB")


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shortest side resized to ``size``, the long side truncated (torchvision)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _center_crop(arr: np.ndarray, crop: int) -> np.ndarray:
    """Center crop of an HWC array, zero-padding a side shorter than ``crop`` first."""
    h, w = arr.shape[:2]
    if h < crop or w < crop:
        ph, pw = max(crop - h, 0), max(crop - w, 0)
        arr = np.pad(arr, ((ph // 2, (ph + 1) // 2), (pw // 2, (pw + 1) // 2), (0, 0)))
        h, w = arr.shape[:2]
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return arr[top : top + crop, left : left + crop]


def preprocess_uint8(src: ImageSource, pre: Preprocessing) -> np.ndarray:
    """RGB uint8 ``[crop, crop, 3]`` (HWC) after resize and center crop: the pixels before scaling."""
    if pre.resize_mode != "shortest":
        raise UsageError(f"resize mode {pre.resize_mode!r} is not supported (supported: shortest)")
    if pre.interpolation not in _RESAMPLE:
        raise UsageError(f"interpolation {pre.interpolation!r} is not supported ({', '.join(_RESAMPLE)})")
    Image = _pil()
    im = load_rgb(src)
    filt = getattr(Image.Resampling, _RESAMPLE[pre.interpolation])
    im = im.resize(resized_size(im.width, im.height, pre.resize), resample=filt)
    return np.ascontiguousarray(_center_crop(np.asarray(im, dtype=np.uint8), pre.crop))


def preprocess_image(src: ImageSource, pre: Preprocessing, *, normalize: bool = False) -> np.ndarray:
    """float32 ``[3, crop, crop]`` RGB in [0, 1] (``(x - mean) / std`` with ``normalize=True``)."""
    x = preprocess_uint8(src, pre).astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
    if normalize:
        mean = np.asarray(pre.mean, np.float32).reshape(3, 1, 1)
        std = np.asarray(pre.std, np.float32).reshape(3, 1, 1)
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)


def preprocess_batch(
    sources: Sequence[ImageSource], pre: Preprocessing, *, normalize: bool = False
) -> np.ndarray:
    """float32 ``[B, 3, crop, crop]``: ``preprocess_image`` of each source."""
    if not sources:
        raise UsageError("no images given")
    return np.stack([preprocess_image(s, pre, normalize=normalize) for s in sources])
