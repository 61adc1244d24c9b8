"""Where the web target's JavaScript runtimes are and how to talk to them.

- Node + the pinned npm packages (``js/package.json`` + ``js/package-lock.json``): installed by one command,
  ``ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix <js dir>``, into ``js/node_modules`` next to the scripts, so
  ES-module resolution finds them with no environment variable (the onnxruntime-node postinstall wants a
  host this machine cannot reach; its CPU binaries ship inside the package).
- Chromium: Debian's ``chromium`` package (or ``MOBILECLIP_CHROMIUM`` naming a binary).

``NodeSession`` keeps one Node process per folder: model loads cost seconds, a request costs milliseconds.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import ExportFailure

JS_DIR = Path(__file__).resolve().parent / "js"
NODE_SCRIPT = JS_DIR / "node_runner.mjs"
TRANSFORMERS_DIR = JS_DIR / "node_modules" / "@huggingface" / "transformers"
ORT_WEB_DIST = JS_DIR / "node_modules" / "onnxruntime-web" / "dist"
MIN_NODE_MAJOR = 18
_PREFIX = "@@MCE@@ "
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def install_command() -> str:
    """One command that installs the npm packages (and Chromium when missing): ``install.sh``."""
    return f"bash {JS_DIR.parent / 'install.sh'}"


def node_binary() -> str | None:
    return shutil.which("node")


def chromium_binary() -> str | None:
    override = os.environ.get("MOBILECLIP_CHROMIUM")
    if override:
        return override if Path(override).is_file() else None
    return next((p for p in map(shutil.which, _CHROMIUM_NAMES) if p), None)


def _node_major(node: str) -> int:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20).stdout
        return int(out.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


def missing_runtimes(browser: bool = True) -> list[str]:
    """What is missing to build and verify a web folder here, each with the command that installs it."""
    out = []
    node = node_binary()
    if node is None or _node_major(node) < MIN_NODE_MAJOR:
        out.append(f"Node.js >= {MIN_NODE_MAJOR} (apt-get install -y nodejs npm)")
    elif not (TRANSFORMERS_DIR / "package.json").is_file() or not (ORT_WEB_DIST / "ort.min.mjs").is_file():
        out.append(f"the pinned npm packages (run: {install_command()})")
    if browser and chromium_binary() is None:
        out.append("Chromium for the browser check (apt-get install -y --no-install-recommends chromium)")
    return out


def js_versions() -> dict[str, str]:
    """Versions of the installed JavaScript packages (for the manifest)."""
    out = {}
    for name, path in (
        ("@huggingface/transformers", TRANSFORMERS_DIR),
        ("onnxruntime-web", ORT_WEB_DIST.parent),
    ):
        try:
            out[name] = json.loads((path / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            pass
    return out


def to_b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def from_b64(s: str, dims: list[int]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=np.float32).reshape(dims).copy()


class NodeSession:
    """One ``node node_runner.mjs <folder>`` process: JSON requests on stdin, answers on stdout."""

    def __init__(self, folder: Path) -> None:
        node = node_binary()
        if node is None:
            raise ExportFailure("web: node is not installed")
        self.proc = subprocess.Popen(
            [node, str(NODE_SCRIPT), str(Path(folder).resolve())],
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def request(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(_PREFIX):
                answer: dict[str, Any] = json.loads(line[len(_PREFIX) :])
                if not answer.pop("ok", False):
                    raise ExportFailure(f"transformers.js ({op}): {answer.get('error')}")
                return answer
        raise ExportFailure(f"transformers.js ({op}): node exited with code {self.proc.wait()}")

    def embed(self, encoder: str, x: np.ndarray, dtype: str | None = None) -> np.ndarray:
        data = x.astype(np.float32 if encoder == "image" else np.int64)
        ans = self.request("embed", encoder=encoder, dtype=dtype, dims=list(data.shape), data=to_b64(data))
        return from_b64(ans["data"], ans["dims"])

    def tokenize(self, texts: list[str]) -> np.ndarray:
        ans = self.request("tokenize", texts=texts)
        return np.asarray(ans["ids"], dtype=np.int64).reshape(ans["dims"])

    def embed_files(self, paths: list[Path]) -> np.ndarray:
        """AutoProcessor on the files, then the vision model with the pinned dtype (an app's path)."""
        ans = self.request("embed_files", paths=[str(p) for p in paths])
        return from_b64(ans["data"], ans["dims"])

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """AutoTokenizer (``padding: 'max_length'``), then the text model with the pinned dtype."""
        ans = self.request("embed_texts", texts=list(texts))
        return from_b64(ans["data"], ans["dims"])

    def preprocess(self, paths: list[Path]) -> np.ndarray:
        ans = self.request("preprocess", paths=[str(p) for p in paths])
        return from_b64(ans["data"], ans["dims"])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
