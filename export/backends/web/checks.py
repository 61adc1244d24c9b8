"""Verification of a web folder in the runtimes that will run it.

Per dtype and model: transformers.js in Node (explicit ``dtype``) and transformers.js on onnxruntime-web
(WASM) in headless Chromium, both on the pipeline's verification tensors, against the fp32 PyTorch encoder
(the reparameterized one; the manifest's ``reparam_parity`` ties it to the train-time model, and the record's
own parity is the pinned dtype against the train-time model). Limits come from the one tolerance table;
q8 also faces the accuracy guard (``int8`` limits) when both towers are in the folder. Token ids of the
golden texts and the pixels of the sample photos are compared with ours as well.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.export.parity import compare
from mobileclip_export.export.spec import EncoderExport
from mobileclip_export.export.tolerances import task_tolerance_for, tolerance_for

from .folder import DTYPES, preprocessing_of
from .runtime import NodeSession, from_b64, to_b64

log = logging.getLogger(__name__)
SPECIAL_LITERALS = ("<|startoftext|>", "<|endoftext|>", "<start_of_text>", "<end_of_text>")


def verify_inputs(enc: EncoderExport) -> np.ndarray:
    """The pipeline's verification tensors for this encoder (random, structured, short/long texts)."""
    from mobileclip_export.export import verify_inputs as VI

    if enc.encoder == "image":
        return VI.image_inputs(int(enc.image_size or enc.inputs[0].shape[-1])).data
    return VI.text_inputs(int(enc.inputs[0].shape[-1])).data


def torch_embed(enc: EncoderExport, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        t = torch.from_numpy(x.astype(np.float32) if enc.encoder == "image" else x.astype(np.int64))
        return enc.module(t).float().numpy()


def _judge(ref: np.ndarray, got: np.ndarray, precision: str, runtime: str) -> dict[str, Any]:
    stats = compare(ref, got)
    bad = stats.violations(tolerance_for(precision))
    return {**stats.to_dict(), "runtime": runtime, "status": "failed" if bad else "passed", "violations": bad}


def node_parity(session: NodeSession, encs: list[EncoderExport], dtypes: list[str], refs: dict) -> dict:
    """{dtype: {encoder: parity}} through transformers.js in Node, one batch per encoder."""
    out: dict[str, dict[str, Any]] = {}
    for dtype in dtypes:
        for enc in encs:
            x, ref = refs[enc.encoder]
            try:
                got = session.embed(enc.encoder, x, dtype)
                out.setdefault(dtype, {})[enc.encoder] = _judge(ref, got, DTYPES[dtype].precision, "node")
            except Exception as err:  # a dtype the runtime cannot load fails alone
                out.setdefault(dtype, {})[enc.encoder] = {"status": "failed", "violations": [str(err)]}
    return out


def browser_job(refs: dict, runs: list[dict[str, Any]], threads: int = 1, warm_runs: int = 0) -> dict:
    inputs = {}
    for encoder, (x, _) in refs.items():
        data = x.astype(np.float32 if encoder == "image" else np.int64)
        inputs[encoder] = {"dims": list(data.shape), "data": to_b64(data)}
    return {"inputs": inputs, "runs": runs, "threads": threads, "warm_runs": warm_runs}


def browser_parity(
    folder: Path,
    encs: list[EncoderExport],
    dtypes: list[str],
    refs: dict,
    *,
    pin: dict[str, str] | None = None,
) -> tuple[dict, dict, dict]:
    """({dtype: {encoder: parity}}, facts about the browser run, the raw result) in headless Chromium (WASM).

    ``pin`` ({encoder: dtype}, what ``config.json`` pins now): that dtype of each model is loaded *without*
    a dtype, as an app does, and judged as the pinned dtype (``build.pinned_check`` then proves from the
    files it fetched that it was that dtype)."""
    from .browser import run_in_chromium

    pin = pin or {}
    runs = [
        {"encoder": e.encoder, "dtype": None, "as": d}
        if pin.get(e.encoder) == d
        else {"encoder": e.encoder, "dtype": d}
        for d in dtypes
        for e in encs
    ]
    result = run_in_chromium(folder, browser_job(refs, runs))
    out: dict[str, dict[str, Any]] = {}
    for run in result.get("runs", []):
        dtype, encoder = run["dtype"] or run["as"], run["encoder"]
        if not run.get("ok"):
            out.setdefault(dtype, {})[encoder] = {"status": "failed", "violations": [run.get("error", "")]}
            continue
        got = from_b64(run["data"], run["dims"])
        judged = _judge(refs[encoder][1], got, DTYPES[dtype].precision, "chromium-wasm")
        judged.update(load_ms=round(run["load_ms"], 1), first_infer_ms=round(run["first_infer_ms"], 1))
        judged["loaded_without_dtype"] = run["dtype"] is None
        out.setdefault(dtype, {})[encoder] = judged
    facts = {k: result.get(k) for k in ("user_agent", "cross_origin_isolated", "transformers")}
    return out, facts, result


class Photos:
    """The shipped photographs through the image encoder's preprocessing, and their fp32 embedding: computed
    on first use, shared by the q8 guard and the pixel check."""

    def __init__(self, image: EncoderExport) -> None:
        self.image = image
        self._pixels: np.ndarray | None = None
        self._embedding: np.ndarray | None = None

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            from types import SimpleNamespace

            from mobileclip_export.export.compression.calibration import photographs
            from mobileclip_export.models.spec import Preprocessing

            raw = preprocessing_of(self.image).items()
            pre = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw})
            self._pixels = photographs(SimpleNamespace(preprocessing=pre)).astype(np.float32)
        return self._pixels

    @property
    def embedding(self) -> np.ndarray:
        if self._embedding is None:
            self._embedding = torch_embed(self.image, self.pixels)
        return self._embedding


def q8_guard(
    session: NodeSession, encs: list[EncoderExport], refs: dict, meta: dict[str, str], photos: Photos
) -> dict:
    """The ``int8`` accuracy guard on each q8 model (photographs and captions, Node; needs both towers)."""
    from mobileclip_export.export.compression.calibration import TaskData, caption_ids
    from mobileclip_export.export.compression.guard import guard_artifact

    text = next(e for e in encs if e.encoder == "text")
    ids = caption_ids(int(text.inputs[0].shape[-1]))
    enforce = meta.get("random_init", "true") != "true"
    logit_scale = float(meta.get("logit_scale", 100.0))
    task = TaskData(photos.pixels, ids, photos.embedding, torch_embed(text, ids), logit_scale, enforce)
    tols = (tolerance_for("int8"), task_tolerance_for("int8"))
    out = {}
    for enc in encs:

        def embed(x: np.ndarray, e: str = enc.encoder) -> np.ndarray:
            return session.embed(e, x, "q8")

        report = guard_artifact(task, enc.encoder, embed, "int8", tols, refs[enc.encoder])  # type: ignore[arg-type]
        out[enc.encoder] = report.to_dict()
    return out


def tokenizer_check(session: NodeSession, text: EncoderExport) -> dict[str, Any]:
    """transformers.js ids vs ours on the golden and verification texts. Two differences are accepted: a
    literal special token typed in a text (transformers.js makes it special, we read plain text), and a text
    over 77 tokens, which transformers.js cuts without EOT: equal once the graph's EOT rule is applied, and
    its embedding through transformers.js must then equal ours (``over_77_cosine``)."""
    from mobileclip_export.export.verify_inputs import VERIFY_TEXTS
    from mobileclip_export.models.app_tokenizer import golden_cases
    from mobileclip_export.models.tokenizer import EOT_ID, tokenize

    texts = [c["text"] for c in golden_cases()] + [t for t in VERIFY_TEXTS if t]
    theirs = session.tokenize(texts)
    ours = tokenize(texts, int(text.inputs[0].shape[-1])).astype(np.int64)
    fixed = theirs.copy()
    fixed[:, -1] = np.where(fixed[:, -1] != 0, EOT_ID, 0)
    differ = [i for i in range(len(texts)) if not np.array_equal(theirs[i], ours[i])]
    special = [i for i in differ if any(s in texts[i] for s in SPECIAL_LITERALS)]
    long = [i for i in differ if i not in special and np.array_equal(fixed[i], ours[i])]
    bad = [texts[i] for i in differ if i not in special and i not in long]
    out: dict[str, Any] = {"texts": len(texts), "equal": len(texts) - len(differ)}
    out.update(literal_special_token=len(special), over_77_equal_after_eot_rule=len(long), differ=bad)
    if long:  # the graph's rule, end to end: transformers.js ids in, our embedding out
        got = session.embed("text", theirs[long], "fp32")
        out["over_77_cosine"] = compare(torch_embed(text, ours[long]), got).cosine
        if out["over_77_cosine"] < tolerance_for("fp32").min_cosine:
            bad.append(f"over-77-token texts: cosine {out['over_77_cosine']:.6f} through transformers.js")
    out["status"] = "failed" if bad else "passed"
    return out


def pixel_check(session: NodeSession, photos: Photos) -> dict[str, Any]:
    """AutoProcessor (sharp) vs our PIL preprocessing on the sample photos: pixels and the fp32 embedding."""
    from mobileclip_export.models.samples import sample_paths

    image, ours = photos.image, photos.pixels
    theirs = session.preprocess(sample_paths())
    if theirs.shape != ours.shape:
        return {"status": "failed", "violations": [f"shape {list(theirs.shape)} vs ours {list(ours.shape)}"]}
    per_photo = np.abs(theirs - ours).reshape(len(ours), -1).max(axis=1) * 255
    emb = compare(photos.embedding, torch_embed(image, theirs))
    names = [p.stem for p in sample_paths()]
    return {
        "max_pixel_diff_255": {n: round(float(d), 1) for n, d in zip(names, per_photo)},
        "embedding_cosine_worst": emb.cosine,
        "status": "reported",
    }
