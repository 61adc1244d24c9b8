"""The bundle's model card (``README.md`` at its root): Hugging Face front matter, random-weights warning,
artifact table, exact preprocessing, tokenizer facts, golden vectors, and one section per target written by
the target itself (``Target.card_section``) with the bundle's own file and tensor names."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CARD = "README.md"
WEIGHTS_LICENSE = "apple-amlr"  # Apple ML Research Model terms of use, as Apple's checkpoint cards state


def _front_matter(manifest: dict[str, Any]) -> str:
    spec = manifest.get("spec", {})
    hint = str(spec.get("checkpoint_hint", "")).split(" ")[0]
    random_init = bool(manifest.get("random_init"))
    targets = sorted({a["target"] for a in manifest.get("artifacts", []) if a.get("path")})
    lines = ["---", f"license: {'mit' if random_init else WEIGHTS_LICENSE}"]
    if "/" in hint:
        lines.append(f"base_model: {hint}")
    lines += ["library_name: mobileclip-export", "pipeline_tag: zero-shot-image-classification", "tags:"]
    lines += [f"  - {t}" for t in ["mobileclip", "clip", spec.get("family", "mobileclip"), *targets]]
    return "\n".join(dict.fromkeys(lines)) + "\n---\n"


def _weights(manifest: dict[str, Any]) -> str:
    w = manifest.get("weights", {})
    if manifest.get("random_init"):
        return (
            f"> **Warning: RANDOM weights** ({w.get('source')}). These artifacts are valid for size, latency "
            "and app plumbing only, NOT for accuracy. Export with `--checkpoint` for real weights.\n"
        )
    return (
        f"Weights: `{w.get('checkpoint')}` (sha256 `{w.get('sha256')}`), under Apple's ML Research Model "
        f"terms of use (`{WEIGHTS_LICENSE}`) as the checkpoint's source states; tooling MIT.\n"
    )


def _artifact_table(manifest: dict[str, Any]) -> str:
    rows = ["| target | encoder | precision | file | input | size | cosine | max abs diff | verified by |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for a in manifest.get("artifacts", []):
        if not a.get("path"):
            continue
        p = a.get("parity", {})
        inp = a["inputs"][0] if a.get("inputs") else {}
        shape = "x".join(str(d) for d in inp.get("shape", []))
        cos = f"{p['cosine']:.7f}" if p.get("cosine") is not None else "-"
        mad = f"{p['max_abs_diff']:.2e}" if p.get("max_abs_diff") is not None else "-"
        runtime = p.get("runtime") or a.get("status", "")
        size = f"{(a.get('bytes') or 0) / 1e6:.1f} MB"
        rows.append(
            f"| {a['target']} | {a['encoder']} | {a['precision']} | `{a['path']}` | `{inp.get('name')}` "
            f"{inp.get('dtype')} {shape} | {size} | {cos} | {mad} | {runtime} |"
        )
    return "\n".join(rows) + "\n"


def _preprocessing(manifest: dict[str, Any]) -> str:
    pre = manifest.get("preprocessing", {})
    return (
        f"1. Convert to RGB; resize the **shortest side** to {pre.get('resize')} px with "
        f"**{pre.get('interpolation')}** interpolation (antialiased, like PIL), long side truncated.\n"
        f"2. Center-crop {pre.get('crop')} x {pre.get('crop')} (offsets rounded half to even).\n"
        "3. Default (`float-nchw`) inputs: float32 NCHW = pixels / 255 in [0, 1]. `uint8-nhwc` inputs take "
        "the RGB bytes as they are; `float-nhwc` takes pixels / 255 in NHWC.\n"
        f"4. No mean/std in the app: the model applies mean {pre.get('mean')} / std {pre.get('std')}.\n"
    )


def _tokenizer(manifest: dict[str, Any], differences: list[str]) -> str:
    tok = manifest.get("tokenizer", {})
    diff = "".join(f"  - `{json.dumps(t, ensure_ascii=False)}`\n" for t in differences) or "  - none\n"
    return (
        f"Next to every text encoder: `vocab.json` + `merges.txt` (CLIP format: swift-transformers, Apple's "
        "demo app as `clip-vocab.json`/`clip-merges.txt`, Hugging Face's `CLIPTokenizer`), a Hugging Face "
        "`tokenizer.json` (+ `tokenizer_config.json`, `special_tokens_map.json`), our settings "
        f"`mobileclip_tokenizer.json`, and the raw vocabulary `{tok.get('vocab_file')}` with its license.\n\n"
        f"- int32 ids `[1, {tok.get('context_length')}]`: SOT {tok.get('sot_id')}, BPE ids, EOT "
        f"{tok.get('eot_id')}, then **zeros** (pad id {tok.get('pad_id')}, the token `!`; the text encoders "
        "expect zeros, not EOT, after EOT). Longer texts are cut with EOT kept in the last slot.\n"
        "- Cleaning: ftfy fix, HTML unescape (twice), whitespace collapse, lowercase. `tokenizer.json` "
        "replays ftfy's ligature and full-width fixes and common HTML entities in its normalizer and gives "
        "our ids on every golden text (`tokenizers.Tokenizer.from_file`).\n"
        "- `transformers.CLIPTokenizer` / `CLIPTokenizerFast` hard-code their own normalizer (no ftfy); load "
        'with `pad_token="!"`, `split_special_tokens=True` (set in `tokenizer_config.json`). Golden texts '
        "where they differ from our ids:\n" + diff
    )


def _golden(manifest: dict[str, Any]) -> str:
    g = manifest.get("golden")
    if not g:
        return "No golden vectors (exported with --no-verify).\n"
    return (
        f"`{g['index']}` lists images ({', '.join(g['images'])}) with their source, exact pixels "
        "(`*.rgb-u8.bin`, uint8 HWC) and input tensors (`*.nchw-f32.bin`, float32 NCHW little-endian), and "
        f"texts ({', '.join(json.dumps(t) for t in g['texts'])}) with ids; for each the train-time PyTorch "
        "embedding and each artifact's embedding in its runtime, with the tolerance to assert on device "
        "(cosine, max|diff| relative to max|reference|, PSNR).\n"
    )


def render_card(manifest: dict[str, Any], sections: list[str], differences: list[str]) -> str:
    model = manifest.get("model", "")
    spec = manifest.get("spec", {})
    logit = manifest.get("logit_scale", {})
    parts = [
        _front_matter(manifest),
        f"# {spec.get('display_name', model)} on-device bundle\n",
        _weights(manifest),
        f"Exported by mobileclip-export {manifest.get('tool_versions', {}).get('mobileclip_export', '')}: "
        "structurally reparameterized encoders, each checked against the train-time PyTorch model in the "
        f"runtime named below. Embeddings ({manifest.get('embed_dim')}-d) are **unnormalized**: "
        f"L2-normalize, then logits = {logit.get('value', 0):.4g} x cosine. Intended use: zero-shot image "
        "classification and image-text retrieval on device.\n",
        "## Artifacts\n",
        _artifact_table(manifest),
        "## Image preprocessing (exact)\n",
        _preprocessing(manifest),
        "## Tokenizer\n",
        _tokenizer(manifest, differences),
        "## Golden vectors\n",
        _golden(manifest),
        *sections,
        "## Integrity\n",
        "`manifest.json` records the sha256 of every file; `mobileclip-export check --bundle .` re-hashes "
        "them and re-runs the golden vectors where a runtime exists.\n",
    ]
    return "\n".join(parts)


def write_card(root: Path, manifest: dict[str, Any]) -> Path:
    """Render the card (sections from each target present) into ``root/README.md``."""
    from mobileclip_export.export.registry import get_target
    from mobileclip_export.models.app_tokenizer import cleaning_differences, golden_cases
    from mobileclip_export.models.tokenizer import get_tokenizer

    records = [a for a in manifest.get("artifacts", []) if a.get("path")]
    sections = []
    for name in dict.fromkeys(a["target"] for a in records):
        section = get_target(name).card_section([a for a in records if a["target"] == name], manifest)
        if section:
            sections.append(section)
    texts = [c["text"] for c in golden_cases()]
    diffs = [d["text"] for d in cleaning_differences(get_tokenizer(), texts, stock=True)]
    path = root / CARD
    path.write_text(render_card(manifest, sections, diffs), encoding="utf-8")
    return path
