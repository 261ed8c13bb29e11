"""pipeline.runtime: provider selection (providers faked at onnxruntime.get_available_providers only), TensorRT EP
options, the plugin flavor on GPU providers, custom-op registration and readable load errors."""
import logging

import numpy as np
import onnxruntime
import pytest

from pipeline import runtime
from pipeline.errors import TokenGateError
from pipeline.runtime import CPU_EP, CUDA_EP, TRT_EP
from tests.conftest import tiny_config
from tests.onnx_models import write_tiny

ALL_GPU = [TRT_EP, CUDA_EP, CPU_EP]


@pytest.fixture
def models(tmp_path, fmnist_root):
    """A run directory holding tiny plugin and native files with TokenGate metadata."""
    cfg = tiny_config(fmnist_root)
    return {flavor: write_tiny(tmp_path / "run", flavor, cfg) for flavor in ("plugin", "native")}


@pytest.fixture
def providers(monkeypatch):
    """Fake what this onnxruntime build offers; everything else stays real."""
    def fake(names):
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(names))
    return fake


@pytest.fixture
def no_plugin_lib(monkeypatch, tmp_path):
    monkeypatch.setattr("pipeline.build.plugin_lib.DEFAULT_LIBRARY", tmp_path / "absent" / "libtokengate_plugins.so")


@pytest.mark.parametrize("available, device, expected", [
    (ALL_GPU, "auto", (TRT_EP, CUDA_EP, CPU_EP)),
    ([CUDA_EP, CPU_EP], "auto", (CUDA_EP, CPU_EP)),
    ([CPU_EP], "auto", (CPU_EP,)),
    (ALL_GPU, "cuda", (CUDA_EP, CPU_EP)),
    (ALL_GPU, "cpu", (CPU_EP,)),
    ([TRT_EP, CPU_EP], "tensorrt", (TRT_EP, CPU_EP)),
])
def test_provider_order_is_tensorrt_then_cuda_then_cpu(models, providers, no_plugin_lib, available, device, expected):
    providers(available)
    plan = runtime.plan_session(models["native"], device)
    assert plan.providers == expected
    assert len(plan.provider_options) == len(expected)


def test_skipped_providers_say_why(models, providers, no_plugin_lib):
    providers([CPU_EP])
    notes = " | ".join(runtime.plan_session(models["native"], "auto").notes)
    assert f"{TRT_EP} skipped: not installed" in notes and f"{CUDA_EP} skipped: not installed" in notes
    providers(ALL_GPU)
    notes = " | ".join(runtime.plan_session(models["native"], "cpu").notes)
    assert f"{TRT_EP} skipped: not asked (device=cpu)" in notes and f"{CUDA_EP} skipped: not asked" in notes
    notes = " | ".join(runtime.plan_session(models["native"], "cuda").notes)
    assert f"{TRT_EP} skipped: not asked (device=cuda)" in notes


@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_asking_for_a_missing_gpu_provider_is_a_clear_error(models, providers, device):
    providers([CPU_EP])
    with pytest.raises(TokenGateError, match="onnxruntime-gpu"):
        runtime.plan_session(models["native"], device)


def test_unknown_device(models):
    with pytest.raises(TokenGateError, match="unknown device 'gpu'"):
        runtime.plan_session(models["native"], "gpu")


def test_tensorrt_options_plugin_library_cache_in_run_dir_and_fp16(models, providers, tmp_path):
    providers(ALL_GPU)
    lib = tmp_path / "libtokengate_plugins.so"
    lib.write_bytes(b"")
    plan = runtime.plan_session(models["plugin"], "auto", fp16=True, plugin_lib=lib)
    trt = dict(zip(plan.providers, plan.provider_options))[TRT_EP]
    assert trt["trt_extra_plugin_lib_paths"] == str(lib)
    assert trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(models["plugin"].parent / "trt_cache")
    assert trt["trt_fp16_enable"] == "True"
    assert dict(zip(plan.providers, plan.provider_options))[CUDA_EP] == {"use_tf32": "0"}  # fp32 parity on CUDA
    assert runtime.plan_session(models["plugin"], "auto", plugin_lib=lib).provider_options[0]["trt_fp16_enable"] == \
        "False"


def test_missing_explicit_plugin_library_is_an_error(models, providers, tmp_path):
    providers(ALL_GPU)
    with pytest.raises(TokenGateError, match="make plugins"):
        runtime.plan_session(models["plugin"], "tensorrt", plugin_lib=tmp_path / "nope.so")


@pytest.mark.parametrize("available, with_lib", [([CUDA_EP, CPU_EP], False), (ALL_GPU, False), (ALL_GPU, True)])
def test_plugin_flavor_on_a_gpu_provider_opens_the_native_sibling(models, providers, tmp_path, available, with_lib):
    """TokenSelect would run on the CPU with copies (the TensorRT EP takes "trt.plugins" nodes only): native it is."""
    providers(available)
    lib = tmp_path / "libtokengate_plugins.so"
    lib.write_bytes(b"")
    plan = runtime.plan_session(models["plugin"], "auto", plugin_lib=lib if with_lib else None)
    assert plan.path == models["native"] and plan.flavor == "native" and not plan.custom_ops
    assert plan.requested == models["plugin"]
    assert any("CPU-only Python op" in w and "model.native.onnx" in w for w in plan.warnings)


def test_plugin_flavor_on_cuda_without_a_sibling_warns_about_copies(models, providers, no_plugin_lib):
    providers([CUDA_EP, CPU_EP])
    models["native"].unlink()
    plan = runtime.plan_session(models["plugin"], "cuda")
    assert plan.path == models["plugin"] and plan.custom_ops
    assert any("copies each stage's tokens to the CPU and back" in w for w in plan.warnings)


def test_plugin_flavor_on_cpu_stays_plugin(models, providers):
    providers(ALL_GPU)
    plan = runtime.plan_session(models["plugin"], "cpu")
    assert plan.path == models["plugin"] and plan.custom_ops and not plan.warnings


def test_ort_session_logs_what_it_got(models, providers, no_plugin_lib, caplog):
    """Faked CUDA on a CPU build: the swap to native is logged, and so is ONNX Runtime's fallback to the CPU."""
    providers([CUDA_EP, CPU_EP])
    with caplog.at_level(logging.INFO, logger="pipeline.runtime"), pytest.warns(UserWarning, match="CUDA"):
        session = runtime.ort_session(models["plugin"], "auto")
    text = caplog.text
    assert "opening model.native.onnx" in text and f"asked ONNX Runtime for {CUDA_EP} but it gave {CPU_EP}" in text
    assert f"{TRT_EP} skipped: not installed" in text
    logits, kept = session.run(None, {"images": np.ones((2, 1, 4, 4), np.float32)})
    assert kept.tolist() == [[4], [4]]  # the native tiny model keeps every token: it really is the sibling


def test_ort_session_registers_the_custom_op(models):
    session = runtime.ort_session(models["plugin"], "cpu")
    images = np.zeros((2, 1, 4, 4), np.float32)
    images[0, 0, 1] = 1.0  # sample 0: token 1 scores 1 > 0, the others 0; sample 1: none above, min_keep tops up
    logits, kept = session.run(None, {"images": images})
    assert kept.tolist() == [[2], [2]]


def test_plugin_file_without_the_op_registered_says_use_ort_session(models):
    with pytest.raises(TokenGateError, match=r"has not registered.*pipeline\.runtime\.ort_session"):
        runtime.open_session(models["plugin"])


def test_files_that_are_not_onnx(tmp_path):
    junk = tmp_path / "model.plugin.onnx"
    junk.write_bytes(b"\x00not a protobuf at all\xff" * 8)
    with pytest.raises(TokenGateError, match="is not an ONNX model"):
        runtime.ort_session(junk)
    with pytest.raises(TokenGateError, match="is not an ONNX model"):
        runtime.open_session(junk)
    with pytest.raises(TokenGateError, match="does not exist"):
        runtime.ort_session(tmp_path / "missing.onnx")


def test_foreign_onnx_file_still_opens_without_run_extras(tmp_path, fmnist_root):
    """ort_session runs any ONNX file; only the validator insists on TokenGate metadata."""
    path = write_tiny(tmp_path, "native", tiny_config(fmnist_root), name="foreign.onnx", tagged=False)
    plan = runtime.plan_session(path, "cpu")
    assert plan.flavor is None and not plan.custom_ops
    assert runtime.open_plan(plan).run(None, {"images": np.ones((1, 1, 4, 4), np.float32)})[0].shape == (1, 4)


def test_bench_sessions_spin_during_a_run_and_stop_after_it(models):
    """The bench's sessions spin like a deployed session's (ONNX Runtime's default) and stop when a run returns,
    so the next file of an interleaved round gets the cores; validate's sessions keep ONNX Runtime's defaults."""
    from pipeline.bench.options import BenchOptions
    from pipeline.bench.run import open_runner
    from pipeline.runners.ort_runner import OrtRunner

    bench = open_runner(models["native"], "ort-cpu", BenchOptions(threads=1))
    default = OrtRunner(models["native"], threads=1)

    def entry(runner: OrtRunner, key: str) -> str | None:
        try:
            return runner.session.get_session_options().get_session_config_entry(key)
        except RuntimeError:  # never set: ONNX Runtime's default
            return None

    entries = {name: {key: entry(runner, key) for key in ("session.intra_op.allow_spinning",
                                                          "session.force_spinning_stop")}
               for name, runner in (("bench", bench), ("default", default))}
    assert entries["bench"] == {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}
    assert entries["default"] == {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": None}
