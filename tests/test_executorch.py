"""ExecuTorch backend: lower reduced encoders of every block family, run the .pte in the ExecuTorch runtime
and compare with the train-time PyTorch encoder; delegate census, options, the Core ML delegate off Apple."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from mobileclip_export.errors import UsageError
from mobileclip_export.export.parity import compare
from mobileclip_export.export.registry import get_target
from mobileclip_export.export.spec import EncoderExport, RuntimeUnavailable, TensorSpec
from mobileclip_export.export.tolerances import tolerance_for

from _toys import reduced_encoder_export

pytest.importorskip("executorch")


@pytest.fixture(scope="module")
def target():
    return get_target("executorch")


# per-module cache: encoders are shared by this module's tests only
_reduced = cache(reduced_encoder_export)


def _verify_inputs(enc: EncoderExport) -> np.ndarray:
    if enc.encoder == "image":
        s = enc.image_size
        rand = np.random.default_rng(1).random((1, 3, s, s), dtype=np.float32)
        return np.concatenate([rand, np.full((1, 3, s, s), 0.5, np.float32)])
    from mobileclip_export.models.tokenizer import tokenize

    return tokenize(["", "a dog on a red sofa next to a window"], 77).astype(np.int32)


@torch.no_grad()
def _reference(module: nn.Module, x: np.ndarray) -> np.ndarray:
    return np.concatenate([module(torch.from_numpy(x[i : i + 1])).float().numpy() for i in range(len(x))])


class _Toy(nn.Module):
    """conv+BN+depthwise+SE+attention in ~1k parameters: fast lowering for option/edge-case tests."""

    def __init__(self, fold_bn: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 4, 4)
        self.bn = nn.BatchNorm2d(8) if not fold_bn else nn.Identity()
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Sigmoid())
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(torch.relu(self.conv(x)))  # BN after ReLU: never folded away by a backend
        x = self.dw(x)
        x = x * self.se(x)
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.head(t.mean(1))


def _toy_enc(fold_bn: bool = True) -> EncoderExport:
    m = _Toy(fold_bn).eval()
    if not fold_bn:
        with torch.no_grad():
            m.bn.running_mean.uniform_(-1, 1)
            m.bn.running_var.uniform_(0.5, 2)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return EncoderExport(
        "toy", "image", m, (x,), (TensorSpec("image", (1, 3, 32, 32), "float32"),),
        (TensorSpec("embedding", (1, 6), "float32"),), {"model": "toy"}, 32,
    )  # fmt: skip


# ------------------------------------------------------------------ names, options, dependencies
def test_names_and_defaults(target):
    assert get_target("pte") is target
    assert (target.name, target.order, target.extension, target.extra) == (
        "executorch",
        30,
        ".pte",
        "executorch",
    )
    assert target.validate("fp32", {}) == {
        "delegate": "xnnpack",
        "num_threads": None,
        "image_input": "float-nchw",
        "batch_size": None,
        "dynamic_batch": False,
    }
    assert set(target.versions()) >= {"executorch", "torch"}


@pytest.mark.parametrize(
    "precision, options, needle",
    [
        ("fp32", {"delegate": "vulkan"}, "xnnpack, coreml, portable"),
        ("fp32", {"num_threads": 0}, "positive integer"),
        ("fp16", {"delegate": "portable"}, "only fp32"),
        ("fp32", {"compute_units": "all"}, "--compute-units"),
    ],
)
def test_invalid_requests_are_usage_errors(target, precision, options, needle):
    with pytest.raises(UsageError) as err:
        target.validate(precision, options)
    assert needle in str(err.value)


# ------------------------------------------------------------------ every family, XNNPACK fp32
@pytest.mark.parametrize(
    "model_name, encoder",
    [
        ("mobileclip_s0", "image"),
        # MCi2 repeats MCi0's block types (one more stage of the same blocks): under -m slow
        pytest.param("mobileclip_s2", "image", marks=pytest.mark.slow),
        ("mobileclip_b", "image"),
        ("mobileclip_s0", "text"),
        ("mobileclip_b", "text"),  # the S2 text family (base-512)
    ],
)
def test_xnnpack_fp32_parity(target, tmp_path, model_name, encoder):
    enc, train = _reduced(model_name, encoder)
    path = tmp_path / "m.pte"
    info = target.export(enc, "fp32", target.validate("fp32", {}), path)
    census = info.details["delegation"]
    # The census guard: one XNNPACK subgraph; anything outside it is allow-listed with its reason.
    assert census["delegated_subgraphs"] == 1, census["undelegated"]
    assert census["unexpected"] == [], census["undelegated"]
    outside = set(census["undelegated"])
    assert outside == (set() if encoder == "image" else {"aten_embedding_default", "aten_argmax_default",
        "aten_arange_start_step", "aten_eq_tensor", "dim_order_ops__to_dim_order_copy_default"})  # fmt: skip
    assert info.notes[0].startswith("xnnpack: ") and "getitem" not in info.notes[0]
    checks = target.structural_checks(path, enc)
    assert checks["problems"] == [] and checks["methods"] == ["forward"]
    assert checks["delegates"]["XnnpackBackend"] == census["delegated_subgraphs"]

    runner = target.load(path, {"num_threads": 1})
    assert runner.is_deployment_runtime and "XnnpackBackend, 1 thread)" in runner.label
    from executorch.extension.pybindings import portable_lib

    assert portable_lib._threadpool_get_thread_count() == 1  # --threads reaches the runtime's pool
    x = _verify_inputs(enc)
    stats = compare(_reference(train, x), runner.run({enc.inputs[0].name: x}))
    assert stats.cosine >= 0.99999, stats
    assert stats.violations(tolerance_for("fp32")) == [], stats
    if model_name != "mobileclip_s0":
        return  # the profiler does not depend on the family: S0's image and text encoders check it
    # per-op profile (ETDump + Inspector): XNNPACK operators inside the delegate, the ids' ops outside
    prof = target.profile(path, {enc.inputs[0].name: x[:1]}, 1, 2).summary()
    assert prof["runs"] == 2 and prof["profiled_ms_per_run"] > 0
    assert any(r["op"].startswith("Fully Connected") and not r["outside_delegate"] for r in prof["all"])
    outside = {r["op"] for r in prof["all"] if r["outside_delegate"]}
    assert (outside >= {"embedding.out", "argmax.out"}) if encoder == "text" else outside == set(), outside


def test_xnnpack_fp16_parity(target, tmp_path):
    enc, train = _reduced("mobileclip_s0", "image")
    path = tmp_path / "m16.pte"
    info = target.export(enc, "fp16", target.validate("fp16", {}), path)
    assert info.details["io_dtype"] == "float16" and info.inputs[0].dtype == "float16"
    x = _verify_inputs(enc)
    stats = compare(_reference(train, x), target.load(path, {}).run({"image": x}))
    assert stats.violations(tolerance_for("fp16")) == [], stats
    assert stats.cosine < 1.0 - 1e-9  # it really ran in half precision


class _WideNorm(nn.Module):
    """Token ids -> embedding -> LayerNorm(512) -> mean -> projection: text-encoder widths in miniature."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.ln, self.proj = nn.Embedding(100, 512), nn.LayerNorm(512), nn.Linear(512, 8)
        with torch.no_grad():
            self.emb.weight.mul_(0.2).add_(0.1)  # unit-ish scale with a mean offset, as in real residuals

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.ln(self.emb(ids)).mean(1))


def test_fp16_layer_norm_stays_correct_at_width_512(target, tmp_path):
    # ExecuTorch 1.5.1's portable fp16 native_layer_norm is wrong from width 256 up; the backend keeps
    # LayerNorms in fp32 (without that, full-size MobileCLIP-S0 text came out at cosine -0.04).
    m = _WideNorm().eval()
    ids = torch.randint(1, 100, (1, 77), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    enc = EncoderExport(
        "toy", "text", m, (ids,), (TensorSpec("text", (1, 77), "int32"),),
        (TensorSpec("embedding", (1, 8), "float32"),), {"model": "toy"},
    )  # fmt: skip
    path = tmp_path / "t16.pte"
    target.export(enc, "fp16", target.validate("fp16", {}), path)
    x = torch.randint(1, 100, (3, 77), generator=torch.Generator().manual_seed(1), dtype=torch.int32).numpy()
    stats = compare(_reference(m, x), target.load(path, {}).run({"text": x}))
    assert stats.violations(tolerance_for("fp16")) == [], stats


# ------------------------------------------------------------------ portable, Core ML delegate, batch_norm
def test_portable_delegate_runs_everything_on_portable_kernels(target, tmp_path):
    enc = _toy_enc()
    path = tmp_path / "p.pte"
    info = target.export(enc, "fp32", target.validate("fp32", {"delegate": "portable"}), path)
    assert info.details["delegation"]["delegated_nodes"] == 0
    checks = target.structural_checks(path, enc)
    assert checks["delegates"] == {} and "aten::convolution.out" in checks["portable_operators"]
    runner = target.load(path, {})
    assert "portable kernels only" in runner.label
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    stats = compare(_reference(enc.module, x), runner.run({"image": x}))
    assert stats.violations(tolerance_for("fp32")) == [], stats


@pytest.fixture(scope="module")
def coreml_pte(target, tmp_path_factory):
    """The toy lowered whole to one Core ML partition (fp16 compute), its export info and bytes."""
    pytest.importorskip("coremltools")
    enc = _toy_enc()
    path = tmp_path_factory.mktemp("coreml") / "c.pte"
    info = target.export(enc, "fp16", target.validate("fp16", {"delegate": "coreml"}), path)
    return enc, path, info


def _flip(data: bytes, needle: bytes, at: int, n: int = 16) -> bytes:
    """``data`` with ``n`` bytes inverted ``at`` bytes into the (unique) occurrence of ``needle``."""
    start = data.index(needle)
    assert data.find(needle, start + 1) == -1
    pos = start + at
    return data[:pos] + bytes(b ^ 0xFF for b in data[pos : pos + n]) + data[pos + n :]


def test_coreml_delegate_is_verified_in_the_mil_executor(target, coreml_pte):
    enc, path, info = coreml_pte
    census = info.details["delegation"]
    assert census["delegated_subgraphs"] == 1 and census["non_delegated_nodes"] == 0  # whole graph in Core ML
    assert info.details["io_dtype"] == "float32" and any("Apple" in n for n in info.notes)
    settings = info.details["coreml_delegate"]
    assert settings["whole_graph"] and settings["portable_operators"] == []
    assert settings["partitions"] == [
        {"compute_precision": "float16", "compute_units": "all", "minimum_deployment_target": "iOS17",
         "model_type": "model", "inputs": ["x"], "outputs": settings["partitions"][0]["outputs"]}
    ]  # fmt: skip
    checks = target.structural_checks(path, enc)
    assert checks["problems"] == [] and checks["delegates"] == {"CoreMLBackend": 1}
    assert checks["coreml_delegate"] == settings
    runner = target.load(path, {})
    assert runner.is_deployment_runtime is False and "CoreMLBackend delegate" in runner.label
    assert "compute precision float16" in runner.label
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    stats = compare(_reference(enc.module, x), runner.run({"image": x}))
    runner.close()
    assert stats.violations(tolerance_for("fp16")) == [], stats
    assert stats.cosine > 0.9999, stats


def test_our_unflatten_matches_executorchs_own(coreml_pte, tmp_path):
    """Independent implementation: ExecuTorch's C++ ``unflatten_directory_contents`` gives the same files."""
    from executorch.backends.apple.coreml import executorchcoreml

    from mobileclip_export.export.backends.executorch import coreml_delegate as cd

    program = cd._program(coreml_pte[1].read_bytes())
    blob = cd._delegate_bytes(program, program.execution_plan[0].delegates[0].processed)
    assert executorchcoreml.unflatten_directory_contents(blob, str(tmp_path))
    root = tmp_path / "lowered_module"
    theirs = {str(f.relative_to(root)): f.read_bytes() if f.is_file() else None for f in root.rglob("*")}
    ours = cd.unflatten(blob)
    assert ours == theirs and "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin" in ours


def test_a_corrupted_delegate_payload_is_caught(target, coreml_pte, tmp_path):
    from mobileclip_export.export.backends.executorch import coreml_delegate as cd

    enc, path, _ = coreml_pte
    data = path.read_bytes()
    program = cd._program(data)
    blob = cd._delegate_bytes(program, program.execution_plan[0].delegates[0].processed)
    files = cd.unflatten(blob)
    # 1. weights inside the embedded program (the first conv's, fp16 as stored): loads, but parity fails
    weights = enc.module.conv.weight.detach().half().numpy().tobytes()
    assert files["model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"].count(weights) == 1
    bad = tmp_path / "weights.pte"
    bad.write_bytes(_flip(data, weights, 64, 128))
    assert target.structural_checks(bad, enc)["problems"] == []
    runner = target.load(bad, {})
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    stats = compare(_reference(enc.module, x), runner.run({"image": x}))
    runner.close()
    assert stats.violations(tolerance_for("fp16")), stats
    # 2. the program's protobuf: the structural check names the partition
    spec = files["model.mlpackage/Data/com.apple.CoreML/model.mlmodel"]
    bad.write_bytes(_flip(data, spec[:256], 8, 64))
    problems = target.structural_checks(bad, enc)["problems"]
    assert len(problems) == 1 and "Core ML delegate partition 0: program does not load" in problems[0]
    # 3. the flattened directory tree at the end of the payload
    assert blob.endswith(b'[:"sedon"{')  # '{"nodes":[' reversed
    bad.write_bytes(_flip(data, blob[-50:], 0, 30))
    problems = target.structural_checks(bad, enc)["problems"]
    assert len(problems) == 1 and "Core ML delegate payload is corrupt" in problems[0], problems


def test_unflatten_refuses_names_that_leave_the_directory():
    from mobileclip_export.export.backends.executorch.coreml_delegate import DelegatePayloadError, unflatten

    def blob(name: str) -> bytes:
        tree = {"nodes": [{"name": name, "kind": 0, "dataRegion": {"offset": 0, "size": 2}, "children": {}},
                          {"name": "root", "kind": 1, "dataRegion": {"offset": 0, "size": 0},
                           "children": {name: 0}}]}  # fmt: skip
        return b"hi" + json.dumps(tree).encode()[::-1]

    assert unflatten(blob("a.txt")) == {"a.txt": b"hi"}  # the root itself is not an entry
    for name in ("..", "../x", "/etc/passwd", ""):
        with pytest.raises(DelegatePayloadError):
            unflatten(blob(name))
    with pytest.raises(DelegatePayloadError, match="past the payload"):
        unflatten(blob("a.txt").replace(b'2 :"ezis"', b'99999 :"ezis"'))


def test_leftover_batch_norm_is_reported(target, tmp_path):
    enc = _toy_enc(fold_bn=False)
    path = tmp_path / "bn.pte"
    info = target.export(enc, "fp32", target.validate("fp32", {"delegate": "portable"}), path)
    assert any("batch_norm" in n and "reparameterization incomplete" in n for n in info.notes)
    assert any("batch_norm" in p for p in target.structural_checks(path, enc)["problems"])


def test_structural_checks_reject_a_non_program(target, tmp_path):
    bogus = tmp_path / "x.pte"
    bogus.write_bytes(b"not a program at all")
    assert "not an ExecuTorch program" in target.structural_checks(bogus, _toy_enc())["problems"][0]


def test_lowering_does_not_consume_the_callers_module(target, tmp_path):
    enc = _toy_enc()
    before = {k: v.clone() for k, v in enc.module.state_dict().items()}
    for name in ("a.pte", "b.pte"):  # a second lowering of the same EncoderExport must work
        target.export(enc, "fp32", {"delegate": "portable"}, tmp_path / name)
    after = enc.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "a.pte").read_bytes() == (tmp_path / "b.pte").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["mobileclip_s0", "mobileclip_s2"])
@pytest.mark.parametrize("encoder", ["image", "text"])
def test_full_size_encoders_lower_to_one_xnnpack_subgraph(target, tmp_path, model_name, encoder):
    from _toys import randomized_encoder_export, structured_inputs

    enc = randomized_encoder_export(model_name, encoder, reduced=False)
    path = tmp_path / "full.pte"
    census = target.export(enc, "fp32", target.validate("fp32", {}), path).details["delegation"]
    assert census["delegated_subgraphs"] == 1 and census["unexpected"] == [], census["undelegated"]
    x = structured_inputs(encoder, enc.example_inputs[0].shape[-1])
    stats = compare(_reference(enc.module, x), target.load(path, {}).run({enc.inputs[0].name: x}))
    assert stats.cosine >= 0.99999, stats


@pytest.mark.parametrize("encoder", [pytest.param("image", marks=pytest.mark.slow), "text"])
def test_xnnpack_int8_parity_and_quantization_mode(target, tmp_path, encoder):
    """int8 (dynamic linears, static convs, int8 embedding rows) lowers to ONE XNNPACK subgraph, leaves no
    large fp32 weight behind, runs in the ExecuTorch runtime and stays within the int8 tolerance."""
    enc, train = _reduced("mobileclip_s0", encoder)
    path = tmp_path / "m8.pte"
    info = target.export(enc, "int8", target.validate("int8", {}), path)
    census = info.details["delegation"]
    assert census["delegated_subgraphs"] == 1 and census["unexpected"] == [], census
    compression = info.details["compression"]
    assert compression["linear"].endswith("dynamic activations")
    assert compression["projection_heads_as_linear"], compression  # the x @ W head is quantized too
    params = sum(p.numel() for p in train.parameters())
    if encoder == "text":
        assert compression["embedding"]["layers"] == ["embedding_layer"]
        assert path.stat().st_size < 1.25 * params  # fp32 embedding alone would be > 2.5 B/param here
    else:  # reduced image (0.4 M params, 1.34 B/param measured; fp32 4): fixed program overhead shows
        assert path.stat().st_size < 1.5 * params
    x = _verify_inputs(enc)
    runner = target.load(path, {"num_threads": 1})
    stats = compare(_reference(train, x), runner.run({enc.inputs[0].name: x}))
    assert stats.violations(tolerance_for("int8")) == [], stats


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_full_size_s0_coreml_delegate_parity_in_the_manifest(tmp_path, precision):
    """Full-size S0, both encoders, --delegate coreml: verified by the extracted program, parity recorded."""
    import json

    from mobileclip_export.export.pipeline.api import export_model
    from mobileclip_export.export.tolerances import tolerance_for

    res = export_model("mobileclip_s0", "executorch", output_dir=tmp_path, precision=precision,
                       options={"delegate": "coreml"})  # fmt: skip
    manifest = json.loads(res.manifest_path.read_text())
    tol = tolerance_for(precision)
    for a in manifest["artifacts"]:
        assert a["status"] == "verified", a.get("error")
        assert a["parity"]["status"] == "passed" and a["parity"]["cosine"] >= tol.min_cosine
        assert "extracted from the CoreMLBackend delegate" in a["parity"]["runtime"]
        (part,) = a["details"]["coreml_delegate"]["partitions"]
        assert part["compute_precision"] == {"fp16": "float16", "fp32": "float32"}[precision]
        assert part["compute_units"] == "all" and a["details"]["coreml_delegate"]["whole_graph"]


def test_a_split_coreml_graph_is_reported_not_silently_passed(target, tmp_path):
    """Two Core ML partitions with a portable op (tanh, kept out) between them: each partition's program is
    loaded by the structural check; numeric verification refuses, naming the portable operators."""
    ct = pytest.importorskip("coremltools")
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner
    from executorch.exir import to_edge_transform_and_lower

    class Split(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(torch.tanh(x * 2.0) + 1.0) * 3.0

    x = torch.rand(1, 8)
    specs = CoreMLBackend.generate_compile_specs(compute_precision=ct.precision.FLOAT32)
    part = CoreMLPartitioner(compile_specs=specs, skip_ops_for_coreml_delegation=["aten.tanh.default"])
    program = to_edge_transform_and_lower(torch.export.export(Split(), (x,)), partitioner=[part])
    path = tmp_path / "split.pte"
    path.write_bytes(program.to_executorch().buffer)
    enc = EncoderExport("toy", "image", Split(), (x,), (TensorSpec("image", (1, 8), "float32"),),
                        (TensorSpec("embedding", (1, 8), "float32"),), {"model": "toy"}, 8)  # fmt: skip
    checks = target.structural_checks(path, enc)
    assert checks["problems"] == [] and checks["delegates"] == {"CoreMLBackend": 2}
    facts = checks["coreml_delegate"]
    assert not facts["whole_graph"] and facts["delegate_calls"] == 2 and len(facts["partitions"]) == 2
    assert facts["portable_operators"] == ["aten::tanh"]
    with pytest.raises(RuntimeUnavailable, match=r"2 delegate call\(s\).*aten::tanh"):
        target.load(path, {})
