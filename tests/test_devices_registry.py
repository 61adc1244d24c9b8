"""The device-runner registry: complete (every runner resolves), loud (a name taken twice raises), and
extensible in the documented steps (a toy runner becomes a --device choice of bench)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mobileclip_export.benchmarks import devices
from mobileclip_export.benchmarks.devices import DeviceRunner, get_runner, register_runner, runner_names
from mobileclip_export.commands.bench import build_parser
from mobileclip_export.errors import RegistryError, UnknownNameError


def test_every_registered_runner_resolves_to_its_class(monkeypatch) -> None:
    monkeypatch.setenv("ADB", "/bin/false")  # constructing the Android runner needs an adb; never run here
    assert runner_names() == ["android", "ios"]
    for name in runner_names():
        runner = get_runner(name)
        assert isinstance(runner, DeviceRunner) and runner.name == name
    assert get_runner("android").tool_for(Path("m.pte")) == "executor_runner"
    assert get_runner("ios").tool_for(Path("m.mlpackage")) == "MLModelBenchmarker"
    assert get_runner("ios").tool_for(Path("m.tflite")) is None


def test_unknown_runner_lists_the_choices() -> None:
    with pytest.raises(UnknownNameError, match="unknown device runner 'pixel'; choose one of: android, ios"):
        get_runner("pixel")


def test_registering_a_taken_name_raises(monkeypatch) -> None:
    monkeypatch.setattr(devices, "RUNNERS", dict(devices.RUNNERS))
    with pytest.raises(RegistryError, match="'android' is already registered"):
        register_runner("android", "somewhere:Else")
    with pytest.raises(RegistryError, match="'host' is already registered"):
        register_runner("host", "somewhere:Else")


def test_a_runner_whose_class_does_not_match_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(devices, "RUNNERS", {"ios2": devices.RUNNERS["ios"]})
    with pytest.raises(RegistryError, match="is not a DeviceRunner named 'ios2'"):
        get_runner("ios2")


def test_a_toy_runner_is_one_module_and_one_registration(tmp_path, monkeypatch) -> None:
    """The CONTRIBUTING recipe for a device runner, end to end."""
    (tmp_path / "toy_runner.py").write_text(
        textwrap.dedent(
            """
            from mobileclip_export.benchmarks.devices.base import DeviceRow, DeviceRunner

            class ToyRunner(DeviceRunner):
                name = "toy"

                def check(self):
                    return {"name": "toy board", "os": "none", "kind": "device"}

                def tool_for(self, artifact):
                    return "toy_bench" if artifact.suffix == ".onnx" else None

                def run(self, job):
                    return DeviceRow(job=job, device=self.check(), runtime="toy")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(devices, "RUNNERS", dict(devices.RUNNERS))
    register_runner("toy", "toy_runner:ToyRunner")
    runner = get_runner("toy")
    assert runner.check()["name"] == "toy board" and runner.tool_for(Path("m.onnx")) == "toy_bench"
    assert build_parser().parse_args(["--model", "m", "--device", "toy"]).device == "toy"
