"""--json keeps stdout clean: converters' prints (Python and C-level writes to fd 1) are routed to stderr."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mobileclip_export.commands import export as cli
from mobileclip_export.export.registry import all_targets

from _toys import use_toy_models

SCRIPT = """
import ctypes, os, sys
from mobileclip_export.stdio import stdout_to_stderr
print("before", flush=True)
with stdout_to_stderr():
    print("python print")
    os.write(1, b"fd write\\n")
    libc = ctypes.CDLL(None)
    libc.printf(b"libc printf\\n")  # buffered by libc: must be flushed before fd 1 is restored
print("after")
"""


def test_stdout_to_stderr_catches_python_fd_and_libc_writes() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["before", "after"]
    assert {"python print", "fd write", "libc printf"} <= set(proc.stderr.splitlines())


def test_export_all_targets_json_stdout_parses(capfd, tmp_path, monkeypatch) -> None:
    """Every registered target (reduced to toy models), with fd-level capture: litert-torch alone prints
    dozens of lines to stdout during a conversion."""
    use_toy_models(monkeypatch)
    argv = ["--model", "mobileclip_s0", "--target", "all", "--encoder", "image", "--json"]
    code = cli.main([*argv, "--output-dir", str(tmp_path)])
    out, err = capfd.readouterr()
    doc = json.loads(out)  # the whole of stdout is one JSON document
    assert code == 0, err
    installed = [n for n, t in all_targets().items() if not t.missing_dependencies()]
    assert [a["target"] for a in doc["artifacts"]] == installed
    assert all(a["status"] in ("verified", "unverified") for a in doc["artifacts"]), doc
    if not installed:
        pytest.skip("no target installed")
