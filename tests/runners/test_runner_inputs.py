"""Runtime names, the runner factory, and the input checks every runner shares (one checker, two runners)."""
import sys

import numpy as np
import pytest

from pipeline.errors import TokenGateError
from pipeline.runners import RUNTIMES, make_runner, runtime_name
from pipeline.runners.inputs import NonFiniteInput, check_batch
from tests.conftest import make_run, tiny_config
from tests.onnx_models import write_tiny


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, fmnist_root):
    """An untrained run directory (28x28 grey) and a tiny plugin-flavor ONNX file (1x4x4) with metadata."""
    cfg = tiny_config(fmnist_root)
    run = make_run(tmp_path_factory.mktemp("run"), cfg)
    return {"run": run, "onnx": write_tiny(tmp_path_factory.mktemp("onnx"), "plugin", cfg)}


def test_runtime_names_are_one_set_with_aliases():
    assert RUNTIMES == ("torch", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
    assert runtime_name("onnxruntime") == "ort-cpu" and runtime_name("ort-trt") == "ort-trt"
    with pytest.raises(TokenGateError, match="unknown runtime 'ort-gpu'.*torch, ort-cpu, ort-cuda, ort-trt, tensorrt"):
        runtime_name("ort-gpu")


def test_factory_picks_the_runner_and_default_runtime(artifacts):
    assert make_runner(artifacts["run"]).runtime == "torch"
    assert make_runner(artifacts["run"] / "student.safetensors").runtime == "torch"
    assert make_runner(artifacts["onnx"]).runtime == "ort-cpu"
    assert make_runner(artifacts["onnx"], "onnxruntime").runtime == "ort-cpu"


@pytest.mark.parametrize("artifact, runtime, message", [
    ("run", "ort-cpu", "runs through torch"),
    ("onnx", "tensorrt", "build an engine first"),
    ("onnx", "torch", "runs through ort-cpu"),
])
def test_factory_refuses_mismatched_runtime(artifacts, artifact, runtime, message):
    with pytest.raises(TokenGateError, match=message):
        make_runner(artifacts[artifact], runtime)


def test_factory_refuses_unknown_files(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(TokenGateError, match="neither a run directory"):
        make_runner(tmp_path / "weights.bin")
    with pytest.raises(TokenGateError, match="does not exist"):
        make_runner(tmp_path / "model.plugin.onnx")


def test_engine_without_tensorrt_runner_is_a_clear_error(tmp_path, monkeypatch):
    engine = tmp_path / "model.capped.sm86.fp16.engine"
    engine.write_bytes(b"plan")
    monkeypatch.setitem(sys.modules, "pipeline.runners.tensorrt", None)  # import fails as where it is absent
    with pytest.raises(TokenGateError, match="TensorRT runner is not available"):
        make_runner(engine)


def test_onnx_file_that_is_not_ours_is_refused(tmp_path, fmnist_root):
    path = write_tiny(tmp_path, "native", tiny_config(fmnist_root), name="foreign.onnx", tagged=False)
    with pytest.raises(TokenGateError, match="no TokenGate metadata"):
        make_runner(path)


# ---- input checks: one checker, run against each runner ------------------------------------------------------
@pytest.fixture(scope="module", params=["torch", "ort-cpu"])
def runner(request, artifacts):
    return make_runner(artifacts["run" if request.param == "torch" else "onnx"])


def _good(runner, batch=3):
    return np.random.default_rng(0).standard_normal((batch, *runner.input_shape)).astype(np.float32)


def test_good_batch_runs(runner):
    out = runner.infer(_good(runner))
    assert out.logits.shape[0] == 3 and out.logits.dtype == np.float32
    assert out.kept_tokens.shape[0] == 3 and out.kept_tokens.dtype == np.int32


@pytest.mark.parametrize("bad, message", [
    (lambda x: x[0], r"has shape \[.*\], the model expects float32 \[B, "),
    (lambda x: np.concatenate([x, x], axis=1), r"has 2 channels, the model expects 1"),
    (lambda x: x[:, :, :-1], r"the model expects \d+x\d+"),
    (lambda x: x.astype(np.float64), r"is float64, the model expects float32"),
    (lambda x: (x * 0).astype(np.uint8), r"is uint8, the model expects float32"),
    (lambda x: x[:0], r"batch is empty"),
    (lambda x: [1.0, 2.0], r"is a list, not an array"),
])
def test_bad_inputs_name_the_expected_shape(runner, bad, message):
    with pytest.raises(TokenGateError, match=message):
        runner.infer(bad(_good(runner)))


def test_nonfinite_samples_are_refused_and_named(runner):
    images = _good(runner, batch=5)
    images[1, 0, 0, 0] = np.nan
    images[3, 0, -1, -1] = -np.inf
    with pytest.raises(NonFiniteInput, match=r"input samples \[1, 3\] \(2 of 5\) contain NaN or Inf") as info:
        runner.infer(images)
    assert info.value.samples == [1, 3]


def test_check_batch_accepts_torch_tensors_and_keeps_values():
    import torch

    images = torch.randn(2, 1, 4, 4)
    checked = check_batch(images, (1, 4, 4))
    assert checked.flags.c_contiguous
    np.testing.assert_array_equal(checked, images.numpy())  # tolerance 0: no conversion happened
