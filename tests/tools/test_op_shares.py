"""The op-type profile of a run's shipped packed and dense files, and the ceiling its Gemms put on the speedup."""
from __future__ import annotations

import json

import pytest

from pipeline.export.run_export import export_run
from tests.conftest import make_run, tiny_config
from tools.op_shares import main


@pytest.mark.slow
def test_profile_of_the_shipped_files_and_its_ceiling(tmp_path, fmnist_root, capsys):
    run = make_run(tmp_path / "run", tiny_config(fmnist_root, gates={"token_stages": [2, 3], "init_threshold": 1.0}))
    assert main([str(run)]) == 2  # nothing exported yet: one line naming the export
    assert "tokengate export" in capsys.readouterr().err
    export_run(run, ["packed", "dense"])
    out = tmp_path / "ops.json"
    assert main([str(run), "--batch", "2", "--images", "6", "--json", str(out)]) == 0
    shares = json.loads(out.read_text())
    assert shares["batch"] == 2 and shares["images"] == 6
    assert shares["dense_us"]["Gemm"] > 0 and shares["packed_us"]["Gemm"] > 0
    assert "If" not in shares["packed_us"]  # a branch's time is its nodes', counted once
    assert "NonZero" in shares["packed_us"] and "NonZero" not in shares["dense_us"]  # the selection runs
    assert shares["flops_ratio"] > 1.0  # the stages drop tokens
    # the ceiling keeps the Gemms' measured time and divides the rest by the FLOPs ratio
    dense_total, gemm = sum(shares["dense_us"].values()), shares["packed_us"]["Gemm"]
    rest = (dense_total - shares["dense_us"]["Gemm"]) / shares["flops_ratio"]
    assert shares["ceiling_speedup"] == pytest.approx(dense_total / (gemm + rest), rel=1e-9)
    assert shares["ceiling_efficiency"] == pytest.approx(shares["ceiling_speedup"] / shares["flops_ratio"], rel=1e-9)
    printed = capsys.readouterr().out
    assert "ceiling with every other op at the FLOPs ratio" in printed and "Gemm" in printed


def test_check_run_refuses_a_missing_file_and_an_unfillable_batch(tmp_path):
    from pipeline.errors import TokenGateError
    from tools.op_shares import check_run

    (tmp_path / "model.dense.onnx").write_bytes(b"")
    with pytest.raises(TokenGateError, match="has no model.packed.onnx.*tokengate export"):
        check_run(tmp_path, 1, 12)
    (tmp_path / "model.packed.onnx").write_bytes(b"")
    check_run(tmp_path, 4, 4)  # both files, and a batch the images fill: no error
    for batch, images in ((0, 12), (8, 4)):
        with pytest.raises(TokenGateError, match="--batch must be at least 1 and --images at least --batch"):
            check_run(tmp_path, batch, images)
