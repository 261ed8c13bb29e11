"""Artifacts: every file of a run gets the usual permissions, and a failed write leaves the old file in place."""
from __future__ import annotations

import os
import stat

import pytest

from pipeline.artifacts import atomic_path, write_text
from tests.conftest import make_run, tiny_config


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_every_file_of_a_run_gets_the_usual_permissions(tmp_path, fmnist_root):
    """Checkpoints (written by safetensors, which replaces the file it is given), JSON and ONNX files alike."""
    from pipeline.export.run_export import export_run

    run = make_run(tmp_path / "run", tiny_config(fmnist_root))
    export_run(run, ["dense", "native"])
    expected = 0o666 & ~_umask()
    files = sorted(p for p in run.iterdir() if p.is_file())
    assert {p.name for p in files} >= {"teacher.safetensors", "student.safetensors", "config.json",
                                       "model.dense.onnx", "model.native.onnx"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == expected, f"{path.name}: {oct(stat.S_IMODE(path.stat().st_mode))}"


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "report.json"
    write_text(path, "good")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("the writer failed")
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind


def _tiny_onnx(scale: float):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((4, 4), scale, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("external", [False, True])
def test_a_failed_onnx_save_keeps_the_previous_model_and_its_data(tmp_path, monkeypatch, external):
    """With external data the model names its .data file, so both are staged and moved; a save that fails its check
    leaves the previous pair, and no scratch file, behind."""
    import onnx
    from onnx import numpy_helper

    from pipeline.artifacts import save_onnx

    path = tmp_path / "model.onnx"
    save_onnx(_tiny_onnx(1.0), path, external_data=external)
    assert (tmp_path / "model.onnx.data").is_file() == external
    expected = 0o666 & ~_umask()
    assert all(stat.S_IMODE(p.stat().st_mode) == expected for p in tmp_path.iterdir())

    def broken(*args, **kwargs):
        raise onnx.checker.ValidationError("broken on purpose")

    monkeypatch.setattr(onnx.checker, "check_model", broken)
    with pytest.raises(onnx.checker.ValidationError):
        save_onnx(_tiny_onnx(2.0), path, external_data=external)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"][:1 + external]
    weight = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0], base_dir=str(tmp_path))
    assert float(weight[0, 0]) == 1.0
