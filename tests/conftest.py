"""Shared test setup: the helper modules beside this file (``_toys``, ``_matrix_helpers``) import by name."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
