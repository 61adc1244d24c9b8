"""The manifest's declared shape: types, required keys and ranges, checked before any field is used.

A spec checks one JSON value and raises ``SchemaError`` naming the first bad field as a path
(``artifacts[2].path``). Objects accept keys they do not declare (a newer minor version may add some);
declared keys must have the declared type. ``RelPath`` is the syntactic half of path safety (relative, no
``..`` that climbs out); the reader adds the filesystem half (symlinks resolved inside the bundle root).
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_MAJOR = 1  # the newest major manifest version this reader understands (manifest.SCHEMA_VERSION)


class SchemaError(ValueError):
    def __init__(self, where: str, message: str) -> None:
        where = where or "(top level)"
        super().__init__(f"{where}: {message}")
        self.where = where


def describe(value: Any) -> str:
    """A short rendering of a bad value for an error line (never the whole of a large object)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Spec:
    name = "a value"

    def check(self, value: Any, where: str) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class AnyValue(Spec):
    name = "any value"

    def check(self, value: Any, where: str) -> None:
        pass


@dataclass(frozen=True)
class Str(Spec):
    max_len: int = 4096
    pattern: str | None = None
    name = "a string"

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, str):
            raise SchemaError(where, f"expected {self.name}, got {describe(value)}")
        if len(value) > self.max_len:
            raise SchemaError(where, f"string of {len(value)} characters (at most {self.max_len})")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise SchemaError(where, f"{describe(value)} does not match {self.pattern}")


@dataclass(frozen=True)
class RelPath(Str):
    """A path relative to the bundle root, '/'-separated, that stays inside it once normalized."""

    max_len: int = 1024

    def check(self, value: Any, where: str) -> None:
        super().check(value, where)
        problem = relpath_problem(value)
        if problem:
            raise SchemaError(where, f"{describe(value)} {problem}")


def relpath_problem(rel: str) -> str | None:
    """Why ``rel`` is not a safe bundle-relative path, or None."""
    if not rel or "\0" in rel or "\\" in rel:
        return "is not a bundle-relative path (empty, NUL or backslash)"
    if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        return "is an absolute path; bundle paths are relative to the bundle folder"
    norm = posixpath.normpath(rel)
    if norm in (".", "..") or norm.startswith("../"):
        return "leaves the bundle folder ('..')"
    return None


@dataclass(frozen=True)
class Int(Spec):
    lo: int = 0
    hi: int = 2**63 - 1
    name = "an integer"

    def check(self, value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(where, f"expected {self.name}, got {describe(value)}")
        if not self.lo <= value <= self.hi:
            raise SchemaError(where, f"{_short_int(value)} is out of range [{self.lo}, {self.hi}]")


def _short_int(value: int) -> str:
    return str(value) if abs(value) < 10**18 else f"a {len(str(abs(value)))}-digit number"


@dataclass(frozen=True)
class Num(Spec):
    lo: float = -1e30
    hi: float = 1e30
    name = "a number"

    def check(self, value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(where, f"expected {self.name}, got {describe(value)}")
        if isinstance(value, int) and abs(value) > 10**30:
            raise SchemaError(where, f"{_short_int(value)} is out of range [{self.lo:g}, {self.hi:g}]")
        if not math.isfinite(value) or not self.lo <= value <= self.hi:
            raise SchemaError(where, f"{value!r} is out of range [{self.lo:g}, {self.hi:g}]")


@dataclass(frozen=True)
class Bool(Spec):
    name = "true or false"

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, bool):
            raise SchemaError(where, f"expected {self.name}, got {describe(value)}")


@dataclass(frozen=True)
class Nullable(Spec):
    inner: Spec

    def check(self, value: Any, where: str) -> None:
        if value is not None:
            self.inner.check(value, where)


@dataclass(frozen=True)
class OneOf(Spec):
    options: tuple[Spec, ...]

    def check(self, value: Any, where: str) -> None:
        for spec in self.options:
            try:
                spec.check(value, where)
                return
            except SchemaError:
                continue
        names = " or ".join(s.name for s in self.options)
        raise SchemaError(where, f"expected {names}, got {describe(value)}")


@dataclass(frozen=True)
class List(Spec):
    item: Spec
    max_len: int = 100_000
    name = "a list"

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise SchemaError(where, f"expected {self.name}, got {describe(value)}")
        if len(value) > self.max_len:
            raise SchemaError(where, f"{len(value)} items (at most {self.max_len})")
        for i, item in enumerate(value):
            self.item.check(item, f"{where}[{i}]")


@dataclass(frozen=True)
class Map(Spec):
    """An object with free keys: every key checked by ``key``, every value by ``value``."""

    value: Spec
    key: Spec = Str(max_len=256)
    name = "an object"

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise SchemaError(where, f"expected {self.name}, got {describe(value)}")
        for k, v in value.items():
            self.key.check(k, f"{where}[{k!r}]")
            self.value.check(v, f"{where}[{k!r}]")


@dataclass(frozen=True)
class Obj(Spec):
    fields: Mapping[str, Spec]
    required: tuple[str, ...] = ()
    name = "an object"

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise SchemaError(where, f"expected {self.name}, got {describe(value)}")
        for key in self.required:
            if key not in value:
                raise SchemaError(where, f"missing required key {key!r}")
        for key, spec in self.fields.items():
            if key in value:
                spec.check(value[key], f"{where}.{key}" if where else key)


def validate(spec: Spec, value: Any, label: str = "") -> None:
    """Raise ``SchemaError`` naming the first bad field of ``value`` (``label`` prefixes the path)."""
    spec.check(value, label)


# ---- manifest schema, version 1 (what export/bundle/manifest.py writes; older bundles are a subset) ----

SHA256 = Str(pattern=r"[0-9a-f]{64}")
NAME = Str(max_len=200, pattern=r"[A-Za-z0-9][A-Za-z0-9_.+\-]*")  # also a safe single path component
TEXT = Str(max_len=1_000_000)
SEED = Int(-(2**63), 2**64 - 1)  # what torch.manual_seed takes; --seed itself is not range-checked
DIM = OneOf((Int(-1, 2**31 - 1), Str(max_len=64)))  # a dynamic dimension: -1 (onnx, web) or a name

TENSOR = Obj(
    {"name": Str(max_len=256), "shape": List(Nullable(DIM), 16), "dtype": Str(max_len=32)}, required=("name",)
)

RECORD = Obj(
    {
        "target": Str(max_len=64),
        "encoder": Str(max_len=64),
        "precision": Str(max_len=64),
        "path": Nullable(RelPath()),
        "sha256": Nullable(SHA256),
        "bytes": Nullable(Int(0, 2**53)),
        "inputs": List(TENSOR, 64),
        "outputs": List(TENSOR, 64),
        "parity": Map(AnyValue()),
        "status": Str(max_len=32),
        "error": Nullable(TEXT),
        "seconds": Map(Num(0, 1e9)),
        "notes": List(TEXT),
        "details": Obj({"tokenizer_files": List(RelPath(), 256)}),
        "options": Map(AnyValue()),
        "batch": Nullable(
            Obj(
                {
                    "sizes": Nullable(List(Int(1, 2**31 - 1), 64)),
                    "dynamic": Bool(),
                    "verified": List(Int(1, 2**31 - 1), 64),
                }
            )
        ),
    },
    required=("target", "encoder", "precision"),
)

MANIFEST_V1 = Obj(
    {
        "schema_version": OneOf((Int(0, 10**6), Str(max_len=32, pattern=r"\d+(\.\d+)*"))),
        "model": NAME,
        "weights": Obj(
            {
                "random_init": Bool(),
                "seed": SEED,
                "checkpoint": Nullable(Str()),
                "sha256": Nullable(SHA256),
                "source": Str(),
            }
        ),
        "random_init": Bool(),
        "embed_dim": Nullable(Int(1, 1 << 16)),
        "image_size": Nullable(Int(1, 1 << 15)),
        "context_length": Nullable(Int(1, 1 << 14)),
        "preprocessing": Map(AnyValue()),
        "tokenizer": Map(AnyValue()),
        "logit_scale": Obj({"log": Num(), "value": Num(0.0, 1e4), "max": Num()}, ("value",)),
        "export_args": Obj(
            {
                "seed": SEED,
                "reduced": Bool(),
                "checkpoint": Nullable(Str()),
                "precision": Nullable(Str(max_len=256)),
            }
        ),
        "tool_versions": Map(AnyValue()),
        "golden": Obj({"index": RelPath(), "images": List(Str()), "texts": List(TEXT)}),
        "files": Map(SHA256, key=RelPath()),
        "classifier": Map(AnyValue()),
        "ok": Bool(),
        "artifacts": List(RECORD),
    },
    required=("model", "artifacts"),
)


@dataclass(frozen=True)
class Version:
    major: int
    text: str = field(compare=False)


def schema_version(manifest: Any) -> Version:
    """The manifest's ``schema_version`` (absent in none we wrote; treated as 1); SchemaError if malformed."""
    if not isinstance(manifest, dict):
        raise SchemaError("(top level)", f"expected an object, got {describe(manifest)}")
    raw = manifest.get("schema_version", 1)
    validate(Obj({"schema_version": MANIFEST_V1.fields["schema_version"]}), {"schema_version": raw})
    text = str(raw)
    return Version(int(text.split(".")[0]), text)
