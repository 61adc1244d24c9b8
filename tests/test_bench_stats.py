import math

import numpy as np
import pytest

from mobileclip_export.benchmarks.stats import summarize, trimmed_mean


def test_known_samples():
    s = summarize([float(x) for x in range(1, 11)])  # 1..10
    assert s.n == 10
    assert s.median == pytest.approx(5.5)
    assert s.p90 == pytest.approx(9.1)  # linear interpolation: 1 + 0.9 * 9 = 9.1
    assert s.trimmed_mean == pytest.approx(5.5)  # drop 1 and 10
    assert s.mean == pytest.approx(5.5)
    assert s.std == pytest.approx(math.sqrt(sum((x - 5.5) ** 2 for x in range(1, 11)) / 9))
    assert (s.min, s.max) == (1.0, 10.0)


def test_trimmed_mean_removes_outliers_median_robust():
    xs = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0, 500.0]
    assert trimmed_mean(xs) == pytest.approx(np.mean(xs[1:-1]))  # 14.5, not pulled by 500
    assert trimmed_mean(xs, trim=0.0) == pytest.approx(np.mean(xs))
    assert summarize(xs).median == pytest.approx(14.5)
    assert summarize(xs).p90 == pytest.approx(18 + 0.1 * (500 - 18))


def test_single_sample_and_errors():
    s = summarize([3.0])
    assert (s.median, s.p90, s.trimmed_mean, s.std) == (3.0, 3.0, 3.0, 0.0)
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])
    with pytest.raises(ValueError):
        trimmed_mean([1.0], trim=0.5)


def test_harness_round_robin_counts_and_reference_cap():
    from mobileclip_export.benchmarks import harness as H

    calls: list[str] = []

    def make(name, deployment=True):
        def load():
            def run(feeds):
                calls.append(name)
                return np.zeros((1, 4), np.float32)

            return run, name, deployment

        return load

    def broken():
        raise RuntimeError("boom")

    cands = [
        H.Candidate("a", "image", "fp32", make("a"), {}),
        H.Candidate("b", "image", "fp32", make("b"), {}),
        H.Candidate("r", "image", "fp32", make("r", deployment=False), {}),
        H.Candidate("x", "image", "fp32", broken, {}),
    ]
    res = H.measure(cands, runs=5, warmup=2, reference_runs=2)
    assert [m.status for m in res][:3] == ["ok"] * 3 and res[3].status == "failed: RuntimeError: boom"
    assert [len(m.samples_ms) for m in res] == [5, 5, 2, 0]
    assert res[2].candidate.kind == H.REFERENCE
    assert (
        calls.count("a") == 1 + 2 + 5 and calls.count("r") == 1 + 2
    )  # load-time first run + warm-up + timed
    # round-robin: the first candidate of each round rotates
    timed_rounds = [c for c in calls[3:] if c != "r"]  # skip the three first runs at load
    assert timed_rounds[:4] == ["a", "b", "b", "a"]
