"""The documentation cannot drift from the code: links resolve, the README stays a front door, and the tables
that follow the code (targets x precisions, models, CLI flags, tolerances, MIL ops, extras) match it.

Fast by design: registries and parsers only, no model is built.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_CHARS = 12_000
# [text](target) and ![alt](target); the target ends at whitespace or ")" (an optional "title" is ignored).
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def doc_files() -> list[Path]:
    return [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Relative links in ``path`` (outside code blocks) whose file does not exist; the anchor is ignored."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    bad = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # absolute URL (https:, mailto:) or an in-page anchor
        file_part = target.split("#", 1)[0]
        if not (path.parent / file_part).exists():
            bad.append(f"{path.relative_to(root)}: {target}")
    return bad


def test_every_relative_link_resolves() -> None:
    bad = [b for path in doc_files() for b in broken_links(path)]
    assert not bad, "broken links:\n" + "\n".join(bad)
    assert (ROOT / "docs").is_dir() and len(doc_files()) >= 12  # README, CONTRIBUTING and the docs pages


def test_the_link_check_catches_a_broken_link(tmp_path) -> None:
    (tmp_path / "there.md").write_text("x")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#part) [web](https://example.org/x) ![img](missing.png)\n"
        "```\n[in code](ignored.md)\n```\n[gone](docs/gone.md#a)\n"
    )
    assert broken_links(page, tmp_path) == ["page.md: missing.png", "page.md: docs/gone.md#a"]


def test_readme_is_a_front_door() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text) <= MAX_README_CHARS, f"README.md has {len(text)} characters (at most {MAX_README_CHARS})"


def test_readme_first_shell_block_is_the_two_commands() -> None:
    """`.ci/run` runs the second command word for word; the first is the product's one-line demo."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert block
    lines = block.group(1).strip().splitlines()
    web = "bash export/backends/web/install.sh"  # npm packages and Chromium: the web target's runtimes
    assert lines == [
        f"python3.11 -m venv .venv && .venv/bin/pip install -e '.[all]' && {web} "
        "&& .venv/bin/mobileclip-export --model mobileclip_s0 --target all --force",
        f"python3.11 -m venv .venv && .venv/bin/pip install -e '.[all,test]' && {web} && .venv/bin/pytest",
    ]
    assert lines[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def readme_targets() -> dict[str, tuple[list[str], str]]:
    """{target: (precisions, default)} from the README's targets table (default in bold)."""
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `([a-z0-9_-]+)` \| .*? \| (?:`\.[a-z]+`|folder) \| ([^|]+) \|", line)
        if m:
            cells = [c.strip() for c in m.group(2).split(",")]
            default = [c.strip("*") for c in cells if c.startswith("**")]
            rows[m.group(1)] = ([c.strip("*") for c in cells], default[0] if len(default) == 1 else "")
    return rows


def test_readme_targets_table_lists_every_precision_of_every_target() -> None:
    from mobileclip_export.export.registry import all_targets

    expected = {name: (list(t.precisions), t.default_precision) for name, t in all_targets().items()}
    assert readme_targets() == expected, "run: python docs/generate.py"


def models_table_names() -> set[str]:
    text = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    table = text[text.index("| name |") :].split("\n\n", 1)[0]
    names: set[str] = set()
    for line in table.splitlines()[2:]:
        names.update(re.findall(r"`([a-z0-9_]+)`", line.split("|")[1]))
    return names


def test_models_table_lists_exactly_the_registered_models() -> None:
    from mobileclip_export.models import list_models

    assert models_table_names() == set(list_models())


def test_cli_reference_names_every_flag_of_every_command() -> None:
    from mobileclip_export.cli import COMMANDS, command_parser

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## `([a-z-]+)`\n(.*?)(?=^## |\Z)", text, re.S | re.M))
    assert set(sections) == set(COMMANDS)
    common = {"-h", "--help", "--version", "-v", "--verbose", "-q", "--quiet"}
    missing = [
        f"{name} {flag}"
        for name in COMMANDS
        for action in command_parser(name)._actions
        for flag in action.option_strings
        if flag not in common and f"`{flag}`" not in sections[name]
    ]
    assert not missing, "flags missing from docs/cli.md (run python docs/generate.py): " + ", ".join(missing)


def test_generated_blocks_are_up_to_date() -> None:
    stale = _generator().stale()
    assert not stale, f"stale generated docs: {stale}; run: python docs/generate.py"


def test_the_generator_notices_a_stale_block(tmp_path) -> None:
    gen = _generator()
    text = "before\n<!-- generated:x -->\nold\n<!-- /generated:x -->\nafter\n"
    assert gen.render(text, "x", "new") == "before\n<!-- generated:x -->\nnew\n<!-- /generated:x -->\nafter\n"
    with pytest.raises(SystemExit):
        gen.render("no markers here", "x", "new")
