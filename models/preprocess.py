"""The one image preprocessing used by ``predict``, golden vectors and calibration.

Reference: the eval transform of open_clip / Apple's MobileCLIP code, i.e. torchvision on a PIL image:
``Resize(size)`` on the shortest side (torchvision computes the long side as ``int(size * long / short)`` and
calls PIL's antialiased ``Image.resize`` with the variant's filter), ``CenterCrop(crop)`` (offsets
``round((dim - crop) / 2)``, Python's round-half-to-even; zero padding when the image is smaller), then
``ToTensor`` (uint8 -> float / 255). The image is converted to RGB *first*, as Apple's example does
(``Image.open(...).convert("RGB")``): grey is replicated, palette expanded, alpha dropped (the colour under it
is used, as the reference does). Converting first also keeps palette images from being resized with PIL's
forced nearest filter.

Hostile or unusual files (``SUPPORTED_MODES``): an image over ``max_pixels`` (default
``DEFAULT_MAX_IMAGE_PIXELS``) is refused from its header, before it is decoded; 16-bit grey (``I;16*``, and
``I`` within 0..65535) is scaled to 8 bits by 65535 -> 255 (Pillow's own conversion clips it to white); CMYK,
YCbCr, LAB and HSV go through Pillow's conversion; 32-bit float (``F``) has no defined range and is refused.
The EXIF orientation tag is applied (``EXIF_ORIENTATION``), as photo apps do, so a portrait photo stored
sideways is classified upright.

Mean/std is applied only with ``normalize=True``: our image encoders and artifacts apply it themselves.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
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
log = logging.getLogger(__name__)
# 100 megapixels (a medium-format photo, 300 MB as decoded RGB): far above any photo a CLIP model sees at
# 224-256 px, far below what a small "decompression bomb" file claims. --max-image-pixels raises it.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
_OPEN_LOCK = threading.Lock()
EXIF_ORIENTATION = "applied"  # the manifest's preprocessing block and --help say the same
_EIGHT_BIT = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
SUPPORTED_MODES = _EIGHT_BIT + _SIXTEEN_BIT
_RESAMPLE = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST", "lanczos": "LANCZOS"}


def _pil() -> ModuleType:
    try:
        from PIL import Image
    except ImportError as err:
        raise MissingDependencyError(
            f"image loading needs Pillow; install it with: {install_hint(EXTRA)}"
        ) from err
    return Image


def _header(Image: ModuleType, src: str | Path | bytes) -> Image.Image:
    """``Image.open`` (reads the header only) with our limit in place of Pillow's warn-then-raise bomb check;
    the global it lowers is restored under a lock (threads may load images side by side)."""
    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(io.BytesIO(src) if isinstance(src, bytes) else Path(src))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open(src: str | Path | bytes, max_pixels: int) -> Image.Image:
    """Open and decode ``src``, refusing one over ``max_pixels`` from its header (before decoding it)."""
    Image = _pil()
    name = "<bytes>" if isinstance(src, bytes) else repr(str(src))
    try:
        im = _header(Image, src)
        try:
            check_pixel_count(im, max_pixels, name)
        except UsageError:
            im.close()  # a folder of bombs must not pile up open files
            raise
        im.load()
    except FileNotFoundError as err:
        raise UsageError(f"image {str(src)!r} does not exist") from err
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # UnidentifiedImageError: OSError
        raise UsageError(f"image {name} is not a readable image file: {err}") from err
    return im


def check_pixel_count(im: Image.Image, max_pixels: int, name: str) -> None:
    """UsageError naming the image, its size and the flag that raises the limit."""
    if im.width * im.height > max_pixels:
        raise UsageError(
            f"image {name} is {im.width}x{im.height} = {im.width * im.height:,} pixels, over the limit of "
            f"{max_pixels:,} (a decompression bomb or a huge scan?); raise it with --max-image-pixels N"
        )


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """RGB uint8 from any supported mode: 16-bit grey scaled (not clipped), float refused."""
    if im.mode == "RGB":
        return im
    if im.mode in _EIGHT_BIT:
        with warnings.catch_warnings():  # "palette with transparency as bytes": alpha is dropped anyway
            warnings.simplefilter("ignore", UserWarning)
            return im.convert("RGB")
    if im.mode in _SIXTEEN_BIT:
        a = np.asarray(im)  # uint16 (I;16*) or int32 (I)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise UsageError(
                f"image {name}: mode {im.mode} values {a.min()}..{a.max()} are outside 16 bits (0..65535); "
                "save it as an 8- or 16-bit image"
            )
        # 65535 -> 255, 32896 -> 128: v / 257, rounded
        grey = np.round(a.astype(np.float32) * np.float32(255 / 65535)).astype(np.uint8)
        return _pil().fromarray(np.repeat(grey[..., None], 3, axis=2))
    why = "32-bit float pixels have no defined range" if im.mode == "F" else "unsupported image mode"
    raise UsageError(
        f"image {name}: {why} ({im.mode}); save it as 8- or 16-bit RGB or grey "
        f"(supported modes: {', '.join(SUPPORTED_MODES)})"
    )


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1..8); 1 when absent, invalid or unreadable."""
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception as err:  # noqa: BLE001 - a corrupt EXIF block must not block the photo itself
        log.warning("ignoring an unreadable EXIF block: %s", err)
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """HWC pixels as displayed for EXIF ``orientation`` (TIFF 6.0 semantics: where row 0 / column 0 are)."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # rotated 180
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.transpose(1, 0, 2),  # transposed (mirror + rotate 90 counter-clockwise)
        6: lambda a: np.rot90(a, -1),  # stored rotated 90 counter-clockwise: rotate 90 clockwise
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transversed (anti-diagonal)
        8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
    }
    return np.ascontiguousarray(ops[orientation](arr))


def load_rgb(src: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """Open ``src`` (path, encoded bytes or a PIL image) as upright RGB: EXIF orientation applied, any
    supported mode converted. UsageError if unreadable, over ``max_pixels`` or of an unsupported mode."""
    Image = _pil()
    limit = DEFAULT_MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    if limit < 1:
        raise UsageError(f"--max-image-pixels must be >= 1 (got {limit})")
    if isinstance(src, Image.Image):
        im, name = src, "<PIL image>"
        check_pixel_count(im, limit, name)
    else:
        im, name = _open(src, limit), "<bytes>" if isinstance(src, bytes) else repr(str(src))
    orientation = exif_orientation(im)
    rgb = _to_rgb(im, name)
    if orientation == 1:
        return rgb
    return Image.fromarray(apply_orientation(np.asarray(rgb, dtype=np.uint8), orientation))


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


def preprocess_uint8(src: ImageSource, pre: Preprocessing, *, max_pixels: int | None = None) -> np.ndarray:
    """RGB uint8 ``[crop, crop, 3]`` (HWC) after resize and center crop: the pixels before scaling."""
    if pre.resize_mode != "shortest":
        raise UsageError(f"resize mode {pre.resize_mode!r} is not supported (supported: shortest)")
    if pre.interpolation not in _RESAMPLE:
        raise UsageError(f"interpolation {pre.interpolation!r} is not supported ({', '.join(_RESAMPLE)})")
    Image = _pil()
    im = load_rgb(src, max_pixels)
    filt = getattr(Image.Resampling, _RESAMPLE[pre.interpolation])
    im = im.resize(resized_size(im.width, im.height, pre.resize), resample=filt)
    return np.ascontiguousarray(_center_crop(np.asarray(im, dtype=np.uint8), pre.crop))


def preprocess_image(
    src: ImageSource, pre: Preprocessing, *, normalize: bool = False, max_pixels: int | None = None
) -> np.ndarray:
    """float32 ``[3, crop, crop]`` RGB in [0, 1] (``(x - mean) / std`` with ``normalize=True``)."""
    x = preprocess_uint8(src, pre, max_pixels=max_pixels).astype(np.float32).transpose(2, 0, 1)
    x = x / np.float32(255.0)
    if normalize:
        mean = np.asarray(pre.mean, np.float32).reshape(3, 1, 1)
        std = np.asarray(pre.std, np.float32).reshape(3, 1, 1)
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)


def preprocess_batch(
    sources: Sequence[ImageSource],
    pre: Preprocessing,
    *,
    normalize: bool = False,
    max_pixels: int | None = None,
) -> np.ndarray:
    """float32 ``[B, 3, crop, crop]``: ``preprocess_image`` of each source."""
    if not sources:
        raise UsageError("no images given")
    return np.stack([preprocess_image(s, pre, normalize=normalize, max_pixels=max_pixels) for s in sources])
