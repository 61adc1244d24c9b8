"""``mobileclip-export index --bundle B --target T --images DIR --out LIB``: a photo folder -> a library.

Streaming and batched (memory stays flat however large the folder), resumable (a killed run continues where
it stopped), incremental (a re-run embeds new and changed files and drops deleted ones); unreadable files are
skipped and listed. The logic is ``library/indexer.py``; the store format is docs/library-format.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = "example: mobileclip-export index --bundle B --target T --images ~/Photos --out photos.lib"
    p.add_argument("--bundle", type=Path, required=True, help="an exported bundle (dir with manifest.json)")
    p.add_argument("--target", required=True, help="whose image artifact embeds the photos (or pytorch)")
    p.add_argument("--precision", help="artifact precision when the bundle has several (default: any)")
    p.add_argument("--checkpoint", type=Path, help="with --target pytorch: the bundle's checkpoint")
    p.add_argument("--images", type=Path, required=True, help="the photo folder (walked recursively)")
    p.add_argument(
        "--out", type=Path, required=True, help="the library folder (created, or brought up to date)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per encoder call (default: 16)")
    p.add_argument(
        "--shard-rows",
        type=int,
        default=512,
        help="files per commit when the library is created (default: 512)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        metavar="N",
        help="skip (and list) an image with more pixels than N, read from its header (default: 100000000)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from mobileclip_export.library.indexer import index_folder
    from mobileclip_export.stdio import stdout_to_stderr

    with stdout_to_stderr():  # runtimes print to stdout (even from C++); stdout is kept for the report
        rep = index_folder(
            args.bundle, args.target, args.images, args.out, precision=args.precision,
            checkpoint=args.checkpoint, batch_size=args.batch_size, shard_rows=args.shard_rows,
            max_image_pixels=args.max_image_pixels, progress=args.verbosity >= 0,
        )  # fmt: skip
    doc = rep.as_dict()
    if args.json:
        print(json.dumps({"ok": True, **doc}, indent=2))
        return 0
    for s in doc["skipped"]:
        print(f"skipped {s['path']}: {s['error']}", file=sys.stderr)
    print(
        f"{doc['library']}: {doc['live']} images; this run added {doc['added']}, "
        f"re-embedded {doc['updated']}, removed {doc['deleted']}, unchanged {doc['unchanged']}, "
        f"skipped {len(doc['skipped'])} "
        f"({doc['seconds']:.1f} s, {doc['images_per_s']:.1f} images/s)"
    )
    return 0
