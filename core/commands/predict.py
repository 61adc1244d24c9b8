"""``mobileclip-export predict``: zero-shot labels for images, or images ranked for text queries.

Runs a bundle's artifacts in their runtimes (``--bundle``), or exports ``--model`` to a temporary bundle
first; ``--target pytorch`` runs the train-time PyTorch model. The logic is ``export/predict.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from mobileclip_export.errors import UsageError

PYTORCH = "pytorch"  # keep in sync with zs_runtime.PYTORCH (not imported: --help stays free of numpy)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mobileclip_export.export.registry import all_targets

    names = [*all_targets(), PYTORCH]
    p.epilog = (
        "example: mobileclip-export predict --bundle exports/mobileclip_s0 --target "
        f"{names[0]} --image photos/ --labels 'a cat,a dog,a rocket' --compare"
    )
    src = p.add_argument_group("what to run (one of)")
    src.add_argument("--bundle", type=Path, help="an exported bundle (dir with manifest.json, or its parent)")
    src.add_argument("--model", help="export this model to a temporary bundle first (e.g. mobileclip_s0)")
    src.add_argument("--checkpoint", type=Path, help="with --model: its checkpoint (default: random weights)")
    src.add_argument("--reduced", action="store_true", help="with --model: the small test-size variant")
    src.add_argument("--seed", type=int, default=0, help="with --model: seed of the random weights")
    p.add_argument("--target", required=True, metavar="|".join(names), help="whose artifacts run")
    p.add_argument("--precision", help="artifact precision when the bundle has several (default: any)")
    p.add_argument(
        "--image",
        nargs="+",
        required=True,
        metavar="PATH",
        help="image files and/or folders; the EXIF orientation is applied (as photo apps do), 16-bit grey is "
        "scaled to 8 bits, alpha is dropped, float images are refused",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        metavar="N",
        help="refuse an image with more pixels than N, read from its header before decoding "
        "(default: 100000000; a decompression bomb stops here)",
    )
    p.add_argument("--labels", help="comma-separated labels, e.g. 'a dog,a cat'")
    p.add_argument("--labels-file", type=Path, help="labels, one per line")
    p.add_argument(
        "--templates",
        default="clip",
        help="prompt templates averaged per label: clip (CLIP's 7), photo ('a photo of a {}.'), none, "
        "or a file with one '{}' template per line (default: clip)",
    )
    p.add_argument("--text", action="append", metavar="QUERY", help="retrieval: rank the images for QUERY")
    p.add_argument("--top-k", type=int, default=5, help="labels (or images) shown per image (query)")
    p.add_argument("--compare", action="store_true", help="also run the train-time PyTorch model and diff")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _check_args(args: argparse.Namespace) -> None:
    if (args.bundle is None) == (args.model is None):
        raise UsageError("pass exactly one of --bundle DIR or --model NAME")
    if args.text and (args.labels or args.labels_file):
        raise UsageError("--text (retrieval) and --labels/--labels-file (classification) are exclusive")
    if args.max_image_pixels is not None and args.max_image_pixels < 1:
        raise UsageError(f"--max-image-pixels must be >= 1 (got {args.max_image_pixels})")
    if not args.text and not (args.labels or args.labels_file):
        raise UsageError("pass --labels / --labels-file to classify, or --text QUERY to retrieve")


def _source(args: argparse.Namespace, workdir: Path) -> Any:
    """The bundle to run: given, exported now into ``workdir``, or the in-memory model for pytorch."""
    from mobileclip_export.export.zeroshot.encoders import model_bundle

    if args.bundle is not None:
        return args.bundle
    if args.target == PYTORCH:
        from mobileclip_export.reparam import create_model

        return model_bundle(create_model(args.model, args.checkpoint, seed=args.seed, reduced=args.reduced))
    from mobileclip_export.export import export_model

    result = export_model(
        args.model,
        [args.target],
        checkpoint=args.checkpoint,
        precision=args.precision,
        output_dir=workdir,
        reduced=args.reduced,
        seed=args.seed,
    )
    if result.bundle_dir is None or not result.ok:
        errors = "; ".join(a.error or a.status for a in result.artifacts if not a.ok)
        raise UsageError(f"exporting {args.model} to {args.target} failed: {errors}")
    return result.bundle_dir


def run(args: argparse.Namespace) -> int:
    from mobileclip_export.export.zeroshot import predict as P
    from mobileclip_export.export.zeroshot.prompts import parse_labels, resolve_templates

    _check_args(args)
    # Labels and templates are refused before any export or model build.
    labels = None if args.text else parse_labels(args.labels, args.labels_file)
    templates = None if args.text else resolve_templates(args.templates)
    common = {"precision": args.precision, "compare": args.compare, "checkpoint": args.checkpoint}
    common["max_image_pixels"] = args.max_image_pixels
    from mobileclip_export.stdio import stdout_to_stderr

    # Converters and runtimes print to stdout (even from C++); stdout is kept for the result.
    with tempfile.TemporaryDirectory(prefix="mobileclip-predict-") as tmp, stdout_to_stderr():
        src = _source(args, Path(tmp))
        if args.text:
            doc = P.retrieve(src, args.target, args.image, args.text, top_k=args.top_k, **common)
            text = P.format_retrieval(doc)
        else:
            doc = P.predict(
                src, args.target, args.image, labels, templates=templates, top_k=args.top_k, **common
            )
            text = P.format_predictions(doc)
    if args.model is not None:
        doc["bundle"] = None  # the temporary bundle is gone
    print(json.dumps(doc, indent=2) if args.json else text)
    if doc.get("random_init"):
        note = "NOTE: random weights: the scores show that the pipeline works, not what a model sees."
        print(note, file=sys.stderr)
    return 0
