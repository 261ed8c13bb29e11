"""Fixtures for the plugins tests: tiny ONNX models shaped like TokenGate's exports, and a CMake build of plugins/."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def images_input(channels: int = 1, size: int = 28) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", channels, size, size])


def dense_model(channels: int = 1, size: int = 28, classes: int = 10) -> onnx.ModelProto:
    """images [B, C, H, W] -> logits [B, classes], like model.dense.onnx."""
    weight = numpy_helper.from_array(np.ones((channels * size * size, classes), np.float32), "head.weight")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "head.weight"], ["logits"])],
        "dense", [images_input(channels, size)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def plugin_model(channels: int = 1, size: int = 28) -> onnx.ModelProto:
    """A graph with one tokengate::TokenSelect node as the exporter writes it (two outputs, no plugin attributes)."""
    threshold = numpy_helper.from_array(np.array(1.0, np.float32), "stage0.threshold")
    nodes = [
        helper.make_node("Reshape", ["images", "tokens_shape"], ["x"]),
        helper.make_node("ReduceMean", ["x"], ["all_scores"], axes=[2], keepdims=0),
        helper.make_node("Slice", ["all_scores", "one", "big", "one"], ["scores"]),
        helper.make_node("TokenSelect", ["x", "scores", "stage0.threshold"], ["y", "lengths"],
                         domain="tokengate", num_prefix=1, min_keep=1),
        helper.make_node("ReduceMean", ["y"], ["logits"], axes=[1], keepdims=0),
    ]
    consts = [
        numpy_helper.from_array(np.array([0, channels * size, size], np.int64), "tokens_shape"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([1 << 30], np.int64), "big"),
        threshold,
    ]
    graph = helper.make_graph(nodes, "plugin", [images_input(channels, size)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", size]),
                               helper.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"])], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("tokengate", 1)])


def save_with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Save as torch's dynamo exporter does: weights in `<name>.data` beside the model."""
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory holding model.dense.onnx and model.plugin.onnx (external weights), inputs images [B,1,28,28]."""
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    save_with_external_data(dense_model(), run / "model.dense.onnx")
    save_with_external_data(plugin_model(), run / "model.plugin.onnx")
    return run


@pytest.fixture
def tiny_plugin_model() -> onnx.ModelProto:
    return plugin_model()


@pytest.fixture
def tiny_dense_model() -> onnx.ModelProto:
    return dense_model()


@pytest.fixture
def write_dense_onnx():
    """write(path, channels, size): saves a dense model whose input is images [B, channels, size, size]."""
    def write(path: Path, channels: int = 1, size: int = 28) -> None:
        save_with_external_data(dense_model(channels=channels, size=size), path)
    return write


PLUGINS_DIR = Path(__file__).resolve().parents[2] / "plugins"


def cmake_build(build_dir: Path, *options: str) -> str:
    """Configure and build plugins/ into build_dir; returns the combined configure and build output."""
    configure = subprocess.run(["cmake", "-S", str(PLUGINS_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                                *options], capture_output=True, text=True, timeout=600)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    build = subprocess.run(["cmake", "--build", str(build_dir), "-j2"], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    return configure.stdout + configure.stderr + build.stdout + build.stderr


@pytest.fixture(scope="session")
def kernel_build(tmp_path_factory) -> tuple[Path, str]:
    """The kernel library built by CMake + nvcc with the default options (no TensorRT): (build dir, output)."""
    build_dir = tmp_path_factory.mktemp("kernels-build")
    return build_dir, cmake_build(build_dir)


@pytest.fixture(scope="session")
def build_plugins():
    """cmake_build(build_dir, *cmake_options) -> output, for tests that need their own configuration."""
    return cmake_build
