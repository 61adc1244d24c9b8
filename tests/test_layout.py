"""The package layout's guardrails: root folders install as `mobileclip_export.*` and never as bare names."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BARE = re.compile(r"^\s*(?:import|from)\s+(models|export|reparam|benchmarks)(?:\.|\s|$)", re.M)
FOLDERS = ["core", "models", "reparam", "export", "benchmarks", "matrix", "library"]
PRODUCT_DIRS = [d for d in FOLDERS if (ROOT / d).is_dir()]
SOURCE_DIRS = [*PRODUCT_DIRS, "tests"]


def test_generic_folder_names_are_not_importable(tmp_path) -> None:
    """A fresh interpreter outside the checkout (what an installed user gets) must not see the bare names.

    Checked in a subprocess: converters and runtimes imported by earlier tests may put the working directory
    (the repository root) on this process's sys.path, which says nothing about the install.
    """
    code = (
        "import importlib.util, json\n"
        "print(json.dumps([n for n in ('models', 'export', 'reparam', 'benchmarks', 'matrix') "
        "if importlib.util.find_spec(n) is not None]))\n"
        "import mobileclip_export.models\n"
    )
    proc = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [], f"bare packages importable: {proc.stdout}"


def test_subpackages_resolve_to_the_root_folders() -> None:
    import mobileclip_export.benchmarks
    import mobileclip_export.export
    import mobileclip_export.models
    import mobileclip_export.reparam

    for mod, folder in [
        (mobileclip_export.models, "models"),
        (mobileclip_export.reparam, "reparam"),
        (mobileclip_export.export, "export"),
        (mobileclip_export.benchmarks, "benchmarks"),
    ]:
        assert Path(mod.__file__).resolve().parent == ROOT / folder


def test_no_bare_imports_of_root_folders() -> None:
    offenders = []
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            for m in BARE.finditer(path.read_text(encoding="utf-8")):
                offenders.append(f"{path.relative_to(ROOT)}: {m.group(0).strip()}")
    assert not offenders, "bare imports (use mobileclip_export.<sub>):\n" + "\n".join(offenders)


def test_no_target_names_outside_backends() -> None:
    """The extension point lives in export/backends/: no other module names a target."""
    names = re.compile(r"""["'](coreml|onnx|executorch|tflite|coreai|litert|mlpackage|pte)["']""")
    offenders = []
    for folder in PRODUCT_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            if "backends" in path.relative_to(ROOT).parts:
                continue
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if names.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "target names outside export/backends/:\n" + "\n".join(offenders)


MAX_FUNCTION_LINES = 60
# Known offenders, each with its owner's pending split; remove an entry once its function is short.
LONG_FUNCTION_EXEMPTIONS: frozenset[tuple[str, str]] = frozenset()  # (file, function): none left


def long_functions(folders: list[str], limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, str, int]]:
    """(file, function, lines) for every function or method longer than ``limit`` lines (def to last line)."""
    found = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > limit:
                        found.append((rel, node.name, length))
    return found


def test_no_function_over_60_lines_outside_tests() -> None:
    offenders = [
        f"{file}: {name} ({n} lines)"
        for file, name, n in long_functions(PRODUCT_DIRS)
        if (file, name) not in LONG_FUNCTION_EXEMPTIONS
    ]
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)


def test_long_function_check_catches_a_long_function(tmp_path, monkeypatch) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert long_functions(["pkg"]) == [("pkg/m.py", "long", MAX_FUNCTION_LINES + 1)]


def test_every_test_module_has_one_area_marker() -> None:
    """The area table in conftest.py covers every test module once, and each area is a registered marker."""
    import tomllib

    from conftest import AREAS

    modules = sorted(p.stem for p in (ROOT / "tests").glob("test_*.py"))
    listed = sorted(m for ms in AREAS.values() for m in ms)
    assert listed == sorted(set(listed)), "a test module is in two areas"
    assert sorted(set(modules) - set(listed)) == [], "test modules without an area in tests/conftest.py"
    assert sorted(set(listed) - set(modules)) == [], "areas list test modules that do not exist"
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert set(AREAS) <= {m.split(":")[0] for m in markers}
