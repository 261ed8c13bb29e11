"""The fidelity comparison on a geometry without labelled data: every method fitted by calibrate's own search at the
budget, measured on photos it was not fitted on."""
from __future__ import annotations

import json

import pytest
import yaml

from tools.fidelity import main, table

METHODS = {"merge stage + thresholds", "thresholds", "fixed-rate top-k", "ToMe-style merging"}
BUDGET_SLACK = 0.05  # the held-out photos cost what the calibration photos cost, give or take a few tokens


@pytest.mark.slow
def test_every_method_is_fitted_at_the_budget_and_measured_on_held_out_photos(tmp_path, capsys):
    config = tmp_path / "geometry.yaml"
    config.write_text(yaml.safe_dump({
        "name": "geometry",
        "model": {"arch": "vit_tiny_patch16_224", "img_size": 32, "in_chans": 3, "num_classes": 10, "patch_size": 8,
                  "embed_dim": 32, "depth": 4, "num_heads": 2, "mlp_ratio": 2.0},
        "gates": {"token_stages": [2, 3]}, "bench": {"seed": 0}}))
    out = tmp_path / "fidelity.json"
    assert main([str(config), "--budgets", "0.8", "--images", "12", "--grid", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == {"calibration": 6, "measured": 6}
    row = report["rows"][0]
    assert set(row) - {"budget"} == METHODS
    for method in METHODS:
        assert row[method]["kl"] >= 0 and 0 <= row[method]["agreement"] <= 1
        assert row[method]["gflops_ratio"] <= 0.8 + BUDGET_SLACK, method
    assert row["ToMe-style merging"]["gflops_ratio"] <= row["merge stage + thresholds"]["gflops_ratio"] + 1e-9
    printed = capsys.readouterr().out
    assert table(report) in printed and "| 0.8 |" in printed
