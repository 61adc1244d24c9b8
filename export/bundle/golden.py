"""Golden vectors in the bundle (``golden/``): inputs with the exact tensors and embeddings an app must get.

For each image: the source picture (a scikit-image sample photograph, or a generated structured image),
the resized + center-cropped RGB pixels (``uint8 [H, W, 3]``, what a uint8 NHWC input takes) and the float
tensor ``float32 [1, 3, H, W]`` = pixels / 255 (what the default input takes), as raw little-endian files
any platform reads without a library. For each text: its token ids. ``golden/index.json`` holds the
train-time PyTorch embedding of every input and, per artifact, the embedding that artifact produced in the
runtime that verified it, with the tolerance (from the one table) an on-device test should apply.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from mobileclip_export.errors import MissingDependencyError
from mobileclip_export.export.bundle.layout import write_json_atomic
from mobileclip_export.export.bundle.reader import resolve_inside
from mobileclip_export.export.parity import compare
from mobileclip_export.export.tolerances import tolerance_for

log = logging.getLogger(__name__)

GOLDEN_DIR = "golden"
INDEX = f"{GOLDEN_DIR}/index.json"
SCHEMA_VERSION = 1
NATURAL = ("chelsea", "astronaut")  # a cat and a person: landscape and square sources
TEXTS = ("a photo of a cat", "a diagram", "a photo of an astronaut")


@dataclass
class GoldenImage:
    name: str
    kind: str  # "structured" | "natural"
    pixels: np.ndarray  # uint8 [H, W, 3] after resize + center crop
    source: Path | None = None  # original file (natural images)

    @property
    def tensor(self) -> np.ndarray:
        """float32 [1, 3, H, W] in [0, 1]: the default image input."""
        return (self.pixels.astype(np.float32).transpose(2, 0, 1)[None] / np.float32(255.0)).copy()


def structured_images(size: int) -> list[GoldenImage]:
    """A colour gradient and a checkerboard (flat regions and sharp edges), exact in uint8."""
    ramp = np.linspace(0, 255, size).round().astype(np.uint8)
    across, down = np.broadcast_to(ramp, (size, size)), np.broadcast_to(ramp[:, None], (size, size))
    grad = np.ascontiguousarray(np.stack([across, down, 255 - across], axis=-1))
    yy, xx = np.mgrid[0:size, 0:size]
    check = ((yy // 16 + xx // 16) % 2 * 255).astype(np.uint8)
    board = np.stack([check, 255 - check, np.full_like(check, 128)], axis=-1)
    return [GoldenImage("gradient", "structured", grad), GoldenImage("checkerboard", "structured", board)]


def natural_images(preprocessing: Any, names: Sequence[str] = NATURAL) -> list[GoldenImage]:
    """Sample photographs through the one exact preprocessing; [] (logged) without scikit-image/Pillow."""
    from mobileclip_export.models.preprocess import preprocess_uint8
    from mobileclip_export.models.samples import sample_paths

    try:
        paths = sample_paths(list(names))
        return [
            GoldenImage(n, "natural", preprocess_uint8(p, preprocessing), p) for n, p in zip(names, paths)
        ]
    except MissingDependencyError as err:
        log.warning("golden vectors without photographs: %s", err)
        return []


def golden_images(preprocessing: Any) -> list[GoldenImage]:
    return structured_images(preprocessing.crop) + natural_images(preprocessing)


def _floats(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(x, np.float32).reshape(-1)]


def _write_image_files(root: Path, img: GoldenImage) -> dict[str, Any]:
    folder = root / GOLDEN_DIR
    folder.mkdir(exist_ok=True)
    entry: dict[str, Any] = {"name": img.name, "kind": img.kind}
    if img.source is not None:
        src = f"{GOLDEN_DIR}/{img.name}{img.source.suffix}"
        shutil.copyfile(img.source, root / src)
        entry["source"] = src
    (folder / f"{img.name}.rgb-u8.bin").write_bytes(img.pixels.tobytes())
    (folder / f"{img.name}.nchw-f32.bin").write_bytes(img.tensor.astype("<f4").tobytes())
    h, w, _ = img.pixels.shape
    entry["pixels"] = {"file": f"{GOLDEN_DIR}/{img.name}.rgb-u8.bin", "dtype": "uint8", "shape": [h, w, 3],
                       "layout": "HWC RGB, resized + center-cropped, row-major"}  # fmt: skip
    entry["tensor"] = {"file": f"{GOLDEN_DIR}/{img.name}.nchw-f32.bin", "dtype": "float32 little-endian",
                       "shape": [1, 3, h, w], "layout": "NCHW RGB in [0, 1] = pixels / 255"}  # fmt: skip
    return entry


def golden_index(
    root: Path,
    images: Sequence[GoldenImage],
    texts: Sequence[str],
    ids: np.ndarray,
    references: Mapping[str, np.ndarray],
    artifacts: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Write the image files under ``root/golden`` and return the index (written by ``write_golden``).

    ``references``: {"image": [N, D], "text": [M, D]} train-time PyTorch embeddings. ``artifacts``: per
    artifact path, {"encoder", "target", "precision", "runtime", "embeddings": [N or M, D] | None, "note"}.
    """
    entries = {"image": [_write_image_files(root, img) for img in images], "text": []}
    for i, text in enumerate(texts):
        entries["text"].append({"text": text, "ids": [int(v) for v in ids[i]]})
    for enc, rows in entries.items():
        for i, row in enumerate(rows):
            row["reference_embedding"] = _floats(references[enc][i]) if enc in references else None
            row["artifacts"] = {}
            for path, art in artifacts.items():
                if art["encoder"] == enc and art.get("embeddings") is not None:
                    row["artifacts"][path] = _floats(art["embeddings"][i])
    runs = {
        path: {k: v for k, v in art.items() if k != "embeddings"}
        | {"tolerance": asdict(tolerance_for(art["precision"]))}
        for path, art in artifacts.items()
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "embedding": "unnormalized; compare by cosine, max|diff| relative to max|reference|, PSNR",
        "reference": "train-time PyTorch model, fp32",
        "reference_tolerance": "each artifact's tolerance applies against reference_embedding too",
        "images": entries["image"],
        "texts": entries["text"],
        "artifacts": runs,
    }


def _run_artifact(root: Path, rec: Any, enc: str, inputs: list[np.ndarray]) -> dict[str, Any]:
    """Embeddings of ``inputs`` (one at a time) from the artifact of ``rec`` in its runtime here."""
    from mobileclip_export.export.registry import get_target
    from mobileclip_export.export.spec import RuntimeUnavailable

    art: dict[str, Any] = {"encoder": enc, "target": rec.target, "precision": rec.precision}
    options = rec.options or {}
    name = rec.inputs[0]["name"] if "+" not in rec.encoder and rec.inputs else enc
    path = resolve_inside(root, rec.path, f"artifact {rec.path!r}")
    try:
        runner = get_target(rec.target).load(path, options)
    except RuntimeUnavailable as err:
        return art | {"runtime": None, "embeddings": None, "note": f"no embeddings: {err}"}
    cap = runner.max_verify_inputs
    if cap is not None and cap < len(inputs):  # a reference runtime (seconds per input): verified on a subset
        runner.close()
        return art | {"runtime": None, "embeddings": None, "note": _reference_note(runner.label, cap)}
    try:
        rows = [np.asarray(runner.run({name: x}), np.float32).reshape(-1) for x in inputs]
    finally:
        runner.close()
    return art | {"runtime": runner.label, "deployment_runtime": runner.is_deployment_runtime,
                  "input": name, "embeddings": np.stack(rows)}  # fmt: skip


@dataclass
class GoldenInputs:
    """The golden inputs of one model and the train-time model's embeddings of them, built once per export:
    verification runs them through each artifact while its runtime is loaded, the golden stage writes them."""

    images: list[GoldenImage]
    texts: tuple[str, ...]
    ids: np.ndarray  # int32 [M, context_length]
    feeds: dict[str, list[np.ndarray]]  # encoder -> one default-layout input per row
    references: dict[str, np.ndarray]  # encoder -> [N or M, D] train-time embeddings


def golden_inputs(model: Any, preprocessing: Any, context_length: int) -> GoldenInputs:
    """The golden images and texts, and the train-time ``model``'s embeddings of them (row by row)."""
    import torch

    from mobileclip_export.models.tokenizer import tokenize

    images = golden_images(preprocessing)
    ids = tokenize(list(TEXTS), context_length)
    feeds = {"image": [img.tensor for img in images], "text": [ids[i : i + 1] for i in range(len(TEXTS))]}
    refs = {}
    with torch.no_grad():
        for enc, module in (("image", model.image_encoder), ("text", model.text_encoder)):
            refs[enc] = np.concatenate([module(torch.from_numpy(x)).float().numpy() for x in feeds[enc]])
    return GoldenInputs(images, TEXTS, ids, feeds, refs)


def _artifact_embeddings(root: Path, rec: Any, enc: str, inputs: GoldenInputs) -> dict[str, Any]:
    """The run verification recorded for this artifact and encoder (``rec.golden``), else a run here now
    (records carried over from an earlier export, or re-exported after verification)."""
    ran = (getattr(rec, "golden", None) or {}).get(enc)
    if ran is None:
        return _run_artifact(root, rec, enc, inputs.feeds[enc])
    return {"encoder": enc, "target": rec.target, "precision": rec.precision} | ran


def write_golden(root: Path, records: Sequence[Any], inputs: GoldenInputs) -> dict[str, Any]:
    """Golden inputs, the train-time embeddings and each artifact's, written into ``root``.

    ``records``: the bundle's artifact records (ArtifactRecord); failed ones are skipped.
    """
    refs = inputs.references
    artifacts = {}
    for rec in records:
        if rec.ok and rec.path:
            for enc in rec.encoder.split("+"):
                if enc not in inputs.feeds:  # classifier artifacts: their own stage checks their logits
                    continue
                key = rec.path if "+" not in rec.encoder else f"{rec.path}#{enc}"
                art = artifacts[key] = _artifact_embeddings(root, rec, enc, inputs)
                if art["embeddings"] is not None:
                    stats = compare(refs[enc], art["embeddings"])
                    art["parity"] = stats.to_dict()
                    bad = stats.violations(tolerance_for(rec.precision))
                    if bad:  # verification passed on other inputs; say so loudly rather than drop it
                        log.warning("golden %s of %s: %s", enc, rec.path, "; ".join(bad))
                        art["violations"] = bad
    index = golden_index(root, inputs.images, inputs.texts, inputs.ids, refs, artifacts)
    write_json_atomic(root / INDEX, index)
    return index


def embeddings_while_loaded(runner: Any, input_name: str, feeds: Sequence[np.ndarray]) -> dict[str, Any]:
    """What ``_run_artifact`` would record, from a runner verification already loaded (no second load)."""
    cap = runner.max_verify_inputs
    if cap is not None and cap < len(feeds):
        return {"runtime": None, "embeddings": None, "note": _reference_note(runner.label, cap)}
    rows = [np.asarray(runner.run({input_name: x}), np.float32).reshape(-1) for x in feeds]
    return {"runtime": runner.label, "deployment_runtime": runner.is_deployment_runtime,
            "input": input_name, "embeddings": np.stack(rows)}  # fmt: skip


def _reference_note(label: str, cap: int) -> str:
    return (f"no embeddings: {label} is a reference runtime here (verification ran {cap} inputs); "
            "compare with reference_embedding within this artifact's tolerance")  # fmt: skip


def load_inputs(root: Path, index: dict[str, Any]) -> dict[str, list[np.ndarray]]:
    """The golden inputs as the default artifact inputs, read back from the bundle's files."""
    images = []
    for i, img in enumerate(index["images"]):
        t = img["tensor"]
        path = resolve_inside(root, t["file"], f"{INDEX}: images[{i}].tensor.file")
        images.append(np.frombuffer(path.read_bytes(), "<f4").reshape(t["shape"]).copy())
    texts = [np.asarray([t["ids"]], np.int32) for t in index["texts"]]
    return {"image": images, "text": texts}


def stored_embeddings(index: dict[str, Any], enc: str, key: str | None) -> np.ndarray:
    """``[N, D]``: the artifact ``key``'s stored embeddings (``key=None``: the PyTorch reference)."""
    rows = index["images" if enc == "image" else "texts"]
    return np.asarray([r["reference_embedding"] if key is None else r["artifacts"][key] for r in rows])


def recheck(
    root: Path, manifest: dict[str, Any], skip: set[str] | frozenset[str] = frozenset()
) -> dict[str, dict[str, Any]]:
    """Re-run every golden input through the artifact that wrote its embedding, here.

    Returns per index key: {"status": "passed"|"failed"|"skipped", "runtime", "vs_stored", "vs_reference",
    "problems"}; the tolerance is the one stored in the index for that artifact. Paths in ``skip`` (e.g.
    altered files) are not loaded.
    """
    from mobileclip_export.export.parity import Tolerance

    index = json.loads(resolve_inside(root, INDEX, "golden index").read_text("utf-8"))
    inputs = load_inputs(root, index)
    records = {a["path"]: a for a in manifest.get("artifacts", []) if a.get("path")}
    out = {}
    for key, art in index["artifacts"].items():
        path = key.split("#")[0]
        rec = records.get(path)
        if path in skip:
            out[key] = {"status": "skipped", "problems": [], "note": "file altered: not run"}
            continue
        if rec is None or art.get("runtime") is None:
            out[key] = {"status": "skipped", "problems": [], "note": art.get("note", "not in the manifest")}
            continue
        got = _run_artifact(root, SimpleNamespace(**rec), art["encoder"], inputs[art["encoder"]])
        if got["embeddings"] is None:
            out[key] = {"status": "skipped", "problems": [], "note": got["note"]}
            continue
        tol = Tolerance(**art["tolerance"])
        res: dict[str, Any] = {"runtime": got["runtime"], "problems": []}
        for label, ref_key in (("vs_stored", key), ("vs_reference", None)):
            stats = compare(stored_embeddings(index, art["encoder"], ref_key), got["embeddings"])
            res[label] = stats.to_dict()
            res["problems"] += [f"{label}: {v}" for v in stats.violations(tol)]
        res["status"] = "failed" if res["problems"] else "passed"
        out[key] = res
    return out
