from pathlib import Path

import pytest

from mobileclip_export.benchmarks.devices import parsers

SAMPLES = Path(__file__).parent / "data" / "bench_samples"


def test_benchmark_model_xnnpack_sample():
    p = parsers.parse_benchmark_model((SAMPLES / "benchmark_model_xnnpack.txt").read_text())
    assert p["init_ms"] == pytest.approx(78.123)
    assert p["first_ms"] == pytest.approx(40.512)
    assert p["warmup_avg_ms"] == pytest.approx(36.2341)
    assert p["avg_ms"] == pytest.approx(35.6884)
    # the timed phase is the LAST count= line, not the warm-up one
    assert p["count"] == 50
    assert p["min_ms"] == pytest.approx(35.102) and p["max_ms"] == pytest.approx(37.950)
    assert p["median_ms"] == pytest.approx(35.603) and p["p95_ms"] == pytest.approx(36.803)
    assert p["std_ms"] == pytest.approx(0.511)
    assert p["memory_init_mb"] == pytest.approx(61.7695) and p["memory_overall_mb"] == pytest.approx(68.4492)
    assert p["memory_peak_mb"] == pytest.approx(75.8828)
    assert p["model_size_mb"] == pytest.approx(45.4631)
    lat = parsers.benchmark_model_latency(p)
    assert lat["median"] == pytest.approx(35.603) and lat["n"] == 50 and "p90" not in lat


def test_benchmark_model_legacy_scientific_notation():
    p = parsers.parse_benchmark_model((SAMPLES / "benchmark_model_legacy.txt").read_text())
    assert p["avg_ms"] == pytest.approx(2950.34)
    assert p["warmup_avg_ms"] == pytest.approx(3512.39)
    assert p["first_ms"] == pytest.approx(3512.391)
    assert p["count"] == 50 and "median_ms" not in p
    assert p["memory_overall_mb"] == pytest.approx(138.809)
    lat = parsers.benchmark_model_latency(p)
    assert lat["median"] == pytest.approx(2950.34)  # no median printed: falls back to the average


def test_benchmark_model_failure_output_raises_with_tail():
    text = (SAMPLES / "benchmark_model_failed.txt").read_text()
    with pytest.raises(parsers.ParseError, match="Benchmarking failed"):
        parsers.parse_benchmark_model(text)


def test_executor_runner_iterations_and_warmup():
    p = parsers.parse_executor_runner((SAMPLES / "executor_runner_xnnpack.txt").read_text(), warmup=2)
    assert p["executions"] == 8 and p["total_ms"] == pytest.approx(298.810)
    assert p["load_ms"] == pytest.approx(58.742)
    assert p["first_ms"] == pytest.approx(41.301)
    assert p["threads"] == 1
    assert p["samples_ms"] == pytest.approx([36.250, 36.347, 36.080, 36.669, 36.104, 39.257])
    assert p["stats"]["n"] == 6
    assert p["stats"]["median"] == pytest.approx((36.250 + 36.347) / 2)


def test_executor_runner_legacy_total_only():
    p = parsers.parse_executor_runner((SAMPLES / "executor_runner_legacy.txt").read_text())
    assert p["executions"] == 10 and p["avg_ms"] == pytest.approx(48.0339)
    assert "samples_ms" not in p and "load_ms" not in p
    with pytest.raises(parsers.ParseError):
        parsers.parse_executor_runner("E 00:00:00.1 executorch:executor_runner.cpp:1] Loading failed")
