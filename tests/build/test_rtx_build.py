"""A real TensorRT-RTX build on the CPU: the default model geometry (untrained), exported capped and native, built for
sm86, as CI does. Skips only when `import tensorrt_rtx` fails, and then says why."""
from __future__ import annotations

import hashlib
import json

import pytest

from pipeline.build import engine_info
from pipeline.cli import main
from pipeline.errors import TokenGateError
from tests.build.helpers import DEFAULT_GEOMETRY
from tests.conftest import make_run, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.tensorrt]



@pytest.fixture(scope="module")
def rtx():
    try:
        import tensorrt_rtx
    except Exception as exc:  # noqa: BLE001 - any install problem is a reason to skip, stated
        pytest.skip(f"import tensorrt_rtx failed ({type(exc).__name__}: {exc}); pip install tensorrt-rtx-cu13")
    return tensorrt_rtx


@pytest.fixture(scope="module")
def exported(rtx, tmp_path_factory, fmnist_root):
    from pipeline.export.run_export import export_run

    cfg = tiny_config(fmnist_root, model=DEFAULT_GEOMETRY, gates={"token_stages": None, "init_threshold": 1.0})
    run = make_run(tmp_path_factory.mktemp("rtx_run"), cfg)
    return run, export_run(run, ["capped", "native"])


@pytest.fixture(scope="module")
def capped_engine(exported):
    run, paths = exported
    assert main(["build", str(paths["capped"]), "--target", "sm86", "--precision", "fp16", "--batch", "1,8,64",
                 "--runtime", "tensorrt-rtx"]) == 0
    return run / "model.capped.sm86.fp16.engine"


def test_capped_flavor_builds_for_sm86_with_its_engine_json(rtx, exported, capped_engine):
    run, paths = exported
    assert capped_engine.is_file() and capped_engine.stat().st_size > 100_000
    data = json.loads(engine_info.info_path(capped_engine).read_text())
    payload = capped_engine.read_bytes()
    assert data["engine_sha256"] == hashlib.sha256(payload).hexdigest() and data["engine_bytes"] == len(payload)
    assert (data["runtime"], data["runtime_version"], data["target"], data["precision"], data["flavor"]) == \
        ("tensorrt-rtx", rtx.__version__, "sm86", "fp16", "capped")
    assert data["profile"] == {"min": 1, "opt": 8, "max": 64} and data["input_shape"] == [1, 28, 28]
    assert data["onnx"] == {"path": str(paths["capped"]),
                            "sha256": hashlib.sha256(paths["capped"].read_bytes()).hexdigest()}
    assert data["plugin_lib"] is None and data["build_seconds"] > 0
    assert engine_info.read_info(capped_engine).engine == capped_engine.name


def test_native_flavor_builds_once_its_topk_is_bounded(rtx, exported):
    run, paths = exported
    engine = run / "native.engine"
    assert main(["build", str(paths["native"]), "--target", "sm86", "--precision", "fp32", "--batch", "1,8,64",
                 "--runtime", "tensorrt-rtx", "--out", str(engine)]) == 0
    assert engine_info.read_info(engine).flavor == "native" and engine.stat().st_size > 100_000


def test_the_runner_checks_the_real_engine_before_it_needs_a_gpu(rtx, capped_engine, monkeypatch):
    from pipeline.runners import tensorrt as runner

    monkeypatch.setattr(runner.targets, "detect_target", lambda: "sm90")
    with pytest.raises(TokenGateError, match="was built for sm86 .*this GPU is sm90"):
        runner.TensorRTRunner(capped_engine)
    monkeypatch.setattr(runner.targets, "detect_target", lambda: None)
    with pytest.raises(TokenGateError, match="needs an NVIDIA GPU"):
        runner.TensorRTRunner(capped_engine)


def test_context_tokens_build_in_both_flavors(rtx, tmp_path, fmnist_root):
    """gates.dropped_tokens=context adds a second compaction per stage (the context rows) and attention over them;
    TensorRT-RTX builds it capped (static context size) and native (its TopK bounded like the kept tokens')."""
    from pipeline.export.run_export import export_run

    cfg = tiny_config(fmnist_root, model=DEFAULT_GEOMETRY,
                      gates={"token_stages": None, "init_threshold": 1.0, "dropped_tokens": "context"})
    run = make_run(tmp_path / "run", cfg)
    paths = export_run(run, ["capped", "native"])
    for flavor, precision in (("capped", "fp16"), ("native", "fp32")):
        engine = run / f"{flavor}.engine"
        assert main(["build", str(paths[flavor]), "--target", "sm86", "--precision", precision, "--batch", "1,8,64",
                     "--runtime", "tensorrt-rtx", "--out", str(engine)]) == 0
        assert engine_info.read_info(engine).flavor == flavor and engine.stat().st_size > 100_000
