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
