"""``predict``: zero-shot classification and text-to-image retrieval with a bundle's artifacts.

Function API (the ``predict`` subcommand is a thin layer over it)::

    result = predict(bundle_dir, target, images, labels, templates="clip", top_k=5, compare=True)
    result = retrieve(bundle_dir, target, images, queries, compare=True)

Both return a JSON-able dict (``PREDICT_SCHEMA`` / ``RETRIEVE_SCHEMA``), documented in the README:
per image the top-k labels with probabilities (softmax of ``logit_scale * cos`` over the labels), or per
query the images ranked by cosine; with ``compare`` the same from the train-time PyTorch model and the largest
difference. Images go through ``models.preprocess`` (the variant's exact transform).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import UsageError
from mobileclip_export.export.zeroshot import prompts as Z
from mobileclip_export.export.zeroshot.encoders import PYTORCH, BundleInfo, open_encoders, read_bundle_dir

log = logging.getLogger(__name__)

PREDICT_SCHEMA = "mobileclip-export.predict/1"
RETRIEVE_SCHEMA = "mobileclip-export.retrieve/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"folder {str(p)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise UsageError(f"image {str(p)!r} does not exist")
    if not out:
        raise UsageError("no images given; pass --image FILE_OR_FOLDER ...")
    return out


@dataclass
class _Pixels:
    """The images, decoded one batch at a time while they are encoded (the library's streaming path): memory
    holds one batch of pixels plus the [N, D] embeddings, not N decoded images. Reduced S0, 2,000 tiny images:
    peak RSS 3.40 GB when all were decoded first, 0.16 GB streamed (0.16 GB for 1,000)."""

    paths: list[Path]
    pre: Any
    max_pixels: int | None

    def load(self, path: Path) -> np.ndarray:
        from mobileclip_export.models.preprocess import preprocess_image

        return preprocess_image(path, self.pre, max_pixels=self.max_pixels)

    def embed(self, encode_image: Z.EncodeFn) -> np.ndarray:
        from mobileclip_export.export.zeroshot.stream import embed_stream

        parts = [emb for _, emb, _ in embed_stream(encode_image, self.paths, self.load, strict=True)]
        return np.concatenate(parts, axis=0)

    def embed_files(self, runner: Any) -> np.ndarray:
        """The files as the app framework decodes them (``runner.embed_files``), each first checked here
        (readable, within ``max_pixels``) so a bad file fails with the same one line as ours."""
        from mobileclip_export.models.preprocess import load_rgb

        for path in self.paths:
            load_rgb(path, self.max_pixels)
        return np.asarray(runner.embed_files(self.paths), np.float32)


def _pixels(bundle: BundleInfo, images: Sequence[Path], max_pixels: int | None) -> _Pixels:
    from mobileclip_export.models import get_model_spec

    return _Pixels(list(images), get_model_spec(bundle.model).preprocessing, max_pixels)


def _embed(
    bundle: BundleInfo, target: str, precision: str | None, checkpoint: Any, pixels: _Pixels, texts: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(image embeddings, text-side matrix, runtime info); ``texts(encode_text, encode_strings) -> matrix``.
    A runtime that brings an app framework's processor and tokenizer gets the files and the strings."""
    t0 = time.perf_counter()
    enc = open_encoders(bundle, target, precision, checkpoint)
    try:
        app_img, app_txt = enc.app_runner("image"), enc.app_runner("text")
        img = pixels.embed_files(app_img) if app_img else pixels.embed(enc.image)
        txt = texts(enc.text, app_txt.embed_texts if app_txt else None)
    finally:
        enc.close()
    info = {"runtime": enc.label, "precision": enc.precision, "seconds": round(time.perf_counter() - t0, 3)}
    app = app_img or app_txt
    if app is not None:
        info["preprocessing"] = app.app_preprocessing
    return img, txt, info


def _header(bundle: BundleInfo, schema: str, target: str, info: dict[str, Any]) -> dict[str, Any]:
    out = {
        "schema": schema,
        "model": bundle.model,
        "bundle": str(bundle.root),
        "target": target,
        "precision": info["precision"],
        "runtime": info["runtime"],
        "random_init": bool(bundle.manifest.get("random_init", True)),
        "logit_scale": bundle.logit_scale,
    }
    if info.get("preprocessing"):  # the runtime's own processor/tokenizer, not ours: what differs
        out["preprocessing"] = info["preprocessing"]
    return out


def predict(
    bundle_dir: str | Path,
    target: str,
    images: Sequence[str | Path],
    labels: Sequence[str],
    *,
    templates: str | Sequence[str] | None = Z.DEFAULT_TEMPLATES,
    top_k: int = 5,
    precision: str | None = None,
    compare: bool = False,
    checkpoint: str | Path | None = None,
    max_image_pixels: int | None = None,
) -> dict[str, Any]:
    """Zero-shot classification of ``images`` over ``labels`` with ``target``'s artifacts (or ``pytorch``)."""
    if top_k < 1:
        raise UsageError(f"--top-k must be >= 1 (got {top_k})")
    bundle, paths = read_bundle_dir(bundle_dir), collect_images(images)
    labels, temps = Z.parse_labels(list(labels)), Z.resolve_templates(templates)
    ctx = int(bundle.manifest.get("context_length", 77))
    Z.check_prompts(labels, temps, ctx)
    pixels = _pixels(bundle, paths, max_image_pixels)

    def texts(encode: Z.EncodeFn, strings: Any = None) -> np.ndarray:
        return Z.label_embeddings(encode, labels, temps, ctx, strings)

    img, lab, info = _embed(bundle, target, precision, checkpoint, pixels, texts)
    probs = Z.zero_shot_probs(img, lab, bundle.logit_scale)
    k = min(top_k, len(labels))
    out = _header(bundle, PREDICT_SCHEMA, target, info)
    out.update({"labels": labels, "templates": temps, "top_k": k, "seconds": info["seconds"]})
    out["images"] = [
        {"path": str(p), "top": [{"label": lab_, "prob": pr} for lab_, pr in row]}
        for p, row in zip(paths, Z.top_k(probs, labels, k))
    ]
    if compare:
        ref_img, ref_lab, ref_info = _embed(bundle, PYTORCH, None, checkpoint, pixels, texts)
        ref = Z.zero_shot_probs(ref_img, ref_lab, bundle.logit_scale)
        _attach_comparison(out, probs, ref, labels, k, ref_info)
    return out


def _attach_comparison(
    out: dict[str, Any], probs: np.ndarray, ref: np.ndarray, labels: list[str], k: int, info: dict[str, Any]
) -> None:
    diffs = np.abs(probs - ref).max(axis=1)
    same = probs.argmax(axis=1) == ref.argmax(axis=1)
    for item, row, d, s in zip(out["images"], Z.top_k(ref, labels, k), diffs, same):
        item["reference"] = {"top": [{"label": lab, "prob": pr} for lab, pr in row]}
        item["max_prob_diff"], item["same_top1"] = float(d), bool(s)
    out["compare"] = {
        "runtime": info["runtime"],
        "max_prob_diff": float(diffs.max()),
        "top1_agree": int(same.sum()),
        "n_images": len(same),
    }


def retrieve(
    bundle_dir: str | Path,
    target: str,
    images: Sequence[str | Path],
    queries: Sequence[str],
    *,
    top_k: int | None = None,
    precision: str | None = None,
    compare: bool = False,
    checkpoint: str | Path | None = None,
    max_image_pixels: int | None = None,
) -> dict[str, Any]:
    """Rank ``images`` by cosine to each text query (no templates: a query is a full sentence)."""
    bundle, paths = read_bundle_dir(bundle_dir), collect_images(images)
    queries = Z.parse_labels(list(queries))
    ctx = int(bundle.manifest.get("context_length", 77))
    Z.check_prompts(queries, ["{}"], ctx, what="query")
    pixels = _pixels(bundle, paths, max_image_pixels)

    def texts(encode: Z.EncodeFn, strings: Any = None) -> np.ndarray:
        return Z.label_embeddings(encode, queries, ["{}"], ctx, strings)

    img, q, info = _embed(bundle, target, precision, checkpoint, pixels, texts)
    cos = Z.l2_normalize(q) @ Z.l2_normalize(img).T  # [Q, B]
    k = len(paths) if top_k is None else max(1, min(top_k, len(paths)))
    out = _header(bundle, RETRIEVE_SCHEMA, target, info)
    out.update({"seconds": info["seconds"], "queries": _rankings(queries, cos, paths, k)})
    if compare:
        ref_img, ref_q, ref_info = _embed(bundle, PYTORCH, None, checkpoint, pixels, texts)
        ref = Z.l2_normalize(ref_q) @ Z.l2_normalize(ref_img).T
        for item, r_row, row in zip(out["queries"], _rankings(queries, ref, paths, k), cos):
            item["reference"] = r_row["ranking"]
            item["same_order"] = [x["path"] for x in item["ranking"]] == [x["path"] for x in r_row["ranking"]]
        out["compare"] = {"runtime": ref_info["runtime"], "max_cosine_diff": float(np.abs(cos - ref).max())}
    return out


def _rankings(queries: list[str], cos: np.ndarray, paths: list[Path], k: int) -> list[dict[str, Any]]:
    out = []
    for q, row in zip(queries, cos):
        order = np.argsort(-row, kind="stable")[:k]
        out.append({"text": q, "ranking": [{"path": str(paths[j]), "cosine": float(row[j])} for j in order]})
    return out


def _title(doc: dict[str, Any]) -> str:
    weights = "RANDOM weights (scores are not meaningful)" if doc["random_init"] else "checkpoint weights"
    title = f"{doc['model']} | {doc['target']} {doc['precision']} | {doc['runtime']} | {weights}"
    return title + (f"\npreprocessing: {doc['preprocessing']}" if doc.get("preprocessing") else "")


def format_predictions(doc: dict[str, Any]) -> str:
    """The human-readable form of ``predict``'s result: per image its top-k labels."""
    lines = [_title(doc), f"templates: {len(doc['templates'])}, labels: {len(doc['labels'])}"]
    width = max(len(x["label"]) for item in doc["images"] for x in item["top"])
    for item in doc["images"]:
        lines.append(Path(item["path"]).name)
        ref = {x["label"]: x["prob"] for x in item.get("reference", {}).get("top", [])}
        for x in item["top"]:
            extra = f"   pytorch {ref[x['label']]:.4f}" if x["label"] in ref else ""
            lines.append(f"  {x['prob']:.4f}  {x['label']:<{width}}{extra}")
    if "compare" in doc:
        c = doc["compare"]
        lines.append(
            f"compare vs {c['runtime']}: top-1 agrees on {c['top1_agree']}/{c['n_images']} images, "
            f"largest probability difference {c['max_prob_diff']:.2e}"
        )
    return "\n".join(lines)


def format_retrieval(doc: dict[str, Any]) -> str:
    """The human-readable form of ``retrieve``'s result: per query the ranked images."""
    lines = [_title(doc)]
    for q in doc["queries"]:
        lines.append(f"{q['text']!r}")
        for rank, x in enumerate(q["ranking"], 1):
            lines.append(f"  {rank:>3}. {x['cosine']:+.4f}  {x['path']}")
        if "same_order" in q:
            lines.append(f"  same order as pytorch: {'yes' if q['same_order'] else 'NO'}")
    if "compare" in doc:
        lines.append(
            f"compare vs {doc['compare']['runtime']}: largest cosine difference "
            f"{doc['compare']['max_cosine_diff']:.2e}"
        )
    return "\n".join(lines)
