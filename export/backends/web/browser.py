"""Headless Chromium running transformers.js on onnxruntime-web (WASM) against a web folder.

A throwaway HTTP server on 127.0.0.1 (random port, stopped by us) serves only four roots: the page
(``js/browser.*``), the transformers.js bundle, onnxruntime-web's wasm files, and the folder under test; it
sends COOP/COEP headers so WASM threads are allowed, and records which model files the page fetched (the
dtype pin test reads them), per run: the page GETs ``/mark?run=N`` before run N. The page POSTs its result
to ``/result``; Chromium is then stopped by its pid.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mobileclip_export.errors import ExportFailure

from .runtime import JS_DIR, ORT_WEB_DIST, TRANSFORMERS_DIR, chromium_binary

log = logging.getLogger(__name__)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
_TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".html": "text/html",
    ".json": "application/json",
}


class _State:
    def __init__(self, roots: dict[str, Path], job: dict[str, Any]) -> None:
        self.roots, self.job, self.model_name = roots, json.dumps(job).encode(), str(job["model"])
        self.result: dict[str, Any] | None = None
        self.fetched: list[tuple[int, str]] = []  # (run index the page last marked, file)
        self.run = -1
        self.done = threading.Event()


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet: the result says what happened
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/octet-stream") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?")[0]
            if path == "/job":
                return self._send(200, state.job, "application/json")
            if path == "/mark":
                run = self.path.partition("run=")[2]
                state.run = int(run) if run.isdigit() else -1
                return self._send(200, b"ok", "text/plain")
            root_name, _, rest = path.lstrip("/").partition("/")
            if root_name == "models":  # only the folder under test, never its siblings
                name, _, rest = rest.partition("/")
                rest = rest if name == state.model_name else "\0"
            root = state.roots.get(root_name)
            file = (root / rest).resolve() if root and "\0" not in rest else None
            if root is None or file is None or not file.is_relative_to(root.resolve()) or not file.is_file():
                return self._send(404, b"not found", "text/plain")
            if root_name == "models":
                state.fetched.append((state.run, rest))
            self._send(200, file.read_bytes(), _TYPES.get(file.suffix, "application/octet-stream"))

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._send(200, b"ok", "text/plain")
            if self.path == "/result":
                state.result = json.loads(body or b"{}")
                state.done.set()

    return Handler


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Chromium and its child processes (their own process group, started by us)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_in_chromium(folder: Path, job: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """Serve ``folder`` as ``/models/<name>/``, run ``job`` in the page, return its result plus ``fetched``
    (model-folder files the page requested) and ``fetched_by_run`` (the same per job run, by index).
    ExportFailure when Chromium cannot run it."""
    binary = chromium_binary()
    if binary is None:
        raise ExportFailure(
            "web: chromium is not installed (apt-get install -y --no-install-recommends chromium)"
        )
    folder = Path(folder).resolve()
    roots = {"page": JS_DIR, "tf": TRANSFORMERS_DIR / "dist", "ort": ORT_WEB_DIST, "models": folder}
    state = _State(roots, {**job, "model": folder.name})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/page/browser.html"
    with tempfile.TemporaryDirectory(prefix="mobileclip-chromium-") as profile:
        cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            if not state.done.wait(timeout):
                raise ExportFailure(f"web: headless Chromium gave no result within {timeout:.0f} s")
        finally:
            _stop(proc)
            server.shutdown()
            server.server_close()
    result = state.result or {}
    if "fatal" in result:
        raise ExportFailure(f"web: the browser page failed: {result['fatal'].splitlines()[0]}")
    by_run: dict[int, list[str]] = {}
    for run, rest in state.fetched:
        by_run.setdefault(run, []).append(rest)
    return {
        **result,
        "fetched": sorted({rest for _, rest in state.fetched}),
        "fetched_by_run": {run: sorted(set(files)) for run, files in by_run.items()},
    }


def chromium_version() -> str | None:
    binary = chromium_binary()
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip() or None
