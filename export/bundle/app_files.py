"""What makes a bundle app-ready, added after the artifacts: golden vectors, model card, file hashes.

Called once by the pipeline with the finished manifest dict (before it is written): it writes the extra
files into the temporary bundle and records them (``golden``, ``files``) in the manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mobileclip_export.export.bundle import golden
from mobileclip_export.export.bundle.integrity import file_hashes

log = logging.getLogger(__name__)


def finish_bundle(
    root: Path, manifest: dict[str, Any], records: list[Any], inputs: golden.GoldenInputs | None
) -> None:
    """Golden vectors (when verifying: ``inputs`` from the pipeline, each artifact's embeddings recorded
    while verification had it loaded), the model card, then hashes of every non-artifact file."""
    if inputs is not None:
        index = golden.write_golden(root, records, inputs)
        manifest["golden"] = {
            "index": golden.INDEX,
            "images": [i["name"] for i in index["images"]],
            "texts": [t["text"] for t in index["texts"]],
        }
    from mobileclip_export.export.bundle.model_card import write_card

    write_card(root, manifest)  # reads the artifact records and golden listing from the manifest dict
    artifacts = [r.path for r in records if r.ok and r.path]
    manifest["files"] = file_hashes(root, artifacts)
