"""CLI: exit codes and messages for bad input, JSON shape, --help laziness, bench delegation."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from mobileclip_export import __version__
from mobileclip_export.commands import export as cli
from mobileclip_export.export.backends.onnx.target import OnnxTarget
from mobileclip_export.export.registry import all_targets

from _toys import use_toy_models

HEAVY = (
    "torch",
    "coremltools",
    "executorch",
    "litert_torch",
    "onnxruntime",
    "coreai",
    "ai_edge_litert",
    "jax",
    "tensorflow",
)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_s0(capsys, output_dir, *argv: str) -> tuple[int, str, str]:
    """``run`` with ``--model mobileclip_s0 ... --output-dir output_dir``."""
    return run(capsys, "--model", "mobileclip_s0", *argv, "--output-dir", str(output_dir))


def test_help_does_not_import_converters() -> None:
    code = (
        "import sys\n"
        "from mobileclip_export.commands.export import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
    assert "--opset" in proc.stdout and "--target" in proc.stdout


def test_help_into_a_closed_pipe_exits_quietly() -> None:
    """``mobileclip-export --help | head -1``: the reader is gone before we write; no traceback, exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mobileclip_export", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the interpreter has started: every write meets EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_every_target_option_is_a_flag() -> None:
    parser = cli.build_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    for t in all_targets().values():
        for o in t.options:
            assert "--" + o.name.replace("_", "-") in flags


def test_unknown_model(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "--model", "mobileclip_s9", "--target", "onnx", "--output-dir", str(tmp_path))
    assert code == 2
    assert "unknown model 'mobileclip_s9'" in err and "mobileclip_s0" in err


def test_json_error_document(capsys, tmp_path) -> None:
    code, out, _ = run(capsys, "--model", "nope", "--target", "onnx", "--json", "--output-dir", str(tmp_path))
    doc = json.loads(out)
    assert (
        code == 2 and doc["ok"] is False and doc["exit_code"] == 2 and "unknown model 'nope'" in doc["error"]
    )


def test_the_console_script_exits_with_the_code_and_everything_written(tmp_path) -> None:
    """``export`` ends without the interpreter's teardown (``cli.entry``): the exit code, the whole JSON
    document through a pipe (block-buffered stdout) and the exit handlers (coremltools removes its temporary
    packages in one) all still happen."""
    argv = ["--model", "nope", "--target", "onnx", "--json", "--output-dir", str(tmp_path)]
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('exit handler ran', file=sys.stderr))\n"
        f"sys.argv = ['mobileclip-export', *{argv!r}]\n"
        "from mobileclip_export.cli import entry\n"
        "entry()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["exit_code"] == 2 and "unknown model 'nope'" in proc.stderr
    assert proc.stderr.rstrip().endswith("exit handler ran")


def test_unknown_target(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "--model", "mobileclip_s0", "--target", "caffe", "--output-dir", str(tmp_path))
    assert code == 2
    assert "unknown target 'caffe'" in err and "onnx" in err and "all" in err


def test_unknown_flag_suggests(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--model", "mobileclip_s0", "--presicion", "fp16"])
    assert exc.value.code == 2
    assert "did you mean --precision" in capsys.readouterr().err


def test_unknown_encoder(capsys, tmp_path) -> None:
    code, _, err = run_s0(capsys, tmp_path, "--target", "onnx", "--encoder", "audio")
    assert code == 2 and "unknown encoder 'audio'" in err and "both" in err


@pytest.mark.skipif("coreml" not in all_targets(), reason="coreml backend not present")
def test_option_not_supported_by_chosen_target(capsys, tmp_path) -> None:
    code, _, err = run_s0(capsys, tmp_path, "--target", "coreml", "--opset", "18")
    assert code == 2
    assert "--opset" in err and "coreml" in err and "belongs to: onnx" in err
    assert not (tmp_path / "mobileclip_s0").exists()


def test_unsupported_precision(capsys, tmp_path) -> None:
    code, _, err = run_s0(capsys, tmp_path, "--target", "onnx", "--precision", "int3")
    assert code == 2 and "precision 'int3'" in err and "fp32" in err


def test_missing_extra(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(OnnxTarget, "missing_dependencies", lambda self: ["onnxruntime"])
    code, _, err = run(capsys, "--model", "mobileclip_s0", "--target", "onnx", "--output-dir", str(tmp_path))
    assert code == 2
    assert "pip install 'mobileclip-export[onnx]'" in err and "onnxruntime" in err


def test_list_targets_shows_pip_command_for_missing(capsys, monkeypatch) -> None:
    monkeypatch.setattr(OnnxTarget, "missing_dependencies", lambda self: ["onnxruntime"])
    code, out, _ = run(capsys, "--list-targets")
    assert code == 0
    assert "NOT installed: pip install 'mobileclip-export[onnx]'" in out


def test_list_models(capsys) -> None:
    code, out, _ = run(capsys, "--list-models")
    assert code == 0 and "mobileclip_s0" in out and "mobileclip2_l14" in out


def test_unwritable_output_dir(capsys, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run(
        capsys, "--model", "mobileclip_s0", "--target", "onnx", "--output-dir", str(blocker / "sub")
    )
    assert code == 2 and "cannot create the output directory" in err


def test_missing_checkpoint_file(capsys, tmp_path) -> None:
    code, _, err = run_s0(capsys, tmp_path, "--target", "onnx", "--checkpoint", str(tmp_path / "nope.pt"))
    assert code == 2 and "nope.pt" in err


def test_checkpoint_of_another_variant(capsys, tmp_path) -> None:
    import torch

    from mobileclip_export.models import create_model

    other = create_model("mobileclip_b", reduced=True)
    ckpt = tmp_path / "b.pt"
    torch.save(other.state_dict(), ckpt)
    code, _, err = run_s0(
        capsys, tmp_path / "out", "--reduced", "--target", "onnx", "--checkpoint", str(ckpt)
    )
    assert code == 2, err
    assert "checkpoint" in err.lower()
    assert not (tmp_path / "out" / "mobileclip_s0").exists()


def test_export_json_and_existing_bundle(capsys, tmp_path, monkeypatch) -> None:
    use_toy_models(monkeypatch)
    args = ["--model", "mobileclip_s0", "--target", "onnx", "--output-dir", str(tmp_path), "--json"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    data = json.loads(out)
    assert set(data) >= {
        "ok",
        "model",
        "bundle_dir",
        "manifest_path",
        "artifacts",
        "random_init",
        "reparam_parity",
    }
    assert data["ok"] is True and data["random_init"] is True
    assert [(a["target"], a["encoder"], a["status"]) for a in data["artifacts"]] == [
        ("onnx", "image", "verified"),
        ("onnx", "text", "verified"),
    ]
    art = data["artifacts"][0]
    assert set(art) >= {
        "target",
        "encoder",
        "precision",
        "path",
        "sha256",
        "bytes",
        "inputs",
        "outputs",
        "parity",
        "status",
        "error",
        "seconds",
        "notes",
    }
    assert set(art["parity"]) >= {"cosine", "max_abs_diff", "mean_abs_diff", "psnr_db", "status", "runtime"}
    assert art["parity"]["cosine"] > 0.99999 and art["parity"]["max_abs_diff"] < 1e-4
    assert set(art["seconds"]) == {"export", "verify"}
    # progress, the random-weights warning, the summary and the next command go to stderr
    assert "NOT for accuracy" in err and "export [onnx image] done" in err
    assert "mobileclip-export bench --model mobileclip_s0" in err and "verified" in err

    code, _, err = run(capsys, *args)
    assert code == 2 and "already exists" in err and "--force" in err
    code, _, err = run(capsys, *args, "--force", "--encoder", "image")
    assert code == 0, err
    manifest = json.loads((tmp_path / "mobileclip_s0" / "manifest.json").read_text())
    # image re-exported; text (same weights, not asked for this time) carried over from the first run
    assert [a["encoder"] for a in manifest["artifacts"]] == ["image", "text"]
    assert "carried over" in manifest["artifacts"][1]["notes"][-1]


def test_verification_failure_exits_1_with_numbers(capsys, tmp_path, monkeypatch) -> None:
    use_toy_models(monkeypatch)
    real_load = OnnxTarget.load

    def bad_load(self, path, options):
        runner = real_load(self, path, options)
        inner = runner.run
        runner.run = lambda feeds: inner(feeds) * 1.1  # a plausible-looking 10% scale error
        return runner

    monkeypatch.setattr(OnnxTarget, "load", bad_load)
    code, out, err = run_s0(capsys, tmp_path, "--target", "onnx", "--encoder", "image", "--json")
    assert code == 1
    assert "FAILED onnx image fp32" in err and "max|diff|" in err
    art = json.loads(out)["artifacts"][0]
    assert art["status"] == "failed" and art["path"] is None and art["parity"]["status"] == "failed"
    assert art["parity"]["max_abs_diff"] > 0.05 * art["parity"]["ref_max_abs"]
    assert not (tmp_path / "mobileclip_s0").exists()  # nothing succeeded: nothing written


def test_bench_is_delegated(capsys, monkeypatch) -> None:
    seen = {}
    fake = types.ModuleType("mobileclip_export.commands.bench")
    fake.add_arguments = lambda p: p.add_argument("--model") and p.add_argument("--runs", type=int)
    fake.run = lambda args: seen.setdefault("args", args) and 0
    monkeypatch.setitem(sys.modules, "mobileclip_export.commands.bench", fake)
    import mobileclip_export.benchmarks as bench_pkg

    monkeypatch.setattr(bench_pkg, "cli", fake, raising=False)
    assert cli.main(["bench", "-q", "--model", "mobileclip_s0", "--runs", "3"]) == 0
    args = seen["args"]
    assert (args.command, args.model, args.runs, args.verbosity) == ("bench", "mobileclip_s0", 3, -1)


def test_a_new_subcommand_is_one_module_and_one_registry_line(capsys, monkeypatch) -> None:
    """The extension recipe documented in mobileclip_export.cli, exercised with a toy command."""
    from mobileclip_export import cli as top

    toy = types.ModuleType("toy_cmd")
    toy.add_arguments = lambda p: p.add_argument("--name", required=True)
    toy.run = lambda args: print(f"hello {args.name} v={args.verbosity}") or 3
    monkeypatch.setitem(sys.modules, "toy_cmd", toy)
    monkeypatch.setitem(top.COMMANDS, "toy", ("toy_cmd", "say hello"))
    code, out, _ = run(capsys, "toy", "--name", "x", "-vv")
    assert code == 3 and out.strip() == "hello x v=2"
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "say hello" in out and "bench" in out and "export" in out
    with pytest.raises(SystemExit) as exc:
        cli.main(["toy", "--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"mobileclip-export {__version__}"


def test_unknown_command_and_python_dash_m(capsys) -> None:
    code, _, err = run(capsys, "bnech", "--model", "mobileclip_s0")
    assert code == 2 and "unknown command 'bnech'" in err and "did you mean bench" in err
    for argv in (["--version"], ["bench", "--version"], ["export", "--version"]):
        proc = subprocess.run(
            [sys.executable, "-m", "mobileclip_export", *argv], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0 and proc.stdout.strip() == f"mobileclip-export {__version__}", proc
    proc = subprocess.run(
        [sys.executable, "-m", "mobileclip_export", "bench", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--runs" in proc.stdout and "-q, --quiet" in proc.stdout
