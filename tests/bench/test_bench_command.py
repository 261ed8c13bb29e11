"""`tokengate bench` end to end on a tiny untrained run: it times the run's own exported files (their sha256 in
bench.json), exports the missing ones first, and reports the JSON schema and its arithmetic, not timings."""
from __future__ import annotations

import hashlib
import json

import pytest

from pipeline.cli import main
from tests.conftest import make_run, tiny_config

ROW_TYPES = {"model": str, "batch": int, "gflops_per_image": float, "throughput_img_s": float,
             "latency_ms_p50": float, "latency_ms_p90": float}
REL = 1e-9  # the report's own arithmetic, recomputed
ORT_ROWS = {"dense", "packed", "native", "plugin", "capped"}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, fmnist_root):
    cfg = tiny_config(fmnist_root, gates={"token_stages": [2, 3], "init_threshold": 1.0})
    return make_run(tmp_path_factory.mktemp("bench_run"), cfg)


def _bench(run, out, *extra):
    code = main(["bench", str(run), "--batch-sizes", "1,3", "--rounds", "2", "--warmup", "0",
                 "--images", "13", "--json", str(out), "--quiet", *extra])
    assert code == 0
    return json.loads(out.read_text())


def check_schema(report: dict, batches: list[int], models: set[str]) -> None:
    assert isinstance(report["runtime"], str) and isinstance(report["device"], str)
    assert {(r["model"], r["batch"]) for r in report["rows"]} == {(m, b) for m in models for b in batches}
    for row in report["rows"]:
        for key, kind in ROW_TYPES.items():
            assert isinstance(row[key], kind), key
        assert row["top1"] is None or isinstance(row["top1"], float)
    expected_keys = {f"{m}@{b}" for m in models for b in batches}
    assert set(report["speedup_vs_dense"]) == expected_keys == set(report["speedup_efficiency"])
    assert set(report["files"]) == models == set(report["parity"])
    for entry in report["parity"].values():  # the tiny run's scores are far from its thresholds: no ties
        assert entry["images_keeping_other_tokens"] == 0 and entry["max_abs_diff_vs_torch"] <= 1e-4


def check_arithmetic(report: dict) -> None:
    rows = {(r["model"], r["batch"]): r for r in report["rows"]}
    for (model, batch), row in rows.items():
        dense = rows[("dense", batch)]
        key = f"{model}@{batch}"
        assert row["throughput_img_s"] == pytest.approx(batch * 1000 / row["latency_ms_mean"], rel=REL)
        speedup = dense["latency_ms_mean"] / row["latency_ms_mean"]
        assert report["speedup_vs_dense"][key] == pytest.approx(speedup, rel=REL)
        flops_ratio = dense["gflops_per_image"] / row["gflops_per_image"]
        assert report["speedup_efficiency"][key] == pytest.approx(speedup / flops_ratio, rel=REL)
        assert row["latency_ms_p90"] >= row["latency_ms_p50"]


def check_hashes(report: dict) -> None:
    from pathlib import Path

    for name, entry in report["files"].items():
        assert hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest() == entry["sha256"], name


def test_bench_torch_smoke(bench_run, tmp_path):
    report = _bench(bench_run, tmp_path / "bench.json", "--runtime", "torch", "--sessions", "2", "--turns", "pool")
    check_schema(report, [1, 3], {"dense", "student"})
    assert report["sessions"] == 2 and "2 session(s) per file" in (tmp_path / "bench.md").read_text()
    assert report["turns"] == "pool" and "taking turns a whole pool each" in (tmp_path / "bench.md").read_text()
    check_arithmetic(report)
    check_hashes(report)
    gflops = {r["model"]: r["gflops_per_image"] for r in report["rows"]}
    assert gflops["student"] < gflops["dense"]  # the stages drop tokens
    assert report["batches_per_round"] == {"1": 13, "3": 4}  # the pool of 13 images; at 3, the 13th is not timed
    by_batch = {(r["model"], r["batch"]): r["gflops_per_image"] for r in report["rows"]}
    assert by_batch[("dense", 1)] == pytest.approx(by_batch[("dense", 3)], rel=REL)  # every image costs the same
    for low, mid, high in report["speedup_rounds"].values():
        assert low <= mid <= high
    assert all(r["top1"] is not None for r in report["rows"])  # a run has validation data
    assert (tmp_path / "bench.md").read_text().count("| student |") == 2
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_bench_refuses_bad_input(bench_run, tmp_path, capsys):
    assert main(["bench", str(bench_run), "--batch-sizes", "1,x", "--json", str(tmp_path / "b.json")]) == 2
    assert main(["bench", str(tmp_path / "missing"), "--json", str(tmp_path / "b.json")]) == 2
    assert main(["bench", str(bench_run), "--runtime", "torch", "--flavors", "capped"]) == 2
    assert main(["bench", str(bench_run), "--flavors", "fused"]) == 2
    assert main(["bench", str(bench_run), "--sessions", "0", "--json", str(tmp_path / "b.json")]) == 2
    assert main(["bench", str(bench_run), "--images", "0", "--json", str(tmp_path / "b.json")]) == 2
    assert main(["bench", str(bench_run), "--top1-limit", "-5", "--json", str(tmp_path / "b.json")]) == 2
    assert "Fix:" in capsys.readouterr().err and not (tmp_path / "b.json").exists()
    from pipeline.bench.options import BenchOptions
    from pipeline.bench.run import run_bench
    from pipeline.errors import TokenGateError

    with pytest.raises(TokenGateError, match="--turns 'round' is not one of batch, pool"):
        run_bench(bench_run, BenchOptions(turns="round"))


def test_the_engine_runner_chunks_top1_batches_beyond_its_profile(tmp_path, monkeypatch):
    """The bench builds an engine for its largest timed batch, then runs top-1 in batches of 256: the runner must
    split those into chunks the profile accepts rather than refuse them."""
    import pipeline.build.run_build as run_build
    import pipeline.runners.tensorrt as tensorrt
    from pipeline.bench.run import engine_runner

    calls = {}

    class Built:
        engine = tmp_path / "model.plugin.engine"

    def build_engine(path, precision, batch):
        calls["build"] = (path, precision, batch)
        return Built()

    def runner(engine, **kwargs):
        calls["runner"] = (engine, kwargs)
        return "runner"

    monkeypatch.setattr(run_build, "build_engine", build_engine)
    monkeypatch.setattr(tensorrt, "TensorRTRunner", runner)
    assert engine_runner(tmp_path / "model.plugin.onnx", 16) == "runner"
    assert calls["build"] == (tmp_path / "model.plugin.onnx", "fp16", "1,16,16")
    assert calls["runner"] == (Built.engine, {"auto_chunk": True})


@pytest.mark.slow
def test_bench_times_the_runs_own_files(bench_run, tmp_path):
    """ONNX Runtime: the missing files are exported into the run first (with `tokengate export`'s code), a file
    already there is timed as it is (the same sha256 before and after), and every row names its file."""
    from pipeline.export.run_export import export_run

    native = export_run(bench_run, ["native"])["native"]
    before = hashlib.sha256(native.read_bytes()).hexdigest()
    report = _bench(bench_run, tmp_path / "bench.json", "--runtime", "ort-cpu")
    check_schema(report, [1, 3], ORT_ROWS)
    check_arithmetic(report)
    check_hashes(report)
    assert report["files"]["native"] == {"path": str(native), "sha256": before}
    for name, entry in report["files"].items():
        assert entry["path"] == str(bench_run / f"model.{name}.onnx")
    assert set(report["deploy"]) >= {"ONNX Runtime CPU", "TensorRT"}
    assert "Deploy:" in (tmp_path / "bench.md").read_text()


@pytest.mark.slow
def test_bench_selection_share(bench_run, tmp_path):
    report = _bench(bench_run, tmp_path / "bench.json", "--runtime", "ort-cpu", "--flavors", "packed,plugin",
                    "--selection-share")
    for key in ("packed@1", "packed@3", "plugin@1", "plugin@3"):
        profile = report["profile"][key]
        assert 0 < report["tokenselect_share"][key] == profile["select_share"] < 1
        assert profile["stages_found"] == 2 and profile["timed_batches"] == 8
        assert profile["select_ms"] > 0 and profile["run_ms"] > 0
        assert 0 < profile["profiler"]["select_share"] < 1  # ORT's profiler's own attribution, kept for reference
        assert profile["profiler"]["matched"] > 0.5


def test_bench_of_a_config_writes_a_run_and_reuses_it(tmp_path, fmnist_root):
    """A config becomes a run directory (teacher, sliced student with fitted thresholds, config.json) under
    --run-root, which a second bench reuses as it is."""
    import yaml

    cfg = tiny_config(fmnist_root, gates={"token_stages": [2, 3]})
    data = cfg.to_dict()
    data["bench"] = {"keep_ratios": [0.7, 0.5], "heads_fraction": 0.5, "mlp_fraction": 0.5, "num_images": 8}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    args = ("--runtime", "torch", "--run-root", str(tmp_path / "runs"))
    report = _bench(config, tmp_path / "bench.json", *args)
    run = tmp_path / "runs" / cfg.name
    assert report["run_dir"] == str(run)
    assert {p.name for p in run.iterdir()} >= {"teacher.safetensors", "student.safetensors", "config.json"}
    written = (run / "student.safetensors").stat().st_mtime_ns
    second = _bench(config, tmp_path / "again.json", *args)
    assert (run / "student.safetensors").stat().st_mtime_ns == written
    assert second["files"] == report["files"]
    assert report["top1_source"].startswith("null")


def test_a_configs_run_benches_again_as_a_run(tmp_path, fmnist_root):
    """The run directory a config became is a run like any other: benching it directly times it on the same bench
    photos (its config says so: export.caps_images), with no top-1."""
    import yaml

    cfg = tiny_config(fmnist_root, gates={"token_stages": [2, 3]})
    data = cfg.to_dict()
    data["bench"] = {"keep_ratios": [0.7, 0.5], "num_images": 8}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    first = _bench(config, tmp_path / "a.json", "--runtime", "torch", "--run-root", str(tmp_path / "runs"))
    again = _bench(first["run_dir"], tmp_path / "b.json", "--runtime", "torch")
    assert again["images"] == first["images"] and again["images"].startswith("scikit-image sample photos")
    assert again["top1_source"].startswith("null")


def test_device_names_the_threads_and_the_engine_it_timed(monkeypatch):
    """bench.json's device: ONNX Runtime's thread count as set (0 is its own default, not os.cpu_count()), and for
    engines the runtime, version, precision, target and GPU."""
    from types import SimpleNamespace

    import pipeline.build.targets as targets
    from pipeline.bench.run import device_name

    session = SimpleNamespace(get_providers=lambda: ["CPUExecutionProvider"])
    ort = {"dense": SimpleNamespace(session=session)}
    assert device_name("ort-cpu", ort, 2).endswith("(2 threads)")
    assert device_name("ort-cpu", ort, 0).endswith("(ONNX Runtime's default threads: one per physical core)")
    info = SimpleNamespace(runtime="tensorrt", runtime_version="10.13.0", precision="fp16", target="sm90")
    monkeypatch.setattr(targets, "query_gpu", lambda fields: ["NVIDIA H100 80GB HBM3"])
    engines = {"dense": SimpleNamespace(info=info)}
    assert device_name("tensorrt", engines, 0) == "tensorrt 10.13.0 fp16 engine, sm90, on NVIDIA H100 80GB HBM3"
