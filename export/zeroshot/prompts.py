"""Zero-shot building blocks shared by ``predict`` and classifier artifacts: labels, prompt templates,
template-averaged label embeddings and CLIP scoring (softmax of ``logit_scale * cos``).

CLIP's recipe: embed every prompt ``template.format(label)``, L2-normalize each, average per label and
normalize again. The bundle says which ``logit_scale`` applies (``manifest["logit_scale"]["value"]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mobileclip_export.errors import UsageError

# The seven templates CLIP's ImageNet prompt-engineering notebook selected as its best small ensemble.
CLIP_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "clip": CLIP_TEMPLATES,
    "photo": ("a photo of a {}.",),
    "none": ("{}",),
}
DEFAULT_TEMPLATES = "clip"

EncodeFn = Callable[[np.ndarray], np.ndarray]  # int32 ids [B, 77] -> float32 embeddings [B, D]


def parse_labels(
    labels: str | Sequence[str] | None = None, labels_file: str | Path | None = None
) -> list[str]:
    """Labels from a comma-separated string / list and/or a file (one per line, blank lines skipped)."""
    out: list[str] = []
    if labels is not None:
        items = labels.split(",") if isinstance(labels, str) else list(labels)
        out.extend(s.strip() for s in items if s.strip())
    if labels_file is not None:
        path = Path(labels_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"labels file {str(path)!r} is not readable: {err}") from err
        out.extend(line.strip() for line in text.splitlines() if line.strip())
    if not out:
        raise UsageError("no labels given; pass --labels 'a dog,a cat' or --labels-file FILE (one per line)")
    dupes = sorted({x for x in out if out.count(x) > 1})
    if dupes:
        raise UsageError(f"duplicate labels: {', '.join(map(repr, dupes))}")
    return out


def resolve_templates(spec: str | Sequence[str] | None = None) -> list[str]:
    """A named set (clip, photo, none), a file with one ``{}`` template per line, or a list of templates."""
    if spec is None:
        spec = DEFAULT_TEMPLATES
    if isinstance(spec, str):
        if spec in TEMPLATE_SETS:
            return list(TEMPLATE_SETS[spec])
        path = Path(spec)
        if not path.is_file():
            raise UsageError(
                f"templates {spec!r}: not a template set ({', '.join(TEMPLATE_SETS)}) nor a file of templates"
            )
        spec = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    templates = list(spec)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise UsageError(f"each template needs exactly one '{{}}' for the label; bad: {bad or 'none given'}")
    return templates


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def label_embeddings(
    encode_text: EncodeFn, labels: Sequence[str], templates: Sequence[str], context_length: int = 77
) -> np.ndarray:
    """Template-averaged, L2-normalized label embeddings, float32 ``[N, D]`` in label order."""
    from mobileclip_export.models.tokenizer import tokenize

    prompts = [t.format(label) for label in labels for t in templates]
    emb = l2_normalize(encode_text(tokenize(prompts, context_length).astype(np.int32)))
    per_label = emb.reshape(len(labels), len(templates), -1).mean(axis=1)
    return l2_normalize(per_label).astype(np.float32)


def zero_shot_probs(image_emb: np.ndarray, label_emb: np.ndarray, logit_scale: float) -> np.ndarray:
    """softmax(logit_scale * cos) over labels, float64 ``[B, N]``."""
    logits = float(logit_scale) * l2_normalize(image_emb) @ l2_normalize(label_emb).T
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row the ``k`` most probable labels (stable order for ties: label order)."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]
