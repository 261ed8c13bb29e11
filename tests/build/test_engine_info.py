"""engine.json: its schema, where it lives, and the checks the runner makes from it before deserializing."""
from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline.build import engine_info
from pipeline.build.engine_info import EngineInfo
from pipeline.errors import TokenGateError
from tests.build.helpers import make_engine

SCHEMA = {  # field -> type: the contract validate/bench and the runner read
    "format": int, "engine": str, "engine_sha256": str, "engine_bytes": int, "runtime": str, "runtime_version": str,
    "target": str, "precision": str, "flavor": str, "input_name": str, "input_shape": list, "profile": dict,
    "plugin_lib": (dict, type(None)), "onnx": dict, "build_seconds": float, "built_at": str, "built_on": str,
}


def test_lives_beside_its_engine_so_engines_can_share_a_run(tmp_path):
    assert engine_info.info_path(tmp_path / "model.capped.sm86.fp16.engine") == \
        tmp_path / "model.capped.sm86.fp16.engine.json"


def test_written_schema_and_round_trip(tmp_path):
    engine, info = make_engine(tmp_path)
    data = json.loads(engine_info.info_path(engine).read_text())
    assert set(data) == set(SCHEMA) == {"format"} | {f.name for f in dataclasses.fields(EngineInfo)}
    for key, kind in SCHEMA.items():
        assert isinstance(data[key], kind), key
    assert data["format"] == engine_info.FORMAT_VERSION
    assert engine_info.read_info(engine) == info


def test_missing_invalid_or_incomplete_json(tmp_path):
    engine = tmp_path / "x.engine"
    with pytest.raises(TokenGateError, match="x.engine.json is missing.*tokengate build"):
        engine_info.read_info(engine)
    path = engine_info.info_path(engine)
    path.write_text("{not json")
    with pytest.raises(TokenGateError, match="is not valid JSON"):
        engine_info.read_info(engine)
    path.write_text(json.dumps({"format": 99}))
    with pytest.raises(TokenGateError, match="is not engine.json format 1"):
        engine_info.read_info(engine)
    path.write_text(json.dumps({"format": 1, "engine": "x.engine"}))
    with pytest.raises(TokenGateError, match="lacks .*runtime_version"):
        engine_info.read_info(engine)


def test_an_intact_engine_is_read(tmp_path):
    engine, info = make_engine(tmp_path)
    assert engine_info.check_file(engine, info) == engine.read_bytes()


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_a_damaged_engine_is_refused(tmp_path, damage):
    engine, info = make_engine(tmp_path)
    data = bytearray(engine.read_bytes())
    if damage == "missing":
        engine.unlink()
        with pytest.raises(TokenGateError, match="does not exist"):
            engine_info.check_file(engine, info)
        return
    engine.write_bytes(bytes(data[:100]) if damage == "truncate" else bytes(data[:-1]) + b"\x00")
    with pytest.raises(TokenGateError, match="is corrupt or was changed after it was built.*tokengate build"):
        engine_info.check_file(engine, info)


def test_another_runtime_or_version_is_refused(tmp_path):
    engine, info = make_engine(tmp_path)
    engine_info.check_runtime(info, "tensorrt-rtx", "1.7.1.116", engine)
    with pytest.raises(TokenGateError, match="built by tensorrt-rtx 1.7.1.116, and this is 1.8.0.1.*load only into"):
        engine_info.check_runtime(info, "tensorrt-rtx", "1.8.0.1", engine)
    with pytest.raises(TokenGateError, match="built by tensorrt-rtx, not tensorrt"):
        engine_info.check_runtime(info, "tensorrt", "10.13.0", engine)


def test_another_gpu_or_none_is_refused(tmp_path):
    engine, info = make_engine(tmp_path)
    engine_info.check_target(info, "sm86", engine)
    with pytest.raises(TokenGateError, match="built for sm86 .*this GPU is sm90 \\(Hopper.*--target sm90"):
        engine_info.check_target(info, "sm90", engine)
    with pytest.raises(TokenGateError, match="needs an NVIDIA GPU \\(sm86.*none is visible"):
        engine_info.check_target(info, None, engine)
