"""A student without token stages (static pruning only) ships: `tokengate export` writes its native file and the
teacher, refuses the token-selecting flavors in one line, and `make engine`'s validate and build stages take the
native file."""
from __future__ import annotations

import argparse

import pytest

from pipeline.build import stage
from pipeline.build.runtimes import RTX
from pipeline.errors import TokenGateError
from pipeline.export.metadata import read_info
from pipeline.export.run_export import export_run
from tests.conftest import make_run, tiny_config

PARITY_TOL = 1e-4  # ONNX Runtime CPU vs PyTorch, fp32 (validate.tol_vs_torch)


@pytest.fixture(scope="module")
def stageless(tmp_path_factory, fmnist_root):
    cfg = tiny_config(fmnist_root, gates={"token_stages": []}, data={"val_limit": 48},
                      validate={"batch_sizes": [1, 5]})
    run = make_run(tmp_path_factory.mktemp("stageless"), cfg)
    return run, export_run(run)


def test_export_writes_the_native_student_and_the_teacher(stageless):
    run, written = stageless
    assert list(written) == ["native", "dense"]
    assert sorted(p.name for p in run.glob("model.*.onnx")) == ["model.dense.onnx", "model.native.onnx"]
    info = read_info(written["native"])
    assert info.model == "student" and info.stages == [] and info.selection == {"scores": [], "select": []}


@pytest.mark.parametrize("flavor", ["plugin", "capped", "packed"])
def test_token_selecting_flavors_are_refused_with_the_fix(stageless, flavor):
    run, _ = stageless
    with pytest.raises(TokenGateError, match=f"the {flavor} flavor selects tokens, but this model has no token "
                                             "stages.*--flavor native"):
        export_run(run, [flavor])
    assert not (run / f"model.{flavor}.onnx").exists()


def test_make_engines_validate_stage_validates_the_native_file(stageless):
    from pipeline.engine import stage_validate

    run, _ = stageless
    line = stage_validate(argparse.Namespace(run=str(run)))
    assert line.startswith("native: top-1 ") and "FAILED" not in line and "plugin" not in line
    report = __import__("json").loads((run / "validate.native.json").read_text())
    assert report["passed"] and list(report["results"]) == ["1", "5"]
    assert all(r["max_abs_diff_vs_torch"] <= PARITY_TOL for r in report["results"].values())


def test_make_engines_build_stage_builds_the_native_file(stageless, monkeypatch):
    import pipeline.build.run_build as run_build

    run, _ = stageless
    built = {}

    class Result:
        def summary(self) -> str:
            return "built"

    def build_engine(onnx_path, target, precision, runtime):
        built.update(onnx=onnx_path, target=target, runtime=runtime)
        return Result()

    monkeypatch.setattr(stage, "available", lambda name: name == RTX)
    monkeypatch.setattr(stage.targets, "detect_target", lambda: None)
    monkeypatch.setattr(run_build, "build_engine", build_engine)
    line = stage.stage_build(argparse.Namespace(run=str(run), target="sm86", precision="fp16"))
    assert built == {"onnx": run / "model.native.onnx", "target": "sm86", "runtime": RTX}
    assert "no token stages" in line
