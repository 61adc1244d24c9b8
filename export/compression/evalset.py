"""The user's own labelled images for the accuracy guard (``--eval-dir``): zero-shot top-1 accuracy of the
fp32 model and of each compressed artifact on them, the drop in points and how often the two agree.

An evaluation folder is an ImageFolder (one sub-folder per class, the folder name is the label) or, with a
labels file, any images under it named by a CSV of ``relative/path,label`` lines. Labels become prompts
through ``export/zeroshot/prompts.py`` (template-averaged label embeddings), images go through
``models/preprocess.py``. Everything read stays inside the folder the user named: a file or sub-folder whose
real path leaves it (a symlink out) is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import UsageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_MAX_DROP = 1.0  # accuracy points an artifact may lose against fp32
_BATCH = 32


@dataclass(frozen=True)
class EvalRequest:
    """What ``--eval-dir`` names, checked without decoding an image: files, their class, the prompts."""

    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...]  # index into classes, per file
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    max_drop: float = DEFAULT_MAX_DROP  # points


def _inside(root: Path, p: Path, what: str) -> Path:
    real = p.resolve()
    if not real.is_relative_to(root):
        raise UsageError(f"{what} {str(p)!r} leads outside the evaluation folder {str(root)!r}; refused")
    return real


def _image_folder(root: Path) -> tuple[list[Path], list[str]]:
    files, names = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        _inside(root, sub, "class folder")
        found = sorted(q for q in sub.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        files += [_inside(root, q, "image") for q in found]
        names += [sub.name] * len(found)
    return files, names


def _labels_csv(root: Path, labels_file: Path) -> tuple[list[Path], list[str]]:
    import csv
    import io

    from mobileclip_export.export.zeroshot.prompts import read_utf8

    files, names = [], []
    rows = csv.reader(io.StringIO(read_utf8(labels_file, "labels file")))
    for n, row in enumerate(rows, 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise UsageError(f"labels file {str(labels_file)!r} line {n}: expected 'relative/path,label'")
        path = _inside(root, root / row[0].strip(), "image")
        if not path.is_file():
            raise UsageError(f"labels file {str(labels_file)!r} line {n}: no image {row[0].strip()!r}")
        files.append(path)
        names.append(row[1].strip())
    return files, names


def eval_request(
    root: str | Path,
    labels_file: str | Path | None = None,
    templates: str | Sequence[str] | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
) -> EvalRequest:
    """Read the folder (and labels file); UsageError for a missing folder, no images, under two classes,
    labels whose prompts collide, or a negative threshold."""
    from mobileclip_export.export.zeroshot.prompts import check_prompts, resolve_templates

    given = Path(root)
    if not given.is_dir():
        raise UsageError(f"--eval-dir {str(given)!r} is not a folder")
    if not max_drop >= 0:
        raise UsageError(f"--max-accuracy-drop must be >= 0 points, got {max_drop}")
    base = given.resolve()
    files, names = _labels_csv(base, Path(labels_file)) if labels_file else _image_folder(base)
    classes = sorted(set(names))
    if len(classes) < 2:
        raise UsageError(
            f"--eval-dir {str(given)!r}: {len(files)} images in {len(classes)} class(es); zero-shot accuracy "
            "needs at least 2 (one sub-folder per class, the folder name is the label, or --eval-labels)"
        )
    tmpl = resolve_templates(templates)
    check_prompts(classes, tmpl, what="class")
    index = {c: i for i, c in enumerate(classes)}
    return EvalRequest(
        given, tuple(files), tuple(index[n] for n in names), tuple(classes), tuple(tmpl), float(max_drop)
    )


@dataclass(frozen=True)
class EvalTask:
    """The decoded images with the fp32 figures an artifact is compared against."""

    request: EvalRequest
    images: np.ndarray  # uint8 [N,3,S,S] (float32 / 255 is the encoder input)
    labels: np.ndarray  # [N] class index
    ids: np.ndarray  # [C*T, L] int32 prompt ids, class-major
    ref_image: np.ndarray  # [N,D] fp32 train-time image embeddings
    ref_text: np.ndarray  # [C*T,D] fp32 train-time prompt embeddings

    @property
    def fp32_top1(self) -> float:
        return float(np.mean(self.predict(self.ref_image, self.ref_text) == self.labels))

    def predict(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Top-1 class per image: cosine with the template-averaged, normalized label embeddings."""
        from mobileclip_export.export.zeroshot.prompts import l2_normalize

        t = l2_normalize(text).reshape(len(self.request.classes), len(self.request.templates), -1)
        return np.argmax(l2_normalize(image) @ l2_normalize(t.mean(axis=1)).T, axis=1)


def embed_batches(embed: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """``embed`` over uint8 images, _BATCH at a time as float32 in [0, 1] (memory: one batch of floats)."""
    parts = [
        np.asarray(embed(images[i : i + _BATCH].astype(np.float32) / np.float32(255.0)), np.float32)
        for i in range(0, len(images), _BATCH)
    ]
    return np.concatenate(parts)


def build_eval_task(req: EvalRequest, train_model: Any, spec: Any) -> EvalTask:
    """Decode every image with the variant's preprocessing and embed images and prompts in fp32."""
    import torch

    from mobileclip_export.export.zeroshot.prompts import prompt
    from mobileclip_export.models.preprocess import preprocess_uint8
    from mobileclip_export.models.tokenizer import tokenize

    pre = spec.preprocessing
    images = np.stack([preprocess_uint8(f, pre).transpose(2, 0, 1) for f in req.files])
    prompts = [prompt(t, c) for c in req.classes for t in req.templates]
    ids = tokenize(prompts, spec.context_length).astype(np.int32)
    with torch.no_grad():
        ref_i = embed_batches(
            lambda x: train_model.image_encoder(torch.from_numpy(x)).float().numpy(), images
        )
        ref_t = train_model.text_encoder(torch.from_numpy(ids)).float().numpy()
    task = EvalTask(req, images, np.asarray(req.labels), ids, ref_i, ref_t)
    log.info(
        "evaluation set %s: %d images, %d classes, fp32 zero-shot top-1 %.2f %%",
        req.root, len(images), len(req.classes), 100 * task.fp32_top1,
    )  # fmt: skip
    return task


def eval_measures(ev: EvalTask, image: np.ndarray | None, text: np.ndarray | None) -> dict[str, Any]:
    """fp32 and artifact top-1 accuracy (percent), the drop in points, and top-1 agreement with fp32, with
    the artifact's ``image`` embeddings of ``ev.images`` or ``text`` embeddings of ``ev.ids``."""
    from mobileclip_export.export.zeroshot.prompts import l2_normalize

    ref = ev.predict(ev.ref_image, ev.ref_text)
    got = ev.predict(ev.ref_image if image is None else image, ev.ref_text if text is None else text)
    fp32, acc = 100 * float(np.mean(ref == ev.labels)), 100 * float(np.mean(got == ev.labels))
    # embedding cosine on the task's own inputs (images, or the class prompts), beside the synthetic parity
    mine, theirs = (image, ev.ref_image) if image is not None else (text, ev.ref_text)
    cos = np.sum(l2_normalize(np.asarray(mine, np.float64)) * l2_normalize(theirs.astype(np.float64)), axis=1)
    return {
        "eval_cosine_mean": round(float(np.mean(cos)), 6),
        "eval_cosine_min": round(float(np.min(cos)), 6),
        "eval_images": int(len(ev.labels)),
        "eval_classes": len(ev.request.classes),
        "eval_fp32_top1": round(fp32, 4),
        "eval_top1": round(acc, 4),
        "eval_drop_points": round(fp32 - acc, 4),
        "eval_top1_agreement": round(float(np.mean(ref == got)), 6),
        "eval_max_drop_points": ev.request.max_drop,
    }


def eval_violations(m: dict[str, Any]) -> list[str]:
    if m["eval_drop_points"] > m["eval_max_drop_points"]:
        return [
            f"zero-shot top-1 on the evaluation images {m['eval_top1']:.2f} % vs fp32 "
            f"{m['eval_fp32_top1']:.2f} %: a drop of {m['eval_drop_points']:.2f} points > "
            f"{m['eval_max_drop_points']:g} allowed (--max-accuracy-drop)"
        ]
    return []
