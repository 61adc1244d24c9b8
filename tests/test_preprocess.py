"""Image preprocessing vs an independent implementation, on the shipped photographs.

The reference decodes with imageio, converts to RGB with NumPy, resizes with torch's antialiased
``F.interpolate`` (the kernel torchvision's tensor ``Resize`` uses, not PIL's) and crops with torchvision's
documented arithmetic (long side ``int(size * long / short)``, offsets ``round((dim - crop) / 2)``).
Measured: worst difference exactly 1/255 for both variants over the 12 photos. A single 2-D float pass
(no 8-bit rounding between the horizontal and vertical passes, unlike PIL) is 7/255 off on 0.06 % of the
bicubic values, where PIL clips the overshoot of its first pass.
"""

from __future__ import annotations

import numpy as np
import pytest

from mobileclip_export.errors import MissingDependencyError, UnknownNameError, UsageError
from mobileclip_export.models import get_model_spec
from mobileclip_export.models.preprocess import preprocess_batch, preprocess_image, preprocess_uint8
from mobileclip_export.models.samples import SAMPLES, load_sample, sample_dir, sample_paths, sample_photos

pytest.importorskip("skimage", reason="sample photographs need the zeroshot extra")
# (variant, size, interpolation): a 256-px bilinear variant and a 224-px bicubic one
VARIANTS = [("mobileclip_s0", 256, "bilinear"), ("mobileclip2_l14", 224, "bicubic")]
WORST: dict[str, float] = {}


def _reference(path, size: int, mode: str) -> np.ndarray:
    import imageio.v3 as iio
    import torch
    import torch.nn.functional as F

    arr = np.asarray(iio.imread(path))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]  # drop alpha, as Image.convert("RGB") does
    h, w = arr.shape[:2]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    y = torch.from_numpy(arr).permute(2, 0, 1)[None].double()
    # Two separable passes, rounded and clipped to 8 bits in between: PIL resamples horizontally into a
    # uint8 image first, which clips bicubic overshoot (up to 5 levels apart from one 2-D float pass).
    for shape in ((h, new_w), (new_h, new_w)):
        y = F.interpolate(y, size=shape, mode=mode, antialias=True, align_corners=False).round().clamp(0, 255)
    y = y[0]
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return (y[:, top : top + size, left : left + size] / 255.0).float().numpy()


@pytest.mark.parametrize("model,size,mode", VARIANTS)
def test_preprocess_matches_independent_reference(model: str, size: int, mode: str) -> None:
    pre = get_model_spec(model).preprocessing
    assert (pre.crop, pre.interpolation) == (size, mode)
    worst = 0.0
    for photo, path in zip(SAMPLES, sample_paths()):
        ours = preprocess_image(path, pre)
        assert ours.shape == (3, size, size) and ours.dtype == np.float32
        assert 0.0 <= ours.min() and ours.max() <= 1.0
        diff = float(np.abs(ours - _reference(path, size, mode)).max())
        worst = max(worst, diff)
        assert diff <= 1 / 255 + 1e-6, f"{photo.name}: max diff {diff * 255:.2f}/255"
    WORST[model] = worst
    print(f"{model} ({mode} {size}): worst per-pixel diff {worst * 255:.3f}/255 over {len(SAMPLES)} photos")


def test_palette_grey_rgba_and_bytes(tmp_path) -> None:
    """Palette files are expanded before resizing (not PIL's forced-nearest palette resize)."""
    pre = get_model_spec("mobileclip_s0").preprocessing
    rgb = load_sample("chelsea").convert("RGB")
    pal = rgb.convert("P", palette=1, colors=256)  # adaptive palette
    pal.save(tmp_path / "pal.png")
    got = preprocess_image(tmp_path / "pal.png", pre)
    assert np.abs(got - preprocess_image(pal.convert("RGB"), pre)).max() == 0.0
    assert np.abs(got - _reference(tmp_path / "pal.png", 256, "bilinear")).max() <= 1 / 255 + 1e-6
    grey = preprocess_uint8(sample_paths(["camera"])[0], pre)
    assert grey.shape == (256, 256, 3) and (grey[..., 0] == grey[..., 2]).all()
    data = sample_paths(["horse"])[0].read_bytes()
    assert np.array_equal(preprocess_image(data, pre), preprocess_image(load_sample("horse"), pre))


def test_normalize_and_batch() -> None:
    pre = get_model_spec("mobileclip2_l14").preprocessing
    paths = sample_paths(["rocket", "page"])
    batch = preprocess_batch(paths, pre)
    assert batch.shape == (2, 3, 224, 224)
    norm = preprocess_image(paths[0], pre, normalize=True)
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    np.testing.assert_allclose(norm, (batch[0] - mean) / std, atol=1e-6)


def test_small_image_is_upscaled_and_cropped_centered() -> None:
    from PIL import Image

    pre = get_model_spec("mobileclip_s0").preprocessing
    im = Image.fromarray(np.full((10, 30, 3), 200, np.uint8))  # 3:1, far below 256 px
    out = preprocess_uint8(im, pre)
    assert out.shape == (256, 256, 3) and (out == 200).all()


def test_bad_inputs(tmp_path) -> None:
    pre = get_model_spec("mobileclip_s0").preprocessing
    with pytest.raises(UsageError, match="does not exist"):
        preprocess_image(tmp_path / "nope.png", pre)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UsageError, match="not a readable image"):
        preprocess_image(tmp_path / "bad.png", pre)
    with pytest.raises(UsageError, match="no images"):
        preprocess_batch([], pre)
    with pytest.raises(UnknownNameError, match="astronaut"):
        sample_photos(["unicorn"])


def test_samples_are_what_the_table_says() -> None:
    from PIL import Image

    assert sample_dir().is_dir()
    for photo, path in zip(SAMPLES, sample_paths()):
        with Image.open(path) as im:
            assert (im.mode, im.size) == (photo.mode, photo.size), photo.name
    modes = {p.mode for p in SAMPLES}
    assert {"RGB", "L", "RGBA"} <= modes
    assert any(p.size[1] > p.size[0] for p in SAMPLES) and any(p.size[0] >= 2 * p.size[1] for p in SAMPLES)


def test_missing_scikit_image_names_the_extra(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "skimage" else real(n, *a))
    with pytest.raises(MissingDependencyError, match=r"mobileclip-export\[zeroshot\]"):
        sample_paths()
