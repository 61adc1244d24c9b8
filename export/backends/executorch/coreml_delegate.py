"""The Core ML delegate of a ``.pte``, read back and run in our MIL executor.

The CoreMLBackend's processed blob (executorch 1.5.1, ``coreml_preprocess.py``) is a directory tree
(``lowered_module/{model.mlpackage/..., metadata.json, debug_info.json}``) flattened by its ``inmemoryfs``:
the files' bytes at aligned offsets from 0, then the tree as JSON written *reversed* at the end of the blob
(``{"nodes": [{"name", "kind": 0 file | 1 directory, "dataRegion": {"offset", "size"}, "children": {name:
index}}, ...]}``, children listed before their parent, the root last). We parse it ourselves (the blob is
untrusted input): names are single path components, regions lie inside the blob, a child's index precedes
its parent's, and nothing is written outside one temporary directory.

Numeric verification covers a program whose ``forward`` is exactly one delegate call from the plan's inputs to
its outputs (what our encoders lower to: 0 portable ops). A graph split into several Core ML partitions with
portable kernels between them is checked structurally (every partition's program loads) and reported as
not numerically verified, naming the portable operators.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobileclip_export.export.spec import Runner, RuntimeUnavailable

BACKEND_ID = "CoreMLBackend"
_MAX_NODES = 10_000
_MAX_DEPTH = 16
_TAIL = 1 << 22  # the reversed tree JSON is a few kB; 4 MB bounds the search for its end
# ct.target enum values as stored in the min_deployment_target compile spec
_TARGETS = {6: "iOS15", 7: "iOS16", 8: "iOS17", 9: "iOS18", 10: "iOS26"}


class DelegatePayloadError(ValueError):
    """The delegate payload is not a well-formed flattened Core ML model directory."""


@dataclass
class CoreMLPartition:
    index: int  # position among the plan's delegates
    files: dict[str, bytes | None]  # relative POSIX path -> bytes (None: a directory)
    compile_specs: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def package_prefix(self) -> str:
        names = {p.split("/")[0] for p in self.files}
        return "model.mlpackage" if "model.mlpackage" in names else "model.mlmodelc"

    def settings(self) -> dict[str, Any]:
        """Compute precision / units and deployment target, as the delegate will run them."""
        target = self.compile_specs.get("min_deployment_target", "")
        return {
            # float16 is the backend's default when the spec is absent
            "compute_precision": self.compile_specs.get("model_compute_precision", "float16"),
            "compute_units": self.compile_specs.get("compute_units", "all"),
            "minimum_deployment_target": _TARGETS.get(int(target), target) if target.isdigit() else None,
            "model_type": self.compile_specs.get("model_type", "model"),
            "inputs": self.metadata.get("inputNames"),
            "outputs": self.metadata.get("outputNames"),
        }


# ---------------------------------------------------------------- the flattened directory
def _tree(blob: bytes) -> list[dict[str, Any]]:
    tail = blob[-_TAIL:][::-1].decode("latin-1")  # 1 byte = 1 char, so indices stay byte offsets
    if not tail.startswith("{"):
        raise DelegatePayloadError("no directory tree at the end of the payload")
    try:
        tree, _ = json.JSONDecoder().raw_decode(tail)
    except json.JSONDecodeError as err:
        raise DelegatePayloadError(f"the directory tree does not parse ({err.msg})") from None
    nodes = tree.get("nodes") if isinstance(tree, dict) else None
    if not isinstance(nodes, list) or not 0 < len(nodes) <= _MAX_NODES:
        raise DelegatePayloadError("the directory tree has no nodes")
    return nodes


def _name(node: Any) -> str:
    name = node.get("name") if isinstance(node, dict) else None
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise DelegatePayloadError(f"invalid entry name {name!r}")
    return name


def unflatten(blob: bytes) -> dict[str, bytes | None]:
    """The files (bytes) and directories (None) of a flattened directory, keyed by their path below its
    root. Directories are kept because an empty one matters: a package's ``weights`` folder is named by its
    manifest even when the program has no weight file."""
    nodes = _tree(blob)
    paths: dict[int, dict[str, bytes | None]] = {}  # node index -> entries below it (relative to the node)
    for i, node in enumerate(nodes):
        _name(node)
        if node.get("kind") == 0:
            region = node.get("dataRegion") or {}
            off, size = region.get("offset"), region.get("size")
            if not (isinstance(off, int) and isinstance(size, int) and 0 <= off and 0 <= size):
                raise DelegatePayloadError(f"file {node['name']!r} has no valid data region")
            if off + size > len(blob):
                raise DelegatePayloadError(f"file {node['name']!r} extends past the payload ({off}+{size})")
            paths[i] = {"": blob[off : off + size]}
        elif node.get("kind") == 1:
            children = node.get("children")
            if not isinstance(children, dict):
                raise DelegatePayloadError(f"directory {node['name']!r} has no children map")
            paths[i] = {"": None}
            for child_name, j in children.items():
                if not (isinstance(j, int) and 0 <= j < i) or j not in paths or _name(nodes[j]) != child_name:
                    raise DelegatePayloadError(f"directory {node['name']!r}: bad child {child_name!r}")
                for sub, data in paths.pop(j).items():
                    rel = f"{child_name}/{sub}" if sub else child_name
                    if rel.count("/") >= _MAX_DEPTH:
                        raise DelegatePayloadError("the directory tree is too deep")
                    paths[i][rel] = data
        else:
            raise DelegatePayloadError(f"entry {node['name']!r} has unknown kind {node.get('kind')!r}")
    root = paths.get(len(nodes) - 1)
    if root is None or nodes[-1].get("kind") != 1:
        raise DelegatePayloadError("the last node is not the root directory")
    root.pop("", None)
    return root


# ---------------------------------------------------------------- the .pte side
def _program(data: bytes) -> Any:
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(data)
    return getattr(program, "program", program)


def _delegate_bytes(program: Any, ref: Any) -> bytes:
    if int(getattr(ref.location, "value", ref.location)) != 0:  # DataLocation.INLINE
        raise DelegatePayloadError("delegate payload stored outside the program (not supported)")
    if not 0 <= ref.index < len(program.backend_delegate_data):
        raise DelegatePayloadError(f"delegate payload index {ref.index} out of range")
    return bytes(program.backend_delegate_data[ref.index].data)


def coreml_partitions(data: bytes) -> tuple[list[CoreMLPartition], dict[str, Any]]:
    """Every CoreMLBackend partition of ``forward`` unflattened, and the plan's shape: how many
    instructions and which portable operators run outside the delegates (``whole_graph``: one delegate call,
    nothing else)."""
    program = _program(data)
    plan = next((p for p in program.execution_plan if p.name == "forward"), None)
    if plan is None:
        raise DelegatePayloadError("no 'forward' method")
    parts = []
    for i, d in enumerate(plan.delegates):
        if d.id != BACKEND_ID:
            continue
        files = unflatten(_delegate_bytes(program, d.processed))
        specs = {c.key: bytes(c.value).decode("utf-8", "replace") for c in d.compile_specs}
        try:
            meta = json.loads(files.get("metadata.json") or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DelegatePayloadError("the partition's metadata.json does not parse") from None
        parts.append(CoreMLPartition(i, files, specs, meta if isinstance(meta, dict) else {}))
    kinds = [type(ins.instr_args).__name__ for chain in plan.chains for ins in chain.instructions]
    kernels = sorted(
        {
            plan.operators[ins.instr_args.op_index].name
            for chain in plan.chains
            for ins in chain.instructions
            if type(ins.instr_args).__name__ == "KernelCall"
        }
    )
    shape = {
        "instructions": len(kinds),
        "delegate_calls": kinds.count("DelegateCall"),
        "portable_operators": kernels,
        "whole_graph": kinds == ["DelegateCall"] and len(plan.delegates) == 1 and len(parts) == 1,
    }
    return parts, shape


def materialize(part: CoreMLPartition, into: Path) -> Path:
    """Write the partition's model package below ``into`` (a directory we created); its path."""
    root = into.resolve()
    for rel, data in part.files.items():
        target = (root / rel).resolve()
        if root not in target.parents:  # names were validated; this is the second lock
            raise DelegatePayloadError(f"entry {rel!r} resolves outside the extraction directory")
        if data is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    package = root / part.package_prefix
    if not package.is_dir():
        raise DelegatePayloadError("the partition holds no model.mlpackage")
    return package


def check_partitions(data: bytes) -> tuple[dict[str, Any], list[str]]:
    """Structural facts for the manifest and problems: each partition unflattens and its program loads."""
    from mobileclip_export.export.backends.coreml.mil import MilExecutorError, load_program

    try:
        parts, shape = coreml_partitions(data)
    except DelegatePayloadError as err:
        return {}, [f"Core ML delegate payload is corrupt: {err}"]
    facts: dict[str, Any] = {**shape, "partitions": [p.settings() for p in parts]}
    problems: list[str] = []
    for p in parts:
        with tempfile.TemporaryDirectory(prefix="mce-coreml-") as tmp:
            try:
                load_program(materialize(p, Path(tmp)))
            except (DelegatePayloadError, MilExecutorError) as err:
                problems.append(f"Core ML delegate partition {p.index}: program does not load: {err}")
    return facts, problems


class DelegateRunner(Runner):
    """Runs the single Core ML partition's program (Apple's runtime on macOS, our MIL executor elsewhere)."""

    def __init__(self, path: Path, options: Mapping[str, Any]):
        from mobileclip_export.export.backends.coreml.runners import load_runner

        parts, shape = coreml_partitions(Path(path).read_bytes())
        if not shape["whole_graph"]:
            ops = ", ".join(shape["portable_operators"]) or "none"
            raise RuntimeUnavailable(
                f"forward has {shape['delegate_calls']} delegate call(s) and {shape['instructions']} "
                f"instruction(s) (portable operators: {ops}): only a graph lowered whole to one Core ML "
                "partition is verified numerically; each partition's program was checked to load"
            )
        settings = parts[0].settings()
        self._tmp = Path(tempfile.mkdtemp(prefix="mce-coreml-"))
        try:
            self.inner = load_runner(materialize(parts[0], self._tmp), settings["compute_units"])
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self.is_deployment_runtime = self.inner.is_deployment_runtime
        self.label = (
            f"{self.inner.label}, on the Core ML program extracted from the {BACKEND_ID} delegate "
            f"(compute precision {settings['compute_precision']}, compute units {settings['compute_units']})"
        )

    def run(self, inputs: Mapping[str, Any]) -> Any:
        return self.inner.run(inputs)

    def close(self) -> None:
        self.inner.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
