"""`tokengate bench` end to end on a tiny untrained run (torch runtime, one round): the JSON schema and its
arithmetic, not timings. The ONNX Runtime path (exports, profiler) is the slow test at the end."""
from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from tests.conftest import make_run, tiny_config

MODELS = {"dense", "static", "tokens", "combined"}
ROW_TYPES = {"model": str, "batch": int, "gflops_per_image": float, "throughput_img_s": float,
             "latency_ms_p50": float, "latency_ms_p90": float}
REL = 1e-9  # the report's own arithmetic, recomputed


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, fmnist_root):
    cfg = tiny_config(fmnist_root, gates={"token_stages": [2, 3], "init_threshold": 1.0})
    return make_run(tmp_path_factory.mktemp("bench_run"), cfg)


def _bench(run, out, *extra):
    code = main(["bench", str(run), "--batch-sizes", "1,3", "--rounds", "2", "--warmup", "0",
                 "--images", "13", "--json", str(out), "--quiet", *extra])
    assert code == 0
    return json.loads(out.read_text())


def check_schema(report: dict, batches: list[int]) -> None:
    assert isinstance(report["runtime"], str) and isinstance(report["device"], str)
    assert {(r["model"], r["batch"]) for r in report["rows"]} == {(m, b) for m in MODELS for b in batches}
    for row in report["rows"]:
        for key, kind in ROW_TYPES.items():
            assert isinstance(row[key], kind), key
        assert row["top1"] is None or isinstance(row["top1"], float)
    expected_keys = {f"{m}@{b}" for m in MODELS for b in batches}
    assert set(report["speedup_vs_dense"]) == expected_keys == set(report["speedup_efficiency"])


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


def test_bench_torch_smoke(bench_run, tmp_path):
    report = _bench(bench_run, tmp_path / "bench.json", "--runtime", "torch")
    check_schema(report, [1, 3])
    check_arithmetic(report)
    gflops = {r["model"]: r["gflops_per_image"] for r in report["rows"]}
    assert gflops["tokens"] < gflops["dense"] and gflops["combined"] < gflops["dense"]  # the stages drop tokens
    assert report["batches_per_round"] == {"1": 13, "3": 4}  # the pool of 13 images; at 3, the 13th is not timed
    by_batch = {(r["model"], r["batch"]): r["gflops_per_image"] for r in report["rows"]}
    assert by_batch[("dense", 1)] == pytest.approx(by_batch[("dense", 3)], rel=REL)  # every image costs the same
    for low, mid, high in report["speedup_rounds"].values():
        assert low <= mid <= high
    assert all(r["top1"] is not None for r in report["rows"])  # a run has validation data
    models = report["models"]
    assert models["tokens"]["keep_ratios"] == pytest.approx(models["combined"]["keep_ratios"], abs=1 / 12 + 1e-9)
    assert (tmp_path / "bench.md").read_text().count("| combined |") == 2
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_bench_refuses_bad_input(bench_run, tmp_path, capsys):
    assert main(["bench", str(bench_run), "--batch-sizes", "1,x", "--json", str(tmp_path / "b.json")]) == 2
    assert main(["bench", str(tmp_path / "missing"), "--json", str(tmp_path / "b.json")]) == 2
    assert main(["bench", str(bench_run), "--runtime", "torch", "--flavor", "capped"]) == 2
    assert "Fix:" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_onnxruntime_profiles_token_select(bench_run, tmp_path):
    report = _bench(bench_run, tmp_path / "bench.json", "--runtime", "ort-cpu", "--cache", str(tmp_path / "cache"))
    check_schema(report, [1, 3])
    check_arithmetic(report)
    for key in ("tokens@1", "tokens@3", "combined@1", "combined@3"):
        profile = report["profile"][key]
        assert 0 < report["tokenselect_share"][key] == profile["select_share"] < 1
        assert profile["stages_found"] == 2 and profile["timed_batches"] == 8
        assert profile["select_ms"] > 0 and profile["run_ms"] > 0
        assert 0 < profile["profiler"]["select_share"] < 1  # ORT's profiler's own attribution, kept for reference
        assert profile["profiler"]["matched"] > 0.5


def test_context_runs_bench_padded_and_refuse_the_packed_layout(tmp_path, fmnist_root, capsys):
    """The packed layout discards dropped tokens; a run that keeps them as context times the padded graphs."""
    from pipeline.bench.run import context_flavor
    from pipeline.models import load_student

    cfg = tiny_config(fmnist_root, gates={"token_stages": [2, 3], "init_threshold": 1.0, "dropped_tokens": "context"})
    run = make_run(tmp_path / "run", cfg)
    models = {"combined": load_student(run)}
    assert context_flavor(models, "ort-cpu", "packed", explicit=False, show=False) == "native"
    assert context_flavor(models, "torch", "packed", explicit=False, show=False) == "padded"
    assert context_flavor(models, "ort-cpu", "capped", explicit=True, show=False) == "capped"
    report = _bench(run, tmp_path / "bench.json", "--runtime", "torch")
    check_schema(report, [1, 3])
    gflops = {r["model"]: r["gflops_per_image"] for r in report["rows"]}
    assert gflops["tokens"] < gflops["dense"]
    packed = ["bench", str(run), "--runtime", "torch", "--flavor", "packed", "--json", str(tmp_path / "b.json")]
    assert main(packed) == 2
    assert "keeps them as context" in capsys.readouterr().err


@pytest.mark.slow
def test_flavor_comparison_runs_end_to_end(bench_run, tmp_path, capsys):
    """`python -m pipeline.bench.flavors`: every flavor asked for, timed against dense on the same batches."""
    from pipeline.bench.flavors import main as flavors_main

    out = tmp_path / "flavors.json"
    assert flavors_main([str(bench_run), "--flavors", "packed,native", "--batch-sizes", "1,3", "--rounds", "1",
                         "--images", "6", "--json", str(out)]) == 0
    table = json.loads(out.read_text())["table"]
    models = ["dense"] + [f"{m}:{f}" for m in ("tokens", "combined") for f in ("packed", "native")]
    assert set(table) == {f"{m}@{b}" for m in models for b in (1, 3)}
    for key, row in table.items():
        assert row["latency_ms_mean"] > 0
        assert row["speedup_vs_dense"] == pytest.approx(table[f"dense@{key.split('@')[1]}"]["latency_ms_mean"]
                                                        / row["latency_ms_mean"], rel=REL)
        assert ("select_share" in row) == (not key.startswith("dense"))
    assert "mean ms" in capsys.readouterr().out
