"""What a benchmark run times: PyTorch eager (train-time and reparameterized) and every bundle artifact."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.benchmarks import harness as H
from mobileclip_export.benchmarks.artifacts import Bundle, artifact_path, parse_precisions
from mobileclip_export.benchmarks.rows import ReportRow
from mobileclip_export.export.spec import BenchCandidate

THREAD_OPTION_NAMES = ("threads", "num_threads", "intra_op_num_threads")


def bench_inputs(model: Any, seed: int) -> dict[str, np.ndarray]:
    """One image (seeded uniform RGB in [0,1]) and one tokenized caption, batch 1."""
    from mobileclip_export.models.tokenizer import tokenize

    rng = np.random.default_rng(seed)
    size = int(model.image_size)
    image = rng.random((1, 3, size, size), dtype=np.float32)
    caption = ["a photo of a dog playing on the beach"]
    ids = np.asarray(tokenize(caption, context_length=int(model.context_length)), dtype=np.int32)
    return {"image": image, "text": ids}


def throughput_inputs(data: Mapping[str, np.ndarray], n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` distinct inputs per encoder for ``--batch-sizes``: seeded random images, captions cycled."""
    from mobileclip_export.models.tokenizer import tokenize

    rng = np.random.default_rng(seed + 1)
    out = {}
    if "image" in data:
        out["image"] = rng.random((n, *data["image"].shape[1:]), dtype=np.float32)
    if "text" in data:
        words = ["dog", "cat", "beach", "city at night", "bowl of fruit", "red car", "mountain", "child"]
        captions = [f"a photo of a {words[i % len(words)]}" for i in range(n)]
        out["text"] = np.asarray(tokenize(captions, context_length=data["text"].shape[1]), np.int32)
    return out


def _cast(data: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype in ("int32", "int64", "float16", "float32"):
        return data.astype(dtype)
    return data  # "image" and unknown: the Runner contract is float32 NCHW in [0,1] / int32 ids


def torch_candidate(target: str, encoder: str, module: Any, data: np.ndarray, size: int) -> H.Candidate:
    import torch

    def load() -> tuple[H.RunFn, str, bool]:
        def run(feeds: Mapping[str, np.ndarray]) -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(feeds["x"]))

        return run, f"torch {torch.__version__} eager", True

    return H.Candidate(
        target=target,
        encoder=encoder,
        precision="fp32",
        load=load,
        feeds={"x": data},
        kind=H.BASELINE,
        size_bytes=size,
    )


def artifact_candidate(rec: Mapping[str, Any], path: Path, data: np.ndarray, threads: int) -> H.Candidate:
    """``path``: the record's artifact, already resolved inside its bundle and sha256-checked."""
    from mobileclip_export.export.registry import get_target

    target = get_target(rec["target"])
    options = dict(rec.get("options") or {})
    notes = []
    thread_opts = [o.name for o in target.options if o.name in THREAD_OPTION_NAMES]
    for name in thread_opts:
        options[name] = threads
    if not thread_opts:
        notes.append(
            "thread count not settable through the target's options: the runtime picks its own, "
            "confined to the pinned cores"
        )
    specs = rec.get("inputs") or []
    name = specs[0]["name"] if specs else rec["encoder"]
    feeds = {name: _cast(data, specs[0].get("dtype") if specs else None)}
    runner_box: list[Any] = []

    def load() -> tuple[H.RunFn, str, bool]:
        runner = target.load(path, options)
        runner_box.append(runner)
        return runner.run, runner.label or target.name, bool(runner.is_deployment_runtime)

    def close() -> None:
        for r in runner_box:
            r.close()

    return H.Candidate(
        target=target.name,
        encoder=rec["encoder"],
        precision=rec["precision"],
        load=load,
        feeds=feeds,
        size_bytes=rec.get("bytes"),
        artifact=str(path),
        close=close,
        notes=notes,
        guard=guard_figures(rec),
    )


def failed_row(rec: Mapping[str, Any]) -> ReportRow:
    """The row of an artifact whose export failed: listed with the reason, never timed."""
    return ReportRow(
        target=rec["target"],
        encoder=rec["encoder"],
        precision=rec["precision"],
        status=f"failed: {rec.get('error') or 'export failed'}",
        artifact=rec.get("path"),
        size_mb=(rec.get("bytes") or 0) / 1e6 or None,
        guard=guard_figures(rec),
    )


GUARD_FIGURES = (
    "status",
    "cosine",
    "max_abs_diff",
    "top1_agreement",
    "top5_agreement",
    "mean_abs_prob_change",
    # --eval-dir figures (the user's labelled images): the bench scorecard
    "eval_images",
    "eval_classes",
    "eval_fp32_top1",
    "eval_top1",
    "eval_drop_points",
    "eval_top1_agreement",
    "eval_cosine_mean",
    "eval_cosine_min",
)


def guard_figures(rec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The accuracy-guard figures of a compressed artifact's manifest record (``details.accuracy_guard``),
    for its report row; None for uncompressed artifacts or exports that ran no guard."""
    block = (rec.get("details") or {}).get("accuracy_guard")
    if not isinstance(block, Mapping):
        return None
    if "status" not in block:  # one artifact holding several encoders: a block per encoder
        block = block.get(rec.get("encoder")) or next(iter(block.values()), None)
        if not isinstance(block, Mapping):
            return None
    figures = {k: block[k] for k in GUARD_FIGURES if k in block}
    if block.get("kept_fp_layers"):
        figures["kept_fp_layers"] = list(block["kept_fp_layers"])
    return figures


def select(
    bundle: Bundle,
    targets: tuple[str, ...],
    encoders: tuple[str, ...],
    precision: str | None,
    multi: bool = False,
) -> list[dict[str, Any]]:
    """The bundle's records for the chosen targets, encoders and precision(s) (comma-separated); with
    ``multi``, also artifacts serving several encoders ("image+text") when one of them is chosen."""
    precs = parse_precisions(precision)

    def wanted(enc: str) -> bool:
        return enc in encoders or (multi and any(e in encoders for e in enc.split("+")))

    return [
        a
        for a in bundle.artifacts
        if a.get("target") in targets
        and wanted(str(a.get("encoder")))
        and (precs is None or a.get("precision") in precs)
    ]


def own_candidate(target: str, c: BenchCandidate, data: np.ndarray) -> H.Candidate:
    """A candidate a target asked for (``Target.bench_candidates``), fed the run's input for its encoder."""
    runner_box: list[Any] = []

    def load() -> tuple[H.RunFn, str, bool]:
        runner = c.load()
        runner_box.append(runner)
        return runner.run, runner.label or target, bool(runner.is_deployment_runtime)

    def close() -> None:
        for r in runner_box:
            r.close()

    return H.Candidate(
        target=target,
        encoder=c.encoder,
        precision=c.precision,
        load=load,
        feeds={c.input_name: _cast(data, c.input_dtype)},
        size_bytes=c.size_bytes,
        artifact=c.artifact,
        close=close,
        variant=c.variant,
        fields=dict(c.fields),
    )


def artifact_candidates(
    bundle: Bundle, config: Any, data: Mapping[str, np.ndarray]
) -> tuple[list[H.Candidate], list[ReportRow]]:
    """Candidates for the selected artifacts, and rows for those whose export failed. A target that times
    its artifacts itself (``Target.bench_candidates``) gets its own candidates, each key once."""
    from mobileclip_export.export.registry import get_target

    candidates: list[H.Candidate] = []
    failed = []
    precs = parse_precisions(config.precision)
    for rec in select(bundle, config.targets, config.encoders, config.precision, multi=True):
        if rec.get("status") == "failed" or not rec.get("path"):
            failed.append(failed_row(rec))
            continue
        target = get_target(rec["target"])
        path = artifact_path(bundle, rec)  # resolved inside the bundle, sha256-checked
        own = target.bench_candidates(path, rec, config.threads)
        if own is not None:
            seen = {c.key for c in candidates}
            for c in own:
                if c.encoder in config.encoders and (precs is None or c.precision in precs):
                    cand = own_candidate(target.name, c, data[c.encoder])
                    if cand.key not in seen:
                        candidates.append(cand)
        elif rec["encoder"] in config.encoders:  # several encoders in one file: timed only by its target
            candidates.append(artifact_candidate(rec, path, data[rec["encoder"]], config.threads))
    return candidates, failed
