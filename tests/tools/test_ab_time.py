"""The A/B timer: every file timed at every batch size, speedups against the baseline and per pair, and clear
refusals of bad names (timings themselves are not asserted)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.errors import TokenGateError
from tests.conftest import tiny_config
from tests.onnx_models import write_tiny
from tools.ab_time import ab_time, main, parse_named


def test_every_file_is_timed_and_compared(tmp_path, fmnist_root):
    cfg = tiny_config(fmnist_root)
    a = write_tiny(tmp_path / "a", "native", cfg, tagged=False)  # files from another checkout carry no metadata
    b = write_tiny(tmp_path / "b", "dense", cfg)
    pool = np.random.default_rng(0).normal(size=(6, 1, 4, 4)).astype(np.float32)
    result = ab_time({"a": a, "b": b}, pool, [1, 3], rounds=2, threads=1, baseline="a", pairs={"b": "a"})
    assert set(result["batches"]) == {1, 3} and result["images"] == 6
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
