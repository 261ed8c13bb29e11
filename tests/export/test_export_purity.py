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


def test_a_view_under_another_mode_leaves_the_model_as_it_was(tmp_path, fmnist_root):
    """with_inference returns a view: the original keeps its mode and computes what it computed before."""
    import torch

    from pipeline.models.gated_vit import Inference

    cfg = tiny_config(fmnist_root, gates={"token_stages": [2, 3], "init_threshold": 1.0})
    model = load_student(make_run(tmp_path / "run", cfg))
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model.forward_dropped(images)
        view = model.with_inference("capped", [3, 1], shared_scores=False)
        capped = view.forward_dropped(images)
        after = model.forward_dropped(images)
    assert model.inference == Inference() and view.inference == Inference("capped", (3, 1), False)
    assert (capped[1] - 1 <= torch.tensor([3, 1])).all() and not torch.equal(capped[1], before[1])
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert view.thresholds is model.thresholds  # the same parameters, not a copy
