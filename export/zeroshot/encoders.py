"""Encoders for zero-shot use: a bundle's artifacts run through their target's ``Runner``, or the train-time
PyTorch model the bundle was exported from. Both expose ``image(x)`` / ``text(ids)`` -> float32 ``[B, D]``.

Targets come from the registry (``Target.load``); nothing here names one. Every artifact's sha256 is checked
against the manifest before it is loaded, and a changed artifact is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import IntegrityError, UsageError
from mobileclip_export.export.batching import run_rows, takes_batches
from mobileclip_export.export.bundle.reader import BundleReader, open_bundle
from mobileclip_export.export.spec import Runner, RuntimeUnavailable
from mobileclip_export.export.target import Target

log = logging.getLogger(__name__)

PYTORCH = "pytorch"  # the pseudo-target: the train-time PyTorch model rebuilt from the manifest


@dataclass
class BundleInfo:
    root: Path
    manifest: dict[str, Any]
    torch_model: Any = None  # the train-time model, once built (or given instead of a bundle on disk)
    reader: BundleReader | None = None  # the validated bundle on disk (None for an in-memory model)

    @property
    def model(self) -> str:
        return str(self.manifest.get("model"))

    @property
    def logit_scale(self) -> float:
        return float(self.manifest["logit_scale"]["value"])

    def records(self, target: str, precision: str | None = None) -> dict[str, dict[str, Any]]:
        """encoder ("image" / "text" / "image+text") -> the usable artifact record of ``target``."""
        found: dict[str, dict[str, Any]] = {}
        for rec in self.manifest.get("artifacts", []):
            if rec.get("target") != target or not rec.get("path") or rec.get("status") == "failed":
                continue
            if precision is None or rec.get("precision") == precision:
                found.setdefault(rec["encoder"], rec)
        return found


def read_bundle_dir(path: str | Path | BundleInfo) -> BundleInfo:
    """A bundle folder (with manifest.json) or an output dir holding exactly one bundle, read and validated
    by the bundle reader (paths kept inside it, schema checked)."""
    if isinstance(path, BundleInfo):
        return path
    reader = open_bundle(path)
    if "logit_scale" not in reader.manifest:
        raise IntegrityError(f"{reader.manifest_path}: (top level): missing required key 'logit_scale'")
    return BundleInfo(reader.root, reader.manifest, reader=reader)


def check_artifact_hash(bundle: BundleInfo, rec: Mapping[str, Any]) -> Path:
    """The artifact's path, resolved inside the bundle and sha256-checked against the manifest."""
    if bundle.reader is None:
        raise UsageError("this bundle view has no files on disk (an in-memory model)")
    return bundle.reader.artifact(rec)


class ArtifactEncoders:
    """The image and text artifacts of one target in a bundle, loaded through ``Target.load``."""

    def __init__(
        self,
        bundle: BundleInfo,
        target: str,
        precision: str | None = None,
        need: tuple[str, ...] = ("image", "text"),
    ):
        from mobileclip_export.export.registry import get_target

        t = get_target(target)
        recs = bundle.records(t.name, precision)
        self.runners: dict[str, tuple[Runner, str]] = {}
        self.batched: dict[str, bool] = {}  # encoder -> its artifact takes batches (export/batching.py)
        self.precision = precision
        try:
            for enc in need:
                self._open(bundle, t, recs, enc)
        except BaseException:
            self.close()
            raise
        self.label = next(iter(self.runners.values()))[0].label if self.runners else t.name

    def _open(self, bundle: BundleInfo, t: Target, recs: dict[str, dict[str, Any]], enc: str) -> None:
        rec = recs.get(enc) or recs.get("image+text")
        if rec is None:
            arts = bundle.manifest["artifacts"]
            have = ", ".join(sorted({f"{r['target']}/{r['encoder']}/{r['precision']}" for r in arts}))
            at = f" at {self.precision}" if self.precision else ""
            raise UsageError(f"the bundle has no {enc} artifact for target {t.name!r}{at} (it has: {have})")
        multi = rec["encoder"] == "image+text"  # one multifunction runner fed {"image": x} or {"text": ids}
        shared = next((r for r, _ in self.runners.values()), None) if multi else None
        if shared is None:
            path = check_artifact_hash(bundle, rec)
            try:
                shared = t.load(path, rec.get("options") or {})
            except RuntimeUnavailable as err:
                raise UsageError(f"target {t.name!r} artifacts cannot run on this machine: {err}") from err
        self.runners[enc] = (shared, enc if multi else (rec.get("inputs") or [{"name": enc}])[0]["name"])
        self.batched[enc] = takes_batches(rec)
        self.precision = rec["precision"]

    def app_runner(self, enc: str) -> Runner | None:
        """The runner when it brings the app framework's own image processor / tokenizer, else None."""
        runner = self.runners[enc][0]
        return runner if runner.app_preprocessing else None

    def image(self, x: np.ndarray) -> np.ndarray:
        runner, name = self.runners["image"]
        return run_rows(runner, name, np.asarray(x, np.float32), self.batched["image"])

    def text(self, ids: np.ndarray) -> np.ndarray:
        runner, name = self.runners["text"]
        return run_rows(runner, name, np.asarray(ids, np.int32), self.batched["text"])

    def close(self) -> None:
        for runner in {id(r): r for r, _ in self.runners.values()}.values():
            runner.close()


class TorchEncoders:
    """The train-time PyTorch model, fp32 eager (the reference every artifact is verified against)."""

    label = "torch (train-time, eager)"
    precision = "fp32"

    def __init__(self, model: Any):
        self.model = model.eval()

    def _run(self, module: Any, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()

    def app_runner(self, enc: str) -> Runner | None:
        return None

    def image(self, x: np.ndarray) -> np.ndarray:
        return self._run(self.model.image_encoder, np.asarray(x, np.float32))

    def text(self, ids: np.ndarray) -> np.ndarray:
        return self._run(self.model.text_encoder, np.asarray(ids, np.int32))

    def close(self) -> None:
        pass


def train_time_model(bundle: BundleInfo, checkpoint: str | Path | None = None) -> Any:
    """The model a bundle came from: same variant, size, seed or checkpoint (sha256-checked); train-time form
    unless the checkpoint is our fully fused one."""
    from mobileclip_export.reparam import create_model

    if bundle.torch_model is not None:
        return bundle.torch_model
    args, weights = bundle.manifest.get("export_args", {}), bundle.manifest.get("weights", {})
    model_name, reduced, seed = bundle.model, bool(args.get("reduced", False)), int(args.get("seed", 0))
    if weights.get("random_init", True):
        return create_model(model_name, None, seed=int(weights.get("seed", seed)), reduced=reduced)
    ckpt = checkpoint  # only the user's: a path in the manifest must not choose what we read
    if not ckpt or not Path(ckpt).is_file():
        raise UsageError(
            f"the bundle was exported from checkpoint {weights.get('checkpoint')!r}; pass --checkpoint PATH "
            "to rebuild the PyTorch model"
        )
    model = create_model(model_name, ckpt, seed=seed, reduced=reduced)
    if weights.get("sha256") and model.checkpoint_sha256 != weights["sha256"]:
        raise UsageError(f"checkpoint {str(ckpt)!r} is not the one the bundle came from (sha256 differs)")
    return model


def open_encoders(
    bundle: BundleInfo,
    target: str,
    precision: str | None = None,
    checkpoint: str | Path | None = None,
    need: tuple[str, ...] = ("image", "text"),
) -> ArtifactEncoders | TorchEncoders:
    if target == PYTORCH:
        bundle.torch_model = train_time_model(bundle, checkpoint)
        return TorchEncoders(bundle.torch_model)
    return ArtifactEncoders(bundle, target, precision, need)


def model_bundle(model: Any) -> BundleInfo:
    """A bundle-shaped view of an in-memory train-time model, for ``pytorch`` without exporting anything."""
    import math

    from mobileclip_export.models.clip import LOGIT_SCALE_MAX

    raw = float(model.logit_scale.detach())
    manifest = {
        "model": model.spec.name,
        "random_init": bool(model.random_init),
        "context_length": int(model.context_length),
        "logit_scale": {"log": raw, "value": min(math.exp(raw), LOGIT_SCALE_MAX)},
        "artifacts": [],
    }
    return BundleInfo(Path("."), manifest, torch_model=model)
