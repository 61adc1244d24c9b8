"""Memory and time a cell is expected to take, so the local pool and Ray can place it.

Memory: the worker's fixed cost (interpreter, torch, a converter) plus a multiple of the fp32 weights
(train-time model + reparameterized copy + the converter's graph copies). Time: a fixed cost plus seconds per
million parameters; the rate is re-fitted from the export seconds of cells already in the store
(``calibrate``), so estimates follow this machine's measured export times instead of a guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

BASE_BYTES = 1_500 * 2**20  # a worker with torch and one converter loaded, no model (measured ~1.2-1.5 GB)
WEIGHT_COPIES = 8  # fp32 weights x copies alive at the peak of a conversion (model, reparam copy, graphs)
BASE_SECONDS = 8.0  # process start + imports + verification of a tiny model
DEFAULT_SECONDS_PER_MPARAM = 0.6  # until cells in the store say otherwise


@dataclass(frozen=True)
class Estimate:
    memory_bytes: int
    seconds: float


def estimate(mparams: float, seconds_per_mparam: float = DEFAULT_SECONDS_PER_MPARAM) -> Estimate:
    weights = int(mparams * 1e6 * 4)
    return Estimate(BASE_BYTES + WEIGHT_COPIES * weights, BASE_SECONDS + seconds_per_mparam * mparams)


def calibrate(samples: Iterable[tuple[float, float]]) -> float:
    """Seconds per million parameters from (mparams, export seconds) of finished cells: total time above the
    fixed cost over total parameters, so large cells (the ones worth placing well) dominate the fit."""
    pairs = [(m, s) for m, s in samples if m > 0]
    total = sum(m for m, _ in pairs)
    return sum(max(s - BASE_SECONDS, 0.0) for _, s in pairs) / total if total else DEFAULT_SECONDS_PER_MPARAM
