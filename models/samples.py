"""Real photographs for tests, examples and calibration: the sample images inside scikit-image's wheel.

They ship in the installed package (``skimage/data/``), so nothing is downloaded at run time; only the files
listed here are used (scikit-image fetches its other samples with pooch, which we never call). The set mixes
sizes, aspect ratios (landscape, portrait, square, 2:1), JPEG and PNG, RGB, greyscale and RGBA.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mobileclip_export.errors import MissingDependencyError, UnknownNameError, install_hint

if TYPE_CHECKING:
    from PIL import Image

EXTRA = "zeroshot"


@dataclass(frozen=True)
class SamplePhoto:
    name: str
    file: str
    mode: str  # Pillow mode of the file as stored
    size: tuple[int, int]  # (width, height) as stored
    subject: str  # what it shows, a usable zero-shot label


SAMPLES: tuple[SamplePhoto, ...] = (
    SamplePhoto("astronaut", "astronaut.png", "RGB", (512, 512), "an astronaut"),
    SamplePhoto("chelsea", "chelsea.png", "RGB", (451, 300), "a cat"),
    SamplePhoto("coffee", "coffee.png", "RGB", (600, 400), "a cup of coffee"),
    SamplePhoto("rocket", "rocket.jpg", "RGB", (640, 427), "a rocket"),
    SamplePhoto("motorcycle", "motorcycle_left.png", "RGB", (741, 500), "a motorcycle"),
    SamplePhoto("hubble", "hubble_deep_field.jpg", "RGB", (1000, 872), "galaxies in deep space"),
    SamplePhoto("camera", "camera.png", "L", (512, 512), "a man with a camera"),
    SamplePhoto("coins", "coins.png", "L", (384, 303), "coins"),
    SamplePhoto("cell", "cell.png", "L", (550, 660), "a cell under a microscope"),
    SamplePhoto("page", "page.png", "L", (384, 191), "a page of text"),
    SamplePhoto("horse", "horse.png", "RGBA", (400, 328), "a horse"),
    SamplePhoto("logo", "logo.png", "RGBA", (500, 500), "a logo"),
)
_BY_NAME = {s.name: s for s in SAMPLES}


def sample_dir() -> Path:
    """The folder holding the photographs; MissingDependencyError names the extra when it is absent."""
    spec = importlib.util.find_spec("skimage")  # locate without importing scikit-image itself
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the sample photographs ship inside scikit-image, which is not installed; "
            f"install it with: {install_hint(EXTRA)}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def sample_photos(names: list[str] | tuple[str, ...] | None = None) -> list[SamplePhoto]:
    """The samples called ``names`` (all when None), in the given order."""
    if names is None:
        return list(SAMPLES)
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown:
        raise UnknownNameError("sample photo", unknown[0], list(_BY_NAME))
    return [_BY_NAME[n] for n in names]


def sample_paths(names: list[str] | tuple[str, ...] | None = None) -> list[Path]:
    """Paths of the sample files; raises MissingDependencyError if one is missing from the installation."""
    folder = sample_dir()
    paths = [folder / s.file for s in sample_photos(names)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise MissingDependencyError(
            f"sample photographs {', '.join(missing)} are missing from {folder}; reinstall with: "
            f"pip install --force-reinstall 'mobileclip-export[{EXTRA}]'"
        )
    return paths


def load_sample(name: str) -> Image.Image:
    """One sample as a Pillow image in its stored mode (use ``models.preprocess`` to feed a model)."""
    from PIL import Image

    (path,) = sample_paths([name])
    with Image.open(path) as im:
        im.load()
        return im
