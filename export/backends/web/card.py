"""``LICENSE`` and ``README.md`` of a web folder: the model's terms, and a card whose JavaScript runs as
written (the tests run it in Node against the folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .folder import DTYPES, MODEL_FILE

_RANDOM_LICENSE = (
    "These weights are RANDOM (seeded initialization by mobileclip-export, no checkpoint): MIT License.\n"
    "They are valid for size, latency and app plumbing only, not for accuracy.\n"
)
_CHECKPOINT_LICENSE = (
    "The weights come from Apple's MobileCLIP / MobileCLIP2 checkpoint ({weights}) and are covered by\n"
    "Apple's ML Research Model terms of use (apple-amlr), as the checkpoint's source states. The conversion\n"
    "tooling (mobileclip-export) is MIT licensed. The CLIP BPE vocabulary: LICENSE-clip-bpe.txt.\n"
)

SNIPPET = """import {{ env, AutoProcessor, AutoTokenizer, CLIPTextModelWithProjection,
  CLIPVisionModelWithProjection, RawImage }} from '@huggingface/transformers';

env.allowRemoteModels = false;  // no hub: '{name}/' next to this script (or served next to the page)
env.localModelPath = './';
const id = '{name}';

const tokenizer = await AutoTokenizer.from_pretrained(id);
const textModel = await CLIPTextModelWithProjection.from_pretrained(id);  // config.json pins the dtype
const processor = await AutoProcessor.from_pretrained(id);
const visionModel = await CLIPVisionModelWithProjection.from_pretrained(id);

const texts = ['a photo of a cat', 'a photo of a dog'];
const textInputs = tokenizer(texts, {{ padding: 'max_length', truncation: true }});  // always 77 ids
const {{ text_embeds }} = await textModel(textInputs);
const image = await RawImage.read('{image}');
const {{ image_embeds }} = await visionModel(await processor(image));

const unit = (v) => {{ const n = Math.hypot(...v); return v.map((x) => x / n); }};  // not L2-normalized
const img = unit(image_embeds.tolist()[0]);
const logits = text_embeds.tolist().map((t) => {scale} * unit(t).reduce((s, x, i) => s + x * img[i], 0));
const exp = logits.map((l) => Math.exp(l - Math.max(...logits)));
const probs = exp.map((e) => e / exp.reduce((a, b) => a + b));
console.log(JSON.stringify({{ texts, probs }}));
"""


def write_license(folder: Path, meta: dict[str, str]) -> None:
    random_init = meta.get("random_init", "true") == "true"
    text = _RANDOM_LICENSE if random_init else _CHECKPOINT_LICENSE.format(weights=meta.get("weights", ""))
    (Path(folder) / "LICENSE").write_text(text, encoding="utf-8")


def snippet(folder: Path, image: str = "cat.jpg", scale: float = 100.0) -> str:
    return SNIPPET.format(name=Path(folder).name, image=image, scale=f"{scale:g}")


def _dtype_rows(report: dict[str, Any]) -> list[str]:
    rows = [
        "| dtype | model | file | status | cosine, Node | cosine, Chromium |",
        "|---|---|---|---|---:|---:|",
    ]
    for dtype, per in report.items():
        for enc, r in per.items():
            file = f"`onnx/{MODEL_FILE[enc]}{DTYPES[dtype].suffix}.onnx`"
            file = file if r.get("status") == "passed" else "(not shipped)"
            cos = [r.get(rt, {}).get("cosine") for rt in ("node", "chromium")]
            cells = [f"{c:.6f}" if c is not None else "-" for c in cos]
            rows.append(f"| {dtype} | {enc} | {file} | {r.get('status')} | {cells[0]} | {cells[1]} |")
    return rows


_NOTES = """- Tokenize with `padding: 'max_length'` (the graphs take 77 ids). A text over 77 tokens is cut by
  transformers.js without an end-of-text token; the text graph puts it back, so the embedding equals ours.
- Literal `<|startoftext|>` / `<|endoftext|>` typed inside a text become special tokens in transformers.js
  (our tokenizer reads them as plain text): the one token difference.
- transformers.js decodes images with sharp (Node) or the canvas (browsers): colour profiles, crop rounding
  and resizing differ from PIL, so pixels (not the model) differ from the Python pipeline.
"""


def write_card(
    folder: Path, model: str, pin: dict[str, str], report: dict[str, Any], meta: dict[str, str]
) -> None:
    random_init = meta.get("random_init", "true") == "true"
    pins = ", ".join(f"`{MODEL_FILE[e]}`: `{d}`" for e, d in pin.items())
    head = [
        "---",
        f"license: {'mit' if random_init else 'apple-amlr'}",
        "library_name: transformers.js",
        "pipeline_tag: zero-shot-image-classification",
        "tags: [mobileclip, clip]",
        "---",
        "",
        f"# {model} for transformers.js",
        "",
    ]
    if random_init:
        head += ["> **RANDOM weights**: valid for size, latency and plumbing only, not for accuracy.", ""]
    body = [
        "`@huggingface/transformers` loads this folder unchanged (`CLIPVisionModelWithProjection`,",
        "`CLIPTextModelWithProjection`, `AutoProcessor`, `AutoTokenizer`); every file was verified by",
        "mobileclip-export in Node and in headless Chromium (onnxruntime-web, WASM).",
        "",
        f"`config.json` pins the dtype ({pins}); without a pin WASM loads `_quantized` files.",
        "Cosine: worst row vs the fp32 PyTorch model on the same tensors. Failing dtypes are not shipped.",
        "",
        *_dtype_rows(report),
        "",
        "## Use",
        "",
        "```js",
        snippet(folder, scale=float(meta.get("logit_scale", 100))).rstrip(),
        "```",
        "",
        _NOTES,
    ]
    (Path(folder) / "README.md").write_text("\n".join(head + body), encoding="utf-8")
