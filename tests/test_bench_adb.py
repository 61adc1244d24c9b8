"""The Android runner against a stand-in ``adb`` on PATH (tests/data/bench_samples/adb_standin.py)."""

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from mobileclip_export.benchmarks.devices import DeviceJob, DeviceRow, DeviceUnavailable, get_runner
from mobileclip_export.benchmarks.devices.adb import Adb
from mobileclip_export.benchmarks.devices.android import big_core_mask, core_frequencies
from mobileclip_export.errors import UsageError

SAMPLES = Path(__file__).parent / "data" / "bench_samples"
FREQS = {
    "0": 1700000,
    "1": 1700000,
    "2": 1700000,
    "3": 1700000,
    "4": 2370000,
    "5": 2370000,
    "6": 2370000,
    "7": 2370000,
    "8": 3000000,
}


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    exe = bin_dir / "adb"
    exe.write_text(f"#!{sys.executable}\n" + (SAMPLES / "adb_standin.py").read_text())
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_STATE", str(state))
    monkeypatch.delenv("ADB", raising=False)

    def configure(devices):
        (state / "config.json").write_text(
            json.dumps(
                {
                    "devices": devices,
                    "props": {
                        "ro.product.model": "Pixel 8",
                        "ro.build.version.release": "14",
                        "ro.soc.model": "Tensor G3",
                        "ro.product.cpu.abi": "arm64-v8a",
                    },
                    "freqs": FREQS,
                    "outputs": {
                        "benchmark_model": str(SAMPLES / "benchmark_model_xnnpack.txt"),
                        "executor_runner": str(SAMPLES / "executor_runner_xnnpack.txt"),
                        "missing_model": str(SAMPLES / "benchmark_model_failed.txt"),
                    },
                }
            )
        )
        return state

    return configure


def test_no_device_says_so(fake_adb):
    fake_adb([])
    with pytest.raises(DeviceUnavailable, match="no Android device attached"):
        get_runner("android").check()


def test_unauthorized_and_several_and_unknown_serial(fake_adb):
    fake_adb([["A1", "unauthorized"]])
    with pytest.raises(DeviceUnavailable, match="accept the USB debugging prompt"):
        get_runner("android").check()
    fake_adb([["A1", "device"], ["B2", "device"]])
    with pytest.raises(DeviceUnavailable, match="several Android devices.*--serial"):
        get_runner("android").check()
    with pytest.raises(DeviceUnavailable, match="'C3' is not attached"):
        get_runner("android", serial="C3").check()
    assert get_runner("android", serial="B2").check()["name"] == "Pixel 8 (B2)"


def test_adb_missing_from_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("ADB", raising=False)
    with pytest.raises(DeviceUnavailable, match="adb not found"):
        Adb()


def test_big_core_mask():
    freqs = core_frequencies("\n".join(f"{k} {v}" for k, v in FREQS.items()) + "\n9\n")
    assert len(freqs) == 9  # cpu9 without cpufreq is left out
    assert big_core_mask(freqs, 1) == ("100", [8])
    assert big_core_mask(freqs, 2) == ("180", [7, 8])  # the prime core, then the fastest mid core
    assert big_core_mask(freqs, 4) == ("1e0", [5, 6, 7, 8])
    with pytest.raises(UsageError, match="exceeds"):
        big_core_mask(freqs, 10)


def test_tflite_run_pushes_pins_and_parses(fake_adb, tmp_path):
    state = fake_adb([["R58M", "device"]])
    art = tmp_path / "mobileclip_s0-image-fp32.tflite"
    art.write_bytes(b"\0" * 1000)
    tool = tmp_path / "benchmark_model"
    tool.write_bytes(b"ELF")
    runner = get_runner("android")
    info = runner.check()
    assert info == {
        "name": "Pixel 8 (R58M)",
        "os": "Android 14",
        "cpu": "Tensor G3 (arm64-v8a)",
        "cores": 9,
        "threads": None,
        "kind": "device",
    }
    row = (
        runner.run(DeviceJob(art, "t", "image", "fp32", runs=50, warmup=5, threads=2, tool=tool))
        .as_row()
        .to_dict()
    )
    assert row["status"] == "ok" and row["record_kind"] == "device"
    assert row["load_ms"] == pytest.approx(78.123) and row["first_ms"] == pytest.approx(40.512)
    assert row["latency"]["median"] == pytest.approx(35.603)
    assert row["rss_delta_mb"] == pytest.approx(68.4492)
    assert row["size_mb"] == pytest.approx(0.001)
    assert row["device"]["threads"] == 2
    assert (
        state / "fs/data/local/tmp/mobileclip_bench/mobileclip_s0-image-fp32.tflite"
    ).stat().st_size == 1000
    run_line = [c for c in (state / "commands.log").read_text().splitlines() if c.startswith("taskset")][0]
    assert run_line.startswith("taskset 180 /data/local/tmp/mobileclip_bench/benchmark_model ")
    for flag in ("--num_threads=2", "--num_runs=50", "--warmup_runs=5", "--use_xnnpack=true"):
        assert flag in run_line


def test_pte_run_without_tool_on_device_is_clear(fake_adb, tmp_path):
    fake_adb([["R58M", "device"]])
    art = tmp_path / "m-text-fp32.pte"
    art.write_bytes(b"PTE")
    runner = get_runner("android")
    with pytest.raises(DeviceUnavailable, match="executor_runner is not on the device"):
        runner.run(DeviceJob(art, "t", "text", "fp32", runs=6, warmup=2))
    row = runner.run(DeviceJob(art, "t", "text", "fp32", runs=6, warmup=2, tool=art)).as_row().to_dict()
    assert row["load_ms"] == pytest.approx(58.742)
    assert row["latency"]["n"] == 6
    assert row["latency"]["median"] == pytest.approx((36.250 + 36.347) / 2)


def test_ios_runner_off_macos_says_it_needs_macos(monkeypatch):
    import platform

    monkeypatch.setattr(platform, "system", lambda: "Linux")
    with pytest.raises(DeviceUnavailable, match="needs macOS with Xcode"):
        get_runner("ios").check()


def test_device_row_sizes_directory_artifacts(tmp_path):
    pkg = tmp_path / "m.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_bytes(b"x" * 300)
    (pkg / "Data" / "weight.bin").write_bytes(b"x" * 1700)
    row = DeviceRow(DeviceJob(pkg, "coreml", "image", "fp16"), device={}, runtime="r").as_row().to_dict()
    assert row["size_mb"] == pytest.approx(0.002)


def test_pte_run_without_iteration_lines_reports_only_the_mean(fake_adb, tmp_path):
    """An executor_runner that prints only the total gives a mean; no median or trimmed mean is invented."""
    state = fake_adb([["R58M", "device"]])
    lines = (SAMPLES / "executor_runner_xnnpack.txt").read_text().splitlines()
    short = tmp_path / "executor_runner_total_only.txt"
    short.write_text("\n".join(line for line in lines if "Iteration" not in line) + "\n")
    config = json.loads((state / "config.json").read_text())
    config["outputs"]["executor_runner"] = str(short)
    (state / "config.json").write_text(json.dumps(config))
    art = tmp_path / "m-text-fp32.pte"
    art.write_bytes(b"PTE")
    row = get_runner("android").run(DeviceJob(art, "t", "text", "fp32", runs=8, tool=art)).as_row()
    assert row.latency == {"n": 8, "mean": pytest.approx(298.810 / 8)}
    assert row.median_ms is None
