"""Bad input caught early and cleanly; our own bugs told apart from a converter's failure."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from mobileclip_export.commands import export as cli
from mobileclip_export.errors import BundleStateError, CheckpointError
from mobileclip_export.export.backends.onnx.target import OnnxTarget
from mobileclip_export.export.bundle.layout import BundleWriter
from mobileclip_export.export.pipeline import api
from mobileclip_export.export.pipeline.api import export_model

from _toys import use_toy_models


def test_text_checkpoint_rejected_before_the_model_is_built(capsys, tmp_path, monkeypatch) -> None:
    def no_build(*args):
        raise AssertionError("the model was built before the checkpoint format was checked")

    monkeypatch.setattr(api, "_create_model", no_build)
    ckpt = tmp_path / "weights.pt"
    ckpt.write_text("this is not a checkpoint\n")
    out = tmp_path / "new" / "out"
    code = cli.main(
        ["--model", "mobileclip_s0", "--target", "onnx", "--checkpoint", str(ckpt), "--output-dir", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "is not a checkpoint" in err and "text starting 'this is not" in err
    assert not (tmp_path / "new").exists()


def test_failed_run_leaves_no_empty_output_folder(capsys, tmp_path, monkeypatch) -> None:
    use_toy_models(monkeypatch)

    def broken_export(self, enc, precision, options, path):
        raise RuntimeError("converter exploded")  # raised outside our package: a converter's failure

    monkeypatch.setattr(OnnxTarget, "export", broken_export)
    out = tmp_path / "a" / "b"
    code = cli.main(
        ["--model", "mobileclip_s0", "--target", "onnx", "--encoder", "image", "--output-dir", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 1 and "RuntimeError: converter exploded" in err and "internal error" not in err
    assert list(tmp_path.iterdir()) == []


def test_our_bug_is_not_a_quiet_export_failure(tmp_path, monkeypatch, caplog) -> None:
    use_toy_models(monkeypatch)
    from mobileclip_export.export.bundle.manifest import artifact_metadata

    def buggy_export(self, enc, precision, options, path):
        return artifact_metadata("m", "image", None, {}, {}, {}, {}, False)  # AttributeError in our code

    monkeypatch.setattr(OnnxTarget, "export", buggy_export)
    with caplog.at_level(logging.ERROR, logger="mobileclip_export"):
        res = export_model("mobileclip_s0", "onnx", encoders="image", output_dir=tmp_path)
    (rec,) = res.artifacts
    assert rec.status == "failed" and rec.error.startswith("internal error: AttributeError")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "internal error" in r.getMessage()]
    assert errors and errors[0].exc_info is not None  # the traceback is shown without -vv


def test_nan_and_inf_weights_named_at_load(tmp_path) -> None:
    from mobileclip_export.models.checkpoint import read_checkpoint

    w = torch.zeros(4, 3)
    w[0, 0], w[2, 1] = float("nan"), float("inf")
    sd = {"image_encoder.model.stem.weight": w, "image_encoder.model.stem.bias": torch.zeros(4)}
    torch.save(sd, tmp_path / "nan.pt")
    with pytest.raises(
        CheckpointError, match=r"NaN/inf values in 1 tensor\(s\): image_encoder.model.stem.weight \(2 of 12\)"
    ):
        read_checkpoint(tmp_path / "nan.pt")


def test_bundle_writer_used_out_of_order(tmp_path) -> None:
    writer = BundleWriter(tmp_path, "m", force=False)
    with pytest.raises(BundleStateError, match="not open"):
        writer.partial_path("t", "x.bin")


def test_boolean_target_options_are_switches() -> None:
    """``--multifunction`` as documented, not ``--multifunction true``: any yes/no option is a switch."""
    from mobileclip_export.export.registry import all_targets

    flags = {s: a for a in cli.build_parser()._actions for s in a.option_strings}
    yes_no = [
        o.flag
        for t in all_targets().values()
        for o in t.options
        if o.type is bool or set(o.choices or ()) == {True, False}
    ]
    assert yes_no, "no yes/no option registered: nothing to check"
    for flag in yes_no:
        assert flags[flag].nargs == 0 and flags[flag].const is True, flag


def test_output_dir_that_cannot_be_created(capsys, tmp_path) -> None:
    code = cli.main(["--model", "mobileclip_s0", "--target", "onnx", "--output-dir", "/proc/x"])
    assert code == 2 and "cannot create the output directory '/proc/x'" in capsys.readouterr().err
    assert not Path("/proc/x").exists()


def test_bench_ctrl_c_exits_130_and_unpins(capsys, tmp_path, monkeypatch) -> None:
    import os

    from mobileclip_export.benchmarks import run as bench_run
    from mobileclip_export.commands import bench as bench_cli

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_run, "_bench", interrupted)
    before = os.sched_getaffinity(0)
    assert bench_cli.main(["--model", "mobileclip_s0", "--output-dir", str(tmp_path), "--json"]) == 130
    out, err = capsys.readouterr()
    assert "interrupted" in err and '"exit_code": 130' in out
    assert os.sched_getaffinity(0) == before  # the pinning to --threads cores is undone
