import numpy as np
import pytest

from mobileclip_export.benchmarks import estimate as E


def test_fit_reproduces_anchors_and_is_nonnegative():
    model = E.AneModel()
    assert (model.coef >= 0).all()
    pred = model.x @ model.coef
    rel = np.abs(pred - model.y) / model.y
    assert rel.max() < 0.30  # in-sample: every published anchor within 30 %
    s0 = model.predict(2.38, 0.060, 11.4)
    assert s0 == pytest.approx(1.5, rel=0.15)


def test_leave_one_out_is_really_held_out():
    model = E.AneModel()
    assert len(model.loo.errors_pct) == len(E.ANE_ANCHORS) == 10
    # recompute one held-out prediction by hand
    i = 3
    keep = np.arange(10) != i
    coef = E.nnls_relative(model.x[keep], model.y[keep])
    err = (model.x[i] @ coef - model.y[i]) / model.y[i] * 100
    assert model.loo.errors_pct[E.ANE_ANCHORS[i].name] == pytest.approx(err)
    # held-out errors are larger than in-sample ones (a test that can fail if LOO silently used all points)
    in_sample = np.abs(model.x @ model.coef - model.y) / model.y * 100
    assert model.loo.mape > float(np.mean(in_sample))
    assert model.loo.mape == pytest.approx(np.mean(np.abs(list(model.loo.errors_pct.values()))))
    assert "LOO MAPE" in model.loo.summary() and "n=10" in model.loo.summary()


def test_nnls_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(12), rng.uniform(1, 10, 12), rng.uniform(1, 5, 12)])
    true = np.array([0.5, 0.3, 0.0])
    assert E.nnls_relative(x, x @ true) == pytest.approx(true, abs=1e-9)


def test_estimates_are_labelled():
    e = E.estimate_ane("image", 2.38, 0.06, 11.4)
    assert "LOO" in e.error_note and e.latency_ms > 0
    a = E.estimate_android("text", host_median_ms=10.0, host_peak_gflops=51.2)
    assert a.latency_ms == pytest.approx(10.0 * 51.2 / E.ANDROID_BIG_CORE.peak_gflops_fp32)
    assert "LOO n/a" in a.error_note


def test_estimate_for_an_anchor_graph_names_its_own_held_out_error():
    model = E.AneModel()
    e = E.estimate_ane("image", 2.385, 0.060, 11.35, model)  # what count_macs reports for our MCi0
    assert "'MCi0 (S0)'" in e.error_note
    assert f"{model.loo.errors_pct['MCi0 (S0)']:+.1f}%" in e.error_note
    assert model.matching_anchor(5.0, 0.5, 50.0) is None
