"""Contracts every registered target must keep, checked over the registry (not per backend), and shown to
fail on a deliberately broken toy: names and aliases, extras in pyproject, dependency and option errors."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from mobileclip_export.errors import MissingDependencyError, RegistryError, UsageError
from mobileclip_export.export.registry import all_targets, build_registry, get_target, target_modules
from mobileclip_export.export.target import Target

ROOT = Path(__file__).resolve().parents[1]
TARGETS = list(all_targets().values())
IDS = [t.name for t in TARGETS]


def _toy_target(name: str, *, aliases: tuple[str, ...] = (), extra: str = "onnx") -> Target:
    cls = type(
        f"Toy{name.title()}",
        (Target,),
        {
            "name": name,
            "aliases": aliases,
            "extension": ".toy",
            "extra": extra,
            "export": lambda self, enc, precision, options, path: None,
            "load": lambda self, path, options: None,
        },
    )
    return cls()


def extra_problems(targets: list[Target], pyproject: dict) -> list[str]:
    """Targets whose pip extra is missing from pyproject or from the ``all`` extra."""
    extras = pyproject["project"]["optional-dependencies"]
    in_all = {name for spec in extras["all"] for name in spec.split("[", 1)[1].rstrip("]").split(",")}
    problems = []
    for t in targets:
        if t.extra not in extras:
            problems.append(f"target {t.name!r}: extra {t.extra!r} is not in pyproject")
        elif t.extra not in in_all:
            problems.append(f"target {t.name!r}: extra {t.extra!r} is not part of 'all'")
    return problems


# ------------------------------------------------------------------ names and aliases
def test_every_name_and_alias_resolves_to_its_target() -> None:
    for t in TARGETS:
        for key in (t.name, *t.aliases, t.name.upper()):
            assert get_target(key) is t


def test_alias_collision_raises() -> None:
    first, second = _toy_target("alpha", aliases=("a",)), _toy_target("beta", aliases=("A",))
    with pytest.raises(RegistryError, match="'beta' claims 'a', already taken by target 'alpha'"):
        build_registry([first, second])
    with pytest.raises(RegistryError, match="already taken by target 'alpha'"):
        build_registry([first, _toy_target("alpha")])
    with pytest.raises(RegistryError, match="'all'"):
        build_registry([_toy_target("gamma", aliases=("all",))])
    with pytest.raises(RegistryError, match=f"already taken by target {TARGETS[0].name!r}"):
        build_registry(
            [*TARGETS, _toy_target("delta", aliases=(TARGETS[0].aliases or (TARGETS[0].name,))[:1])]
        )


# ------------------------------------------------------------------ extras
def test_every_extra_is_in_pyproject_and_in_all() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert extra_problems(TARGETS, pyproject) == []


def test_extra_contract_catches_a_missing_extra() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert extra_problems([_toy_target("nowhere", extra="no-such-extra")], pyproject) == [
        "target 'nowhere': extra 'no-such-extra' is not in pyproject"
    ]
    pyproject["project"]["optional-dependencies"]["lonely"] = ["x"]
    assert extra_problems([_toy_target("outside", extra="lonely")], pyproject) == [
        "target 'outside': extra 'lonely' is not part of 'all'"
    ]


# ------------------------------------------------------------------ dependency and option errors
@pytest.mark.parametrize("target", TARGETS, ids=IDS)
def test_missing_dependency_names_the_extra(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    assert target.requires, f"target {target.name!r} declares no import it needs"
    real = importlib.util.find_spec
    for module in target.requires:
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda n, *a, m=module: None if n == m else real(n, *a)
        )
        with pytest.raises(
            MissingDependencyError, match=rf"pip install 'mobileclip-export\[{target.extra}\]'"
        ):
            target.ensure_available()


@pytest.mark.parametrize("target", TARGETS, ids=IDS)
def test_option_and_precision_errors_name_the_problem(target: Target) -> None:
    assert target.default_precision in target.precisions
    opts = target.validate(target.default_precision, {})
    assert set(opts) == {o.name for o in target.options}
    with pytest.raises(UsageError, match=f"does not support precision 'int3'.*{target.precisions[0]}"):
        target.validate("int3", {})
    with pytest.raises(UsageError, match=f"--no-such-option is not supported by target '{target.name}'"):
        target.validate(target.default_precision, {"no_such_option": 1})


# ------------------------------------------------------------------ discovery: adding a target is one file
def _toy_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    pkg = tmp_path / "toy_backends"
    (pkg / "packaged").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "single.py").write_text("from somewhere import X\nTARGET = X\n")
    (pkg / "packaged" / "__init__.py").write_text("TARGET: type = object\n")
    (pkg / "helper.py").write_text("raise ImportError('a helper is never imported by discovery')\n")
    (pkg / "_private.py").write_text("TARGET = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toy_backends", None)
    import toy_backends

    return toy_backends


def test_discovery_finds_modules_and_packages_declaring_target(tmp_path, monkeypatch) -> None:
    toy = _toy_backends(tmp_path, monkeypatch)
    assert target_modules(toy) == ["toy_backends.packaged", "toy_backends.single"]


def test_a_new_backend_file_becomes_a_target(tmp_path, monkeypatch) -> None:
    """The CONTRIBUTING recipe for a target, end to end: one file with a Target subclass and TARGET."""
    pkg = tmp_path / "more_backends"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "toyrt.py").write_text(
        textwrap.dedent(
            """
            from mobileclip_export.export.target import Target

            class ToyTarget(Target):
                name = "toyrt"
                aliases = ("toy",)
                extension = ".toy"
                extra = "onnx"
                requires = ("numpy",)

                def export(self, enc, precision, options, path): ...
                def load(self, path, options): ...

            TARGET = ToyTarget
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import more_backends

    modules = [importlib.import_module(n) for n in target_modules(more_backends)]
    found, table = build_registry([*TARGETS, *(m.TARGET() for m in modules)])
    assert list(found)[-1] == "toyrt" and table["toy"] == "toyrt"
    found["toyrt"].ensure_available()


# ------------------------------------------------------------------ capabilities and option specs
def capability_problems(targets: list[Target]) -> list[str]:
    """A multi-function target implements it and offers the switch; a switch without the capability lies."""
    problems = []
    for t in targets:
        switch = any(o.name == "multifunction" for o in t.options)
        implemented = type(t).export_multifunction is not Target.export_multifunction
        if t.supports_multifunction and not (switch and implemented):
            problems.append(f"target {t.name!r} supports multifunction without the option or the method")
        if not t.supports_multifunction and (switch or implemented):
            problems.append(f"target {t.name!r} offers multifunction without supports_multifunction")
    return problems


def test_multifunction_is_a_declared_capability() -> None:
    assert capability_problems(TARGETS) == []
    assert any(t.supports_multifunction for t in TARGETS)
    claims = _toy_target("claims")
    type(claims).supports_multifunction = True
    assert capability_problems([claims]) == [
        "target 'claims' supports multifunction without the option or the method"
    ]
    hidden = _toy_target("hidden")
    type(hidden).export_multifunction = lambda self, encs, precision, options, path: None
    assert capability_problems([hidden]) == [
        "target 'hidden' offers multifunction without supports_multifunction"
    ]
    with pytest.raises(UsageError, match="'plain' does not support --multifunction"):
        _toy_target("plain").export_multifunction([], "fp32", {}, Path("x"))


@pytest.mark.parametrize("target", TARGETS, ids=IDS)
def test_integer_options_reject_out_of_range_values(target: Target) -> None:
    for spec in target.options:
        if spec.minimum is None and spec.maximum is None:
            continue
        bad: list = ["3", True]
        if spec.minimum is not None:
            bad.append(spec.minimum - 1)
        if spec.maximum is not None:
            bad.append(spec.maximum + 1)
        for value in bad:
            with pytest.raises(UsageError, match=f"{spec.flag} {value!r} is not valid for target"):
                target.validate(target.default_precision, {spec.name: value})


def test_thread_options_reject_zero() -> None:
    """Every target that takes a thread count needs at least one (onnx took 0 before ranges existed)."""
    with_threads = [t for t in TARGETS if any(o.name == "num_threads" for o in t.options)]
    assert with_threads
    for t in with_threads:
        with pytest.raises(UsageError, match="expected a positive integer"):
            t.validate(t.default_precision, {"num_threads": 0})
