"""``mobileclip-export check --bundle DIR``: is this bundle still what its manifest vouches for?

Re-hashes every artifact and every other bundle file (tokenizer files, golden vectors, model card) against
the manifest, then re-runs the golden vectors through each artifact whose runtime exists here and compares
with the embeddings stored at export time (tolerance from the index). Exit 0 all good, 1 any mismatch (each
named), 2 bad input (no bundle there).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, help="bundle dir (with manifest.json) or its parent")
    p.add_argument("--no-parity", action="store_true", help="only re-hash; do not run any artifact")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from mobileclip_export.export.bundle.integrity import check_bundle

    report = check_bundle(args.bundle, parity=not args.no_parity)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for line in report["problems"]:
            print(f"MISMATCH {line}")
        for key, res in report["parity"].items():
            print(f"parity {res['status']:7} {key} {res.get('runtime') or res.get('note', '')}")
        verdict = "OK" if report["ok"] else f"FAILED ({len(report['problems'])} problem(s))"
        print(f"{report['bundle']}: {report['n_files']} files checked; {verdict}")
    return 0 if report["ok"] else 1
