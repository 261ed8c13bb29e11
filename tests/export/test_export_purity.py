"""What an export writes depends on the model and the flavor alone: exporting one flavor and then another from the
same model object gives the graphs that fresh models give (no selection or score-sharing state is left behind)."""
from __future__ import annotations

import onnx

from pipeline.export.metadata import ExportInfo
from pipeline.export.onnx_export import export_onnx
from pipeline.models import load_student
from tests.conftest import make_run, tiny_config


def _graph(model, cfg, run, flavor, path, caps=None) -> bytes:
    export_onnx(model, flavor, path, ExportInfo.of(model, cfg, flavor, run, 20, caps), caps=caps)
    return onnx.load(str(path)).graph.SerializeToString()


def test_exports_from_one_model_object_equal_exports_from_fresh_ones(tmp_path, fmnist_root):
    cfg = tiny_config(fmnist_root, gates={"token_stages": [2, 3], "init_threshold": 1.0})
    run = make_run(tmp_path / "run", cfg)
    shared = load_student(run)
    caps = [10, 5]
    after_capped = {"capped": _graph(shared, cfg, run, "capped", tmp_path / "a.onnx", caps),
                    "native": _graph(shared, cfg, run, "native", tmp_path / "b.onnx"),
                    "plugin": _graph(shared, cfg, run, "plugin", tmp_path / "c.onnx")}
    fresh = {"capped": _graph(load_student(run), cfg, run, "capped", tmp_path / "d.onnx", caps),
             "native": _graph(load_student(run), cfg, run, "native", tmp_path / "e.onnx"),
             "plugin": _graph(load_student(run), cfg, run, "plugin", tmp_path / "f.onnx")}
    assert after_capped == fresh
    assert shared.inference.select == "op" and shared.inference.caps is None and shared.inference.shared_scores
