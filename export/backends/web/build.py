"""Build one web folder: files, every dtype verified, failures removed, the pin written last.

Order: static files -> fp32 (then fp16, q8) model files via the onnx backend -> Node parity per dtype (+ the
q8 accuracy guard) -> ``config.json`` pins what passed in Node -> Chromium parity per dtype, the pinned one
loaded *without* a dtype (as an app does), which must fetch exactly the pinned files -> a dtype that failed
anywhere is deleted (never left under a name transformers.js would pick) -> ``config.json`` pins each model to
the requested dtype when it passed, else to the most accurate one that did (when Chromium changed the pin, a
second session repeats the load without a dtype) -> model card.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from mobileclip_export.errors import ExportFailure
from mobileclip_export.export.spec import ArtifactInfo, EncoderExport, TensorSpec

from . import card, checks
from .folder import (
    DTYPES,
    INPUT,
    MODEL_FILE,
    OUTPUT,
    config_json,
    onnx_path,
    preprocessing_of,
    preprocessor_config,
    write_json,
    write_onnx,
    write_tokenizer,
)
from .runtime import NodeSession, from_b64, js_versions

log = logging.getLogger(__name__)


def _static_files(folder: Path, encs: list[EncoderExport]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for enc in encs:
        if enc.encoder == "image":
            write_json(folder / "preprocessor_config.json", preprocessor_config(preprocessing_of(enc)))
        else:
            write_tokenizer(folder, int(enc.inputs[0].shape[-1]))
    card.write_license(folder, dict(encs[0].metadata))


def _merge(report: dict, runtime: str, results: dict) -> None:
    for dtype, per in results.items():
        for encoder, r in per.items():
            report.setdefault(dtype, {}).setdefault(encoder, {})[runtime] = r


def _decide(report: dict, guard: dict | None) -> None:
    """Each (dtype, model) passes when every runtime that ran passed (and q8 passed the guard)."""
    for dtype, per in report.items():
        for encoder, r in per.items():
            bad = [f"{rt}: {v}" for rt in ("node", "chromium") for v in r.get(rt, {}).get("violations", [])]
            if dtype == "q8" and guard is not None:
                r["accuracy_guard"] = guard.get(encoder)
                bad += [f"guard: {v}" for v in (guard.get(encoder) or {}).get("violations", [])]
            r["status"] = "failed" if bad else "passed"
            if bad:
                r["why_not_shipped"] = "; ".join(bad)


def _pin(report: dict, encs: list[EncoderExport], wanted: str) -> dict[str, str]:
    pin = {}
    for enc in encs:
        passed = [d for d in DTYPES if report.get(d, {}).get(enc.encoder, {}).get("status") == "passed"]
        if not passed:
            why = report.get("fp32", {}).get(enc.encoder, {}).get("why_not_shipped", "no dtype passed")
            raise ExportFailure(f"web: no dtype of the {enc.encoder} model passed ({why})")
        pin[enc.encoder] = wanted if wanted in passed else passed[0]
    return pin


class _Clock:
    def __init__(self) -> None:
        self.t0, self.laps = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.t0, 2)
        self.t0 = now


def _provisional_pin(report: dict, guard: dict | None, encs: list[EncoderExport], wanted: str) -> dict | None:
    """The pin the Node results alone give (None: nothing passed there; the build fails later)."""
    node_only = {d: {e: {"node": r.get("node", {})} for e, r in per.items()} for d, per in report.items()}
    _decide(node_only, guard)
    try:
        return _pin(node_only, encs, wanted)
    except ExportFailure:
        return None


def _verify(
    folder: Path,
    encs: list[EncoderExport],
    dtypes: tuple[str, ...],
    wanted: str,
    browser: bool,
    clock: _Clock,
) -> dict[str, Any]:
    refs = {e.encoder: (x := checks.verify_inputs(e), checks.torch_embed(e, x)) for e in encs}
    session = NodeSession(folder)
    out: dict[str, Any] = {"report": {}}
    try:
        _merge(out["report"], "node", checks.node_parity(session, encs, list(dtypes), refs))
        clock.lap("node parity")
        by = {e.encoder: e for e in encs}
        photos = checks.Photos(by["image"]) if "image" in by else None
        guard = None
        if photos is not None and "text" in by and "q8" in dtypes:
            guard = checks.q8_guard(session, encs, refs, dict(encs[0].metadata), photos)
        if "text" in by:
            out["tokenizer_check"] = checks.tokenizer_check(session, by["text"])
        if photos is not None:
            out["preprocessing_check"] = checks.pixel_check(session, photos)
        clock.lap("node guard, tokens, pixels")
    finally:
        session.close()
    if browser:
        out["provisional_pin"] = pin = _provisional_pin(out["report"], guard, encs, wanted)
        if pin is not None:
            write_json(folder / "config.json", config_json(encs, pin))
        results, out["browser"], out["browser_result"] = checks.browser_parity(
            folder, encs, list(dtypes), refs, pin=pin
        )
        _merge(out["report"], "chromium", results)
        clock.lap("chromium parity, pinned load")
    _decide(out["report"], guard)
    out["refs"] = refs
    return out


def pinned_check(folder: Path, pin: dict[str, str], result: dict) -> dict:
    """The loads without a dtype in a Chromium ``result`` must fetch exactly the pinned files and run."""
    runs = [(i, r) for i, r in enumerate(result.get("runs", [])) if r.get("dtype") is None]
    by_run = result.get("fetched_by_run", {})
    fetched = sorted({f for i, _ in runs for f in by_run.get(i, []) if f.startswith("onnx/")})
    want = sorted(onnx_path(folder, e, d).relative_to(folder).as_posix() for e, d in pin.items())
    problems = [] if fetched == want else [f"without a dtype the browser fetched {fetched}, expected {want}"]
    problems += [f"{r['encoder']}: {r.get('error')}" for _, r in runs if not r.get("ok")]
    ran = [r["encoder"] for _, r in runs if r.get("ok") and from_b64(r["data"], r["dims"]).size]
    return {"fetched": fetched, "expected": want, "problems": problems, "runs_ok": ran}


def _pinned_in_browser(folder: Path, encs: list[EncoderExport], pin: dict[str, str], refs: dict) -> dict:
    """Load without a dtype (what an app does) in a session of its own."""
    from .browser import run_in_chromium

    runs = [{"encoder": e.encoder, "dtype": None} for e in encs]
    return pinned_check(folder, pin, run_in_chromium(folder, checks.browser_job(refs, runs)))


def build_folder(
    encs: list[EncoderExport], dtypes: tuple[str, ...], wanted: str, folder: Path, *, browser: bool = True
) -> ArtifactInfo:
    """Write and verify the folder at ``folder``; ArtifactInfo details carry every dtype's numbers."""
    clock = _Clock()
    _static_files(folder, encs)
    files: dict[str, dict[str, Any]] = {}
    for dtype in dtypes:
        for enc in encs:
            files.setdefault(dtype, {})[enc.encoder] = write_onnx(enc, dtype, folder)
    write_json(folder / "config.json", config_json(encs, {e.encoder: "fp32" for e in encs}))
    clock.lap("onnx files")
    checked = _verify(folder, encs, dtypes, wanted, browser, clock)
    if checked.get("tokenizer_check", {}).get("status") == "failed":
        differ = checked["tokenizer_check"]["differ"]
        raise ExportFailure(f"web: transformers.js tokenizes differently: {differ}")
    report = checked["report"]
    for dtype, per in report.items():
        for encoder, r in per.items():
            r["file"] = files[dtype][encoder]
            if r["status"] != "passed":
                onnx_path(folder, encoder, dtype).unlink(missing_ok=True)
    pin = _pin(report, encs, wanted)
    write_json(folder / "config.json", config_json(encs, pin))
    details: dict[str, Any] = {"dtypes": report, "pinned": {MODEL_FILE[e]: d for e, d in pin.items()}}
    details.update(
        {k: checked[k] for k in ("tokenizer_check", "preprocessing_check", "browser") if k in checked}
    )
    if browser:
        if pin == checked["provisional_pin"]:  # the first session's loads without a dtype saw this pin
            got = pinned_check(folder, pin, checked["browser_result"])
        else:
            got = _pinned_in_browser(folder, encs, pin, checked["refs"])
            clock.lap("chromium, pinned load again")
        details["pinned_load_in_browser"] = got
        if got["problems"]:
            raise ExportFailure(f"web: loading without a dtype went wrong: {'; '.join(got['problems'])}")
    details["js_versions"] = js_versions()
    details["seconds"] = clock.laps
    card.write_card(folder, encs[0].model_name, pin, report, dict(encs[0].metadata))
    notes = _notes(report, pin, wanted)
    return ArtifactInfo(folder, _specs(encs, "in"), _specs(encs, "out"), notes=notes, details=details)


def _specs(encs: list[EncoderExport], which: str) -> tuple[TensorSpec, ...]:
    specs = [e.inputs[0] if which == "in" else e.outputs[0] for e in encs]
    return tuple(TensorSpec(s.name, (-1, *s.shape[1:]), s.dtype, s.description) for s in specs)


def _notes(report: dict, pin: dict[str, str], wanted: str) -> list[str]:
    notes = ["dynamic batch (dim 0); opset 18; fp16/q8 files keep fp32 inputs and outputs"]
    for dtype, per in report.items():
        for encoder, r in per.items():
            if r["status"] != "passed":
                notes.append(f"{dtype} {encoder} not shipped: {r['why_not_shipped']}")
    for encoder, dtype in pin.items():
        if dtype != wanted:
            notes.append(f"{encoder} pinned to {dtype}: the requested {wanted} did not pass")
    return notes


def structure(folder: Path, enc: EncoderExport) -> dict[str, Any]:
    """No-run checks of one model in the folder: the pinned file's I/O names, int64 ids, dynamic batch,
    no BatchNormalization, and the pin naming a file that exists."""
    import json

    import onnx

    problems: list[str] = []
    try:
        pin = json.loads((folder / "config.json").read_text())["transformers.js_config"]["dtype"]
        dtype = pin[MODEL_FILE[enc.encoder]]
    except (OSError, ValueError, KeyError) as err:
        return {"problems": [f"config.json has no dtype pin for {MODEL_FILE[enc.encoder]} ({err})"]}
    path = onnx_path(folder, enc.encoder, dtype)
    if not path.is_file():
        return {"problems": [f"the pinned file {path.name} is missing"]}
    graph = onnx.load(str(path), load_external_data=False).graph
    ins, outs = [i.name for i in graph.input], [o.name for o in graph.output]
    if ins != [INPUT[enc.encoder]] or outs != [OUTPUT[enc.encoder]]:
        problems.append(f"I/O {ins} -> {outs}, expected {[INPUT[enc.encoder]]} -> {[OUTPUT[enc.encoder]]}")
    elem = graph.input[0].type.tensor_type.elem_type
    want_elem = onnx.TensorProto.FLOAT if enc.encoder == "image" else onnx.TensorProto.INT64
    if elem != want_elem:
        problems.append(f"input dtype {onnx.TensorProto.DataType.Name(elem)}")
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    if not batch.dim_param:
        problems.append(f"batch dimension is fixed ({batch.dim_value})")
    n_bn = sum(n.op_type == "BatchNormalization" for n in graph.node)
    if n_bn:
        problems.append(f"{n_bn} BatchNormalization node(s) left")
    return {
        "pinned_file": path.name,
        "inputs": ins,
        "outputs": outs,
        "n_batchnorm": n_bn,
        "n_nodes": len(graph.node),
        "problems": problems,
    }
