"""Accuracy guard: task measures, weight simulation, layer naming, and the export stage end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileclip_export.export.compression.calibration import TaskData, captions
from mobileclip_export.export.compression.guard import (
    compressible_layers,
    layer_sensitivity,
    simulate_weight,
    task_measures,
    task_violations,
)
from mobileclip_export.export.compression.precisions import COMPRESSED, matches_layer, parse_layers
from mobileclip_export.export.tolerances import TASK_TOLERANCES, task_tolerance_for


def _task(seed: int = 0) -> TaskData:
    rng = np.random.default_rng(seed)
    txt = rng.standard_normal((20, 16)).astype(np.float32)
    img = txt[:8] + 0.3 * rng.standard_normal((8, 16)).astype(np.float32)  # image i matches caption i
    return TaskData(np.zeros((8, 3, 4, 4), np.float32), np.zeros((20, 77), np.int32), img, txt, 100.0)


def test_task_measures_are_perfect_for_identical_embeddings_and_drop_with_noise() -> None:
    task = _task()
    same = task_measures(task, task.ref_image.copy(), None)
    assert same["top1_agreement"] == 1.0 and same["top5_agreement"] == 1.0
    assert same["mean_abs_prob_change"] == 0.0
    noisy = task_measures(
        task, task.ref_image + 3.0 * np.random.default_rng(1).standard_normal((8, 16)), None
    )
    assert noisy["top1_agreement"] < 1.0 and noisy["mean_abs_prob_change"] > 0.01
    assert task_violations(noisy, TASK_TOLERANCES["int8"])
    assert task_violations(same, TASK_TOLERANCES["int8"]) == []


def test_retrieval_is_judged_on_decisive_photos_only() -> None:
    """A flip among captions fp32 itself ranks within DECISIVE_MARGIN logits is no failure; the same flip on
    a decisively ranked photo is. With no decisive photo at all, the guard waives top-1/top-5 by measurement
    (a random-weights checkpoint is not flagged as random, so the flag alone cannot decide)."""
    from dataclasses import replace

    from mobileclip_export.export.compression.guard import DECISIVE_MARGIN, guard_artifact
    from mobileclip_export.export.parity import Tolerance

    task = _task()
    assert task_measures(task, task.ref_image, None)["decisive_images"] == 8  # clear matches
    # Near ties: every photo scores every caption within the margin (logit scale shrunk to make it so).
    tied = replace(task, logit_scale=DECISIVE_MARGIN / 10)
    noisy = task.ref_image + 3.0 * np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    m = task_measures(tied, noisy, None)
    assert m["decisive_images"] == 0 and m["top1_agreement"] < 1.0
    loose = Tolerance(min_cosine=-1.0, max_abs_rel=1e9, min_psnr_db=-1e9)
    tols = (loose, TASK_TOLERANCES["int8"])
    calls = iter([task.ref_image, noisy])
    report = guard_artifact(tied, "image", lambda x: next(calls), "int8", tols, (task.images, task.ref_image))
    assert report.passed and "top-1 agreement" in report.measures["task_not_enforced"], report.measures
    calls = iter([task.ref_image, noisy])  # the same noise against decisive rankings fails
    report = guard_artifact(task, "image", lambda x: next(calls), "int8", tols, (task.images, task.ref_image))
    assert not report.passed and "top-1 agreement" in report.violations[0]


def test_every_compressed_precision_has_guard_limits() -> None:
    for p in COMPRESSED:
        assert task_tolerance_for(p) is not None, p
    assert task_tolerance_for("fp16") is None


def test_simulated_weights_round_like_the_precision() -> None:
    w = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
    q = simulate_weight(w, "int8")
    step = np.abs(w).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(q - w) <= step / 2 + 1e-7)
    for prec, bits in (("palettize4", 4), ("palettize2", 2)):
        lut = simulate_weight(w, prec)
        assert len(np.unique(lut)) <= 1 << bits
    err4 = np.abs(simulate_weight(w, "palettize4") - w).mean()
    err2 = np.abs(simulate_weight(w, "palettize2") - w).mean()
    assert 0 < err4 < err2


def test_layer_sensitivity_ranks_the_layer_that_matters() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)).eval()
    with torch.no_grad():
        net[1].weight[0, 0] = 50.0  # one outlier: a 2-bit table of layer 1 maps everything else to ~0
    assert compressible_layers(net) == ["0", "1"]
    ranked = layer_sensitivity(
        net, np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32), "palettize2"
    )
    assert [n for n, _ in ranked][0] == "1" and ranked[0][1] > ranked[1][1]


def test_layer_names_match_converter_weight_names() -> None:
    keep = parse_layers("model.network.2.0.convffn.fc1.weight, projection_layer")
    assert keep == ("model.network.2.0.convffn.fc1", "projection_layer")
    assert matches_layer("p_network_2_0_convffn_fc1_weight", keep) == keep[0]
    assert matches_layer("model.network.2.0.convffn.fc1.weight", keep) == keep[0]
    assert matches_layer("p_network_2_0_convffn_fc10_weight", keep) is None
    assert matches_layer("p_projection_layer", keep) == "projection_layer"
    assert matches_layer("transpose_1_1", keep) is None


def test_captions_name_every_shipped_photograph() -> None:
    from mobileclip_export.models.samples import SAMPLES

    caps = captions()
    assert len(caps) >= len(SAMPLES) + 5 and len(set(caps)) == len(caps)


@pytest.mark.slow
def test_over_compressed_core_ml_fails_the_guard_then_passes_with_kept_layers(tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    pytest.importorskip("skimage")
    from mobileclip_export.export.pipeline.api import export_model

    common = dict(encoders="image", precision="palettize2", reduced=True, output_dir=tmp_path)
    res = export_model("mobileclip_s0", "coreml", **common)
    rec = res.artifacts[0]
    assert rec.status == "failed" and "accuracy guard (palettize2, image)" in rec.error
    worst = rec.details["accuracy_guard"]["worst_layers"]
    assert worst[0]["layer"] in rec.error and "cosine" in rec.error
    res = export_model("mobileclip_s0", "coreml", options={"auto_keep_fp": True}, **common)
    rec = res.artifacts[0]
    assert rec.status == "verified", rec.error
    man = json.loads(Path(res.manifest_path).read_text())["artifacts"][0]
    assert man["details"]["kept_fp_layers"] and man["details"]["accuracy_guard"]["status"] == "passed"
    assert set(man["details"]["kept_fp_layers"]) <= {w["layer"] for w in worst}


def test_task_limits_are_reported_not_enforced_for_random_weights() -> None:
    from dataclasses import replace

    from mobileclip_export.export.compression.guard import guard_artifact
    from mobileclip_export.export.parity import Tolerance

    task = _task()
    noisy = task.ref_image + 3.0 * np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    loose = Tolerance(min_cosine=-1.0, max_abs_rel=1e9, min_psnr_db=-1e9)
    tols = (loose, TASK_TOLERANCES["int8"])
    verify = (task.images, task.ref_image)
    calls = iter([task.ref_image, noisy])
    enforced = guard_artifact(task, "image", lambda x: next(calls), "int8", tols, verify)
    assert not enforced.passed and "top-1 agreement" in enforced.violations[0]
    calls = iter([task.ref_image, noisy])
    report = guard_artifact(
        replace(task, enforce_task=False), "image", lambda x: next(calls), "int8", tols, verify
    )
    assert report.passed and "top-1 agreement" in report.measures["task_not_enforced"]
