"""The A/B timer: every file timed at every batch size, speedups against the baseline and per pair, and clear
refusals of bad names (timings themselves are not asserted)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import TokenGateError
from tests.conftest import tiny_config
from tests.onnx_models import write_tiny
from tools.ab_time import ab_time, branch_spec, cut_branches, main, parse_named


def test_every_file_is_timed_and_compared(tmp_path, fmnist_root):
    cfg = tiny_config(fmnist_root)
    a = write_tiny(tmp_path / "a", "native", cfg, tagged=False)  # files from another checkout carry no metadata
    b = write_tiny(tmp_path / "b", "dense", cfg)
    pool = np.random.default_rng(0).normal(size=(6, 1, 4, 4)).astype(np.float32)
    result = ab_time({"a": a, "b": b}, pool, [1, 3], rounds=2, threads=1, baseline="a", pairs={"b": "a"}, sessions=2)
    assert set(result["batches"]) == {1, 3} and result["images"] == 6 and result["sessions"] == 2
    for row in result["batches"].values():
        assert set(row["median_ms"]) == {"a", "b"} and all(v > 0 for v in row["median_ms"].values())
        assert row["vs_baseline"]["a"] == 1.0
        assert math.isclose(row["pairs"]["b/a"], row["vs_baseline"]["b"], rel_tol=1e-12)


def test_names_must_be_name_equals_value():
    assert parse_named(["x=1", "y=a=b"], "file") == {"x": "1", "y": "a=b"}
    with pytest.raises(TokenGateError, match="NAME=VALUE"):
        parse_named(["x"], "file")


def test_cli_refuses_an_unknown_baseline(tmp_path, capsys):
    assert main(["a=" + str(tmp_path / "a.onnx"), "--config", "configs/deit-s-224.yaml", "--baseline", "z"]) == 2
    assert "z is not one of" in capsys.readouterr().err
    a = tmp_path / "a.onnx"
    a.write_bytes(b"")
    assert main(["a=" + str(a), "--config", "configs/deit-s-224.yaml", "--baseline", "a", "--sessions", "0"]) == 2
    assert "--sessions must be positive" in capsys.readouterr().err


def test_a_branch_is_cut_out_as_a_file(tmp_path):
    """PATH@B names the branch of a packed file that runs batches of B; a file without branches is refused."""
    import onnx
    import torch

    from pipeline.config import Config
    from pipeline.export.batch_one import branch_model
    from pipeline.export.metadata import ExportInfo
    from pipeline.export.onnx_export import export_onnx
    from tests.models.test_merge_stage import TINY, merge_model

    model = merge_model("discard")
    packed = export_onnx(model, "packed", tmp_path / "model.packed.onnx",
                         ExportInfo.of(model, Config(model=TINY), "packed", tmp_path, 20))
    assert branch_spec(f"{packed}@1") == (packed, 1) and branch_spec("a@b.onnx") == (Path("a@b.onnx"), None)
    files = cut_branches({"whole": (packed, None), "one": (packed, 1)}, tmp_path)
    assert files["whole"] == packed
    cut = onnx.load(str(files["one"]))
    assert [n.name for n in cut.graph.node] == [n.name for n in branch_model(onnx.load(str(packed)), 1).graph.node]
    dense = write_tiny(tmp_path / "d", "dense", tiny_config(tmp_path), tagged=False)
    with pytest.raises(TokenGateError, match="no batch-one branch"):
        cut_branches({"x": (dense, 1)}, tmp_path)
    (tmp_path / "notes.onnx").write_text("not a model")
    with pytest.raises(TokenGateError, match="not a readable ONNX file"):
        cut_branches({"x": (tmp_path / "notes.onnx", 1)}, tmp_path)
