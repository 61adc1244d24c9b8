"""Alias module: the pipeline lives in ``api`` (orchestration), ``plan`` (validation), ``verify``, ``bundle``
and ``manifest``. Kept so ``from mobileclip_export.export.pipeline import export_model`` also works."""

from mobileclip_export.export.api import export_model
from mobileclip_export.export.manifest import ArtifactRecord, ExportResult

__all__ = ["ArtifactRecord", "ExportResult", "export_model"]
