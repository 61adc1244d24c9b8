"""``mobileclip-export search --index LIB --text "..." [--image q.jpg] --top-k K``: rank a library's photos.

Exact top-k cosine over the library's fp16 vectors; the query is encoded with a bundle of the model that built
the library (another model's bundle is refused). The logic is ``library/search.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", type=Path, required=True, help="a library folder written by index")
    p.add_argument(
        "--bundle", type=Path, required=True, help="a bundle of the model the library was built with"
    )
    p.add_argument(
        "--target", help="whose artifacts encode the query (default: the one that built the library)"
    )
    p.add_argument("--precision", help="artifact precision when the bundle has several")
    p.add_argument("--checkpoint", type=Path, help="with --target pytorch: the bundle's checkpoint")
    p.add_argument("--text", action="append", default=[], metavar="QUERY", help="a text query (repeatable)")
    p.add_argument("--image", action="append", default=[], type=Path, metavar="FILE", help="an image query")
    p.add_argument("--top-k", type=int, default=10, help="hits per query (default: 10)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from mobileclip_export.library.search import format_search, search_library
    from mobileclip_export.stdio import stdout_to_stderr

    with stdout_to_stderr():
        doc = search_library(
            args.index, args.bundle, args.target, texts=args.text, images=args.image, top_k=args.top_k,
            precision=args.precision, checkpoint=args.checkpoint,
        )  # fmt: skip
    print(json.dumps({"ok": True, **doc}, indent=2) if args.json else format_search(doc))
    return 0
