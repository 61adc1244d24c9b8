"""Zero-shot building blocks shared by ``predict`` and classifier artifacts: labels, prompt templates,
template-averaged label embeddings and CLIP scoring (softmax of ``logit_scale * cos``).

CLIP's recipe: embed every prompt ``template.format(label)``, L2-normalize each, average per label and
normalize again. The bundle says which ``logit_scale`` applies (``manifest["logit_scale"]["value"]``).

Labels, templates and their files are user input: files must be UTF-8, a template holds exactly one ``{}``
and no other brace, a prompt over the context length (77 tokens) is named in a warning (the tokenizer cuts
it), and labels whose prompts are token-identical (after lowercasing, cleanup and that cut) are refused like
duplicates: they would get the same embedding and split their probability.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mobileclip_export.errors import UsageError

log = logging.getLogger(__name__)

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
        text = read_utf8(labels_file, "labels file")
        out.extend(line.strip() for line in text.splitlines() if line.strip())
    if not out:
        raise UsageError("no labels given; pass --labels 'a dog,a cat' or --labels-file FILE (one per line)")
    dupes = sorted({x for x in out if out.count(x) > 1})
    if dupes:
        raise UsageError(f"duplicate labels: {', '.join(map(repr, dupes))}")
    return out


def read_utf8(path: str | Path, what: str) -> str:
    """The text of a user's file; UsageError naming the file when it is unreadable or not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        bad = err.object[err.start : err.start + 1].hex()
        raise UsageError(
            f"{what} {str(path)!r} is not UTF-8 text (byte 0x{bad} at offset {err.start}); save it as UTF-8"
        ) from err
    except OSError as err:
        raise UsageError(f"{what} {str(path)!r} is not readable: {err.strerror or err}") from err


def check_template(template: str) -> None:
    """Exactly one ``{}`` and no other brace (``{place}``, a stray ``{``): UsageError naming the template."""
    if template.count("{}") != 1:
        raise UsageError(f"template {template!r} needs exactly one '{{}}' for the label")
    rest = template.replace("{}", "", 1)
    if "{" in rest or "}" in rest:
        raise UsageError(
            f"template {template!r} has a brace besides its one '{{}}' (e.g. '{{place}}' or a stray '{{'); "
            "remove it"
        )


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
        spec = [ln.strip() for ln in read_utf8(path, "templates file").splitlines() if ln.strip()]
    templates = list(spec)
    if not templates:
        raise UsageError("no templates given: each template needs exactly one '{}' for the label")
    for t in templates:
        check_template(t)
    return templates


def prompt(template: str, label: str) -> str:
    """``template`` with its one ``{}`` replaced by ``label`` (braces in a label stay literal)."""
    return template.replace("{}", label, 1)


def check_prompts(
    labels: Sequence[str], templates: Sequence[str], context_length: int = 77, what: str = "label"
) -> None:
    """Warn about prompts the tokenizer truncates; refuse labels whose prompts are token-identical."""
    from mobileclip_export.models.tokenizer import get_tokenizer, tokenize

    tok = get_tokenizer()
    long = {}
    for label in labels:
        n = max(len(tok.encode(prompt(t, label))) + 2 for t in templates)  # + SOT and EOT
        if n > context_length:
            long[label] = n
    for label, n in long.items():
        log.warning(
            "%s %r makes a prompt of %d tokens (with start and end), over the context length of %d: the "
            "tokenizer cuts it and the end of the text is ignored (shorten it)",
            what,
            label if len(label) <= 80 else label[:77] + "...",
            n,
            context_length,
        )
    ids = tokenize([prompt(t, lab) for lab in labels for t in templates], context_length)
    seen: dict[bytes, str] = {}
    for i, label in enumerate(labels):
        key = ids[i * len(templates) : (i + 1) * len(templates)].tobytes()
        if key in seen:
            cut = f" and truncation to {context_length} tokens" if label in long else ""
            raise UsageError(
                f"{what}s {seen[key]!r} and {label!r} are identical after tokenization (lowercasing, cleanup"
                f"{cut}): they would score the same; shorten or distinguish them"
            )
        seen[key] = label


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def label_embeddings(
    encode_text: EncodeFn,
    labels: Sequence[str],
    templates: Sequence[str],
    context_length: int = 77,
    encode_strings: Callable[[list[str]], np.ndarray] | None = None,
) -> np.ndarray:
    """Template-averaged, L2-normalized label embeddings, float32 ``[N, D]`` in label order.
    ``encode_strings``: a runtime that tokenizes itself (an app framework's tokenizer) gets the prompts."""
    from mobileclip_export.models.tokenizer import tokenize

    prompts = [prompt(t, label) for label in labels for t in templates]
    if encode_strings is not None:
        emb = l2_normalize(encode_strings(prompts))
    else:
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
