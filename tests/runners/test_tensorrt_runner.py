"""TensorRTRunner: its checks before deserializing (from engine.json), batches against the profile, chunking, and
which TensorRT Polygraphy binds. The run itself needs a GPU plus TensorRT or TensorRT-RTX, and skips without them."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from pipeline.build.profile import BatchProfile
from pipeline.errors import TokenGateError
from pipeline.runners import tensorrt as runner
from pipeline.runners.base import RunnerOutput
from pipeline.runners.tensorrt import TensorRTRunner, bind_polygraphy, chunks, merge
from tests.build.helpers import make_engine

PARITY_TOL = 1e-3  # fp32 TensorRT vs ONNX Runtime CPU: other kernels and summation orders, no TF32
INVARIANCE_TOL = 1e-4  # TensorRT may pick other kernels per batch size; ORT CPU promises 1e-5 (DESIGN.md section 3)

needs_rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                               reason="tensorrt_rtx is not installed (pip install tensorrt-rtx-cu13)")


def test_chunks_helper_is_exported_for_callers():
    assert chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]


def test_merge_keeps_chunk_order_and_dense_has_no_kept_tokens():
    parts = [{"logits": np.full((2, 3), i, np.float32), "kept_tokens": np.full((2, 1), i, np.int32)} for i in (0, 1)]
    out = merge(parts)
    assert out.logits[:, 0].tolist() == [0, 0, 1, 1] and out.kept_tokens[:, 0].tolist() == [0, 0, 1, 1]
    assert merge([{"logits": np.zeros((1, 3), np.float32)}]).kept_tokens is None


class _ReusingTrtRunner:
    """Stands in for an active TrtRunner, which returns views of the same host buffers on every call."""

    def __init__(self):
        self.logits = np.zeros((16, 2), np.float32)

    def infer(self, feed, check_inputs=True):
        batch = len(feed["images"])
        self.logits[:batch] = feed["images"].reshape(batch, -1)[:, :2]
        return {"logits": self.logits[:batch]}


def test_chunks_outlive_the_trt_runner_buffers_they_came_from():
    bare = _bare_runner(auto_chunk=True)
    del bare._run  # the real _run, over a stand-in for Polygraphy's runner
    bare._active, bare._input_dtype = _ReusingTrtRunner(), np.float32
    images = np.random.default_rng(0).standard_normal((40, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(bare.infer(images).logits, images.reshape(40, -1)[:, :2])  # exact: copies


def _bare_runner(auto_chunk: bool) -> TensorRTRunner:
    """A runner past its checks and load, whose engine is a stand-in that records batch sizes."""
    bare = object.__new__(TensorRTRunner)
    bare.artifact, bare.auto_chunk = "model.capped.sm86.fp16.engine", auto_chunk
    bare.profile = BatchProfile(1, 8, 16)
    bare.info = type("Info", (), {"input_shape": [1, 28, 28]})()
    bare.seen = []

    def run(images):
        bare.seen.append(len(images))
        return {"logits": images.reshape(len(images), -1)[:, :2].copy(), "kept_tokens": np.ones((len(images), 1),
                                                                                                 np.int32)}
    bare._run = run
    return bare


def test_a_batch_outside_the_profile_is_refused_with_its_range():
    with pytest.raises(TokenGateError, match="batch 40 is outside the profile of model.capped.sm86.fp16.engine, "
                                             "which takes batches 1 to 16.*auto_chunk=True"):
        _bare_runner(auto_chunk=False).infer(np.zeros((40, 1, 28, 28), np.float32))


def test_auto_chunk_runs_a_big_batch_in_profile_sized_pieces_in_order():
    bare = _bare_runner(auto_chunk=True)
    images = np.random.default_rng(0).standard_normal((40, 1, 28, 28)).astype(np.float32)
    out = bare.infer(images)
    assert bare.seen == [16, 16, 8] and isinstance(out, RunnerOutput)
    np.testing.assert_array_equal(out.logits, images.reshape(40, -1)[:, :2])  # exact: copies


def test_images_of_the_wrong_size_are_refused():
    with pytest.raises(TokenGateError, match="the input has 3 channels, the model expects 1"):
        _bare_runner(auto_chunk=False).infer(np.zeros((2, 3, 28, 28), np.float32))


@needs_rtx
class TestChecksBeforeDeserializing:
    """A stand-in engine file with a valid engine.json: every refusal happens before TensorRT reads the bytes."""

    @pytest.fixture
    def engine(self, tmp_path):
        import tensorrt_rtx as trt

        return make_engine(tmp_path, runtime_version=trt.__version__)

    def test_no_gpu(self, engine, monkeypatch):
        monkeypatch.setattr(runner.targets, "detect_target", lambda: None)
        with pytest.raises(TokenGateError, match="needs an NVIDIA GPU .*none is visible here"):
            TensorRTRunner(engine[0])

    def test_another_gpu(self, engine, monkeypatch):
        monkeypatch.setattr(runner.targets, "detect_target", lambda: "sm89")
        with pytest.raises(TokenGateError, match="built for sm86 .*this GPU is sm89.*--target sm89"):
            TensorRTRunner(engine[0])

    def test_another_runtime_version(self, tmp_path):
        path, _ = make_engine(tmp_path, runtime_version="0.9.0")
        with pytest.raises(TokenGateError, match="built by tensorrt-rtx 0.9.0, and this is"):
            TensorRTRunner(path)

    def test_a_corrupt_engine(self, engine):
        path, _ = engine
        path.write_bytes(path.read_bytes()[:-3] + b"bad")
        with pytest.raises(TokenGateError, match="is corrupt or was changed after it was built"):
            TensorRTRunner(path)

    def test_a_missing_engine_json(self, engine):
        path, _ = engine
        path.with_name(path.name + ".json").unlink()
        with pytest.raises(TokenGateError, match="engine.json is missing"):
            TensorRTRunner(path)


def test_a_plugin_engine_is_never_opened_with_tensorrt_rtx(tmp_path):
    path, _ = make_engine(tmp_path, flavor="plugin")  # runtime tensorrt-rtx: its process would abort on our plugin
    with pytest.raises(TokenGateError, match="plugin-flavor engine for tensorrt-rtx, which cannot run plugins"):
        TensorRTRunner(path)


def test_a_runtime_that_is_not_installed(tmp_path, monkeypatch):
    path, _ = make_engine(tmp_path, runtime="tensorrt", runtime_version="10.13.0")
    monkeypatch.setattr("importlib.import_module", lambda name: (_ for _ in ()).throw(ImportError(name)))
    with pytest.raises(TokenGateError, match="TensorRT is not importable here"):
        TensorRTRunner(path)


def _bound_module(runtime: str) -> str:
    """The module Polygraphy's TrtRunner and its dtype mapping use after bind_polygraphy, in a fresh process."""
    code = ("from pipeline.runners.tensorrt import bind_polygraphy; bind_polygraphy(%r); "
            "import polygraphy.backend.trt.runner as r, polygraphy.datatype.tensorrt as d; "
            "print(r.trt.__name__, d.trt.__name__)"
            % runtime)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()[-2:]


@needs_rtx
def test_an_rtx_engine_binds_polygraphy_to_tensorrt_rtx_in_a_fresh_process():
    assert _bound_module("tensorrt-rtx") == ["tensorrt_rtx", "tensorrt_rtx"]


def test_polygraphy_bound_to_one_runtime_refuses_the_other(monkeypatch):
    """Once Polygraphy's TensorRT backend is imported its module is fixed: the other runtime is refused."""
    import types

    from polygraphy import config

    monkeypatch.setattr(config, "USE_TENSORRT_RTX", False)
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", types.ModuleType("polygraphy.backend.trt"))
    bind_polygraphy("tensorrt")  # already bound to it: nothing to do
    with pytest.raises(TokenGateError, match="already runs TensorRT, and this is a TensorRT-RTX engine.*"
                                             "POLYGRAPHY_USE_TENSORRT_RTX=1"):
        bind_polygraphy("tensorrt-rtx")


def test_polygraphy_binds_the_engines_runtime_until_its_backend_is_imported(monkeypatch):
    """Importing Polygraphy for ONNX Runtime or PyTorch first does not fix the TensorRT module yet."""
    from polygraphy import config

    monkeypatch.setattr(config, "USE_TENSORRT_RTX", False)
    monkeypatch.delitem(sys.modules, "polygraphy.backend.trt", raising=False)
    bind_polygraphy("tensorrt-rtx")
    assert config.USE_TENSORRT_RTX
    bind_polygraphy("tensorrt")
    assert not config.USE_TENSORRT_RTX


def _gpu_runtime() -> str | None:
    """The runtime that can run an engine here: a GPU plus TensorRT or TensorRT-RTX (for an RTX GPU)."""
    from pipeline.build import runtimes, targets

    current = targets.detect_target()
    if current is None:
        return None
    if runtimes.available(runtimes.TENSORRT):
        return runtimes.TENSORRT
    if runtimes.available(runtimes.RTX) and current in targets.RTX_TARGETS:
        return runtimes.RTX
    return None


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.slow
@pytest.mark.skipif(_gpu_runtime() is None, reason="needs an NVIDIA GPU and TensorRT (or TensorRT-RTX on an RTX GPU)")
def test_engine_matches_onnx_runtime_and_is_batch_invariant(tmp_path, fmnist_root):
    import onnxruntime as ort

    from pipeline.build import targets
    from pipeline.build.run_build import build_engine
    from pipeline.export.run_export import export_run
    from tests.build.helpers import DEFAULT_GEOMETRY
    from tests.conftest import make_run, tiny_config

    cfg = tiny_config(fmnist_root, model=DEFAULT_GEOMETRY, gates={"token_stages": None, "init_threshold": 1.0})
    run = make_run(tmp_path / "run", cfg)
    onnx_path = export_run(run, ["capped"])["capped"]
    built = build_engine(onnx_path, target=targets.detect_target(), precision="fp32", batch="1,8,32",
                         runtime=_gpu_runtime())
    trt_runner = TensorRTRunner(built.engine, auto_chunk=True)
    images = np.random.default_rng(0).standard_normal((40, 1, 28, 28)).astype(np.float32)
    got = trt_runner.infer(images)
    expected = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"images": images})
    assert np.abs(got.logits - expected[0]).max() <= PARITY_TOL
    np.testing.assert_array_equal(got.kept_tokens, expected[1])
    singles = np.concatenate([trt_runner.infer(images[i:i + 1]).logits for i in range(8)])
    assert np.abs(singles - got.logits[:8]).max() <= INVARIANCE_TOL
