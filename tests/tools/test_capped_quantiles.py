"""The capped-quantile sweep: one row per quantile, from files exported and timed by the product's own code, and the
run's shipped model.capped.onnx left alone."""
from __future__ import annotations

import json

import pytest

from tests.conftest import make_run, tiny_config
from tools.capped_quantiles import main


@pytest.mark.slow
def test_sweep_reports_caps_truncation_top1_and_speed(tmp_path, fmnist_root, capsys):
    run = make_run(tmp_path / "run", tiny_config(fmnist_root, gates={"token_stages": [2, 3], "init_threshold": 1.0}))
    out = tmp_path / "capped.json"
    assert main([str(run), "--quantiles", "0.5,1.0", "--batch-sizes", "1,4", "--rounds", "1", "--images", "8",
                 "--json", str(out)]) == 0
    rows = {r["quantile"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows[1.0]["truncation_rate"] == 0.0 < rows[0.5]["truncation_rate"]
    assert all(low <= high for low, high in zip(rows[0.5]["caps"], rows[1.0]["caps"]))
    for row in rows.values():
        assert set(row["speedup_vs_dense"]) == {"1", "4"} and row["top1"] is not None
    assert not (run / "model.capped.onnx").exists()
    assert not list(run.glob(".capped-*")), "the scratch runs are removed"
    assert "| 0.5 |" in capsys.readouterr().out
