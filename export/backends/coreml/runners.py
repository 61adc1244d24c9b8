"""Core ML runners: Apple's runtime on macOS, the NumPy reference executor (``coreml.mil``) elsewhere."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import MissingDependencyError
from mobileclip_export.export.spec import Runner, RuntimeUnavailable

from .options import COMPUTE_UNITS


def load_runner(path: Path, compute_units: str | None) -> Runner:
    """Apple's runtime on macOS; elsewhere the reference executor, probed once so that a program it cannot
    run is reported as unverifiable rather than wrong."""
    if sys.platform == "darwin":
        return _MacRunner(path, compute_units or "all")
    from .mil import (  # our own code: a failing import is a bug, not "unavailable"
        MilExecutorError,
        load_program,
    )

    runner = _ReferenceRunner(path, load_program)
    try:  # a program the executor cannot run (op or flexible-shape gap) is unverified, not wrong
        runner.probe()
    except MilExecutorError as err:
        raise RuntimeUnavailable(
            f"the coreml.mil reference executor cannot run this program ({err}); numeric check needs macOS"
        ) from None
    return runner


class _RowRunner(Runner):
    """Runs a program at the batch sizes it takes (fixed, or each enumerated shape): the rows fed are cut
    into calls of those sizes (the last padded) and the embeddings stacked."""

    def __init__(self, path: Path):
        import coremltools as ct

        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
        f = spec.description.input[0]
        self.path, self.input_name, self.output_name = path, f.name, spec.description.output[0].name
        self.is_image = f.type.WhichOneof("Type") == "imageType"
        array = f.type.multiArrayType
        self.is_text = not self.is_image and array.dataType == type(array).INT32
        # ImageType carries one image; a tensor input's default shape is its first enumerated batch size.
        self.batch = 1 if self.is_image or not array.shape else int(array.shape[0])
        self.sizes: tuple[int, ...] = (self.batch,)
        if not self.is_image and array.WhichOneof("ShapeFlexibility") == "enumeratedShapes":
            self.sizes = tuple(sorted({int(s.shape[0]) for s in array.enumeratedShapes.shapes}))
        if self.is_image:
            self.sample_shape: tuple[int, ...] = (3, f.type.imageType.height, f.type.imageType.width)
        else:
            self.sample_shape = tuple(int(d) for d in array.shape[1:])

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        from mobileclip_export.export.batching import run_chunked

        x = inputs[self.input_name] if self.input_name in inputs else next(iter(inputs.values()))
        return run_chunked(self._run_chunk, np.asarray(x), self.sizes).astype(np.float32)

    def _run_chunk(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _ReferenceRunner(_RowRunner):
    is_deployment_runtime = False

    def __init__(self, path: Path, load_program: Any):
        super().__init__(path)
        self.program = load_program(path)
        self.label = "coreml.mil reference executor (NumPy), not Apple's runtime"

    def probe(self) -> None:
        """Run once on a neutral input of the default shape (raises the executor's error)."""
        shape = (self.batch, *self.sample_shape)
        self._run_chunk(np.zeros(shape, np.int32) if self.is_text else np.full(shape, 0.5, np.float32))

    def _run_chunk(self, x: np.ndarray) -> np.ndarray:
        if self.is_text:
            feed = np.asarray(x, dtype=np.int32)
        else:
            feed = np.asarray(x, dtype=np.float32) * (255.0 if self.is_image else 1.0)
        out = self.program.run({self.input_name: feed})
        return np.asarray(out[self.output_name] if self.output_name in out else next(iter(out.values())))


class _MacRunner(_RowRunner):
    def __init__(self, path: Path, compute_units: str):
        import coremltools as ct

        super().__init__(path)
        self.model = ct.models.MLModel(
            str(path), compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units])
        )
        self.label = f"Core ML (coremltools {ct.__version__}, compute units {compute_units})"
        if self.is_image:
            self.label += "; image fed as 8-bit RGB"
            if importlib.util.find_spec("PIL") is None:  # coremltools takes ImageType inputs as PIL images
                raise MissingDependencyError("running a Core ML image model needs Pillow: pip install pillow")

    def _run_chunk(self, x: np.ndarray) -> np.ndarray:
        if self.is_image:
            from PIL import Image

            # ImageType takes 8-bit pixels: exact when the [0,1] input sits on the 1/255 grid.
            pixels = np.clip(np.rint(x[0].transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
            feed: Any = Image.fromarray(pixels, "RGB")
        else:
            feed = np.asarray(x, dtype=np.int32 if self.is_text else np.float32)
        return np.asarray(self.model.predict({self.input_name: feed})[self.output_name])
