"""tokengate validate: the report's JSON, its tolerances, batch compositions, group gates and bad artifacts."""
import json

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.errors import TokenGateError
from pipeline.validate import compare
from pipeline.validate.batches import compositions
from pipeline.validate.compare import parse_batch_sizes, validate
from pipeline.validate.subject import describe
from pipeline.validate.table import summary_line
from tests.conftest import make_run, tiny_config
from tests.onnx_models import exported_run, write_tiny

PARITY_TOL = 1e-4  # ONNX Runtime CPU vs PyTorch, fp32 (the config default)
BATCH_TOL = 1e-5  # vs batch 1, fp32 (the config default)
RESULT_KEYS = {"top1", "max_abs_logit_diff_vs_b1", "flips_vs_b1", "max_abs_diff_vs_torch", "mean_kept_tokens"}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The run-directory artifacts run on torch: one thread is faster for these tiny models on busy cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def run(tmp_path_factory, fmnist_root):
    return exported_run(tmp_path_factory, fmnist_root)[1]


def test_report_json_on_a_small_model(run):
    report = validate(run / "model.plugin.onnx", [3, 8], limit=16, show_progress=False)
    assert {"artifact", "runtime", "results"} <= set(report)
    assert report["artifact"] == report["requested"] == str(run / "model.plugin.onnx") and report["runtime"] == "ort-cpu"
    assert list(report["results"]) == ["1", "3", "8"]  # batch 1 is always run: the others are compared with it
    for size, r in report["results"].items():
        assert set(r) == RESULT_KEYS
        assert isinstance(r["top1"], float) and 0.0 <= r["top1"] <= 100.0
        assert isinstance(r["flips_vs_b1"], int) and r["flips_vs_b1"] == 0
        assert r["max_abs_logit_diff_vs_b1"] <= BATCH_TOL
        assert r["max_abs_diff_vs_torch"] <= PARITY_TOL
        assert len(r["mean_kept_tokens"]) == 2 and all(1.0 <= k <= 17.0 for k in r["mean_kept_tokens"])
    assert report["results"]["1"]["max_abs_logit_diff_vs_b1"] == 0.0
    assert report["passed"] and report["failures"] == [] and report["images"] == 16
    assert report["tolerances"] == {"vs_torch": 1e-4, "vs_b1": 1e-5, "max_flips": 0}
    json.dumps(report, allow_nan=False)  # strict JSON
    assert summary_line(report).startswith("plugin: top-1 ") and "0 flips (batches 1,3,8)" in summary_line(report)


def test_a_sibling_opened_in_place_of_the_plugin_file_is_what_the_report_names(run, monkeypatch, capsys):
    """On a GPU provider ONNX Runtime opens model.native.onnx for model.plugin.onnx (runtime._avoid_cpu_custom_op):
    the report, its flavor and its PyTorch reference must be those of the file that ran."""
    import pipeline.runtime as runtime
    from pipeline.validate.table import print_report

    plan_session = runtime.plan_session

    def native_instead(path, *args, **kwargs):
        plan = plan_session(path, *args, **kwargs)
        sibling = plan.path.with_name("model.native.onnx")
        return runtime.replace(plan_session(sibling, *args, **kwargs), requested=plan.path)

    monkeypatch.setattr(runtime, "plan_session", native_instead)
    report = validate(run / "model.plugin.onnx", [3], limit=8, show_progress=False)
    assert report["artifact"] == str(run / "model.native.onnx") and report["flavor"] == "native"
    assert report["requested"] == str(run / "model.plugin.onnx") and report["passed"]
    print_report(report)
    assert "model.plugin.onnx was asked for; ort-cpu opened and validated" in capsys.readouterr().out


def test_cli_writes_json_and_prints_the_table(run, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["validate", str(run / "model.native.onnx"), "--batch-sizes", "2,5", "--limit", "12",
                 "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["runtime"] == "ort-cpu" and list(report["results"]) == ["1", "2", "5"]
    printed = capsys.readouterr().out
    assert "max|Δ| vs torch" in printed and "PASS" in printed
    assert main(["validate", str(run / "model.native.onnx"), "--runtime", "ort-gpu"]) == 2
    assert "unknown runtime 'ort-gpu'" in capsys.readouterr().err


class _Perturbed:
    """A runtime that is not batch invariant: logits shift by 1e-3 whenever the batch holds more than one sample."""

    def __init__(self, inner):
        self.inner, self.runtime, self.artifact = inner, inner.runtime, inner.artifact

    def infer(self, images):
        out = self.inner.infer(images)
        return type(out)(out.logits + (1e-3 if len(images) > 1 else 0.0), out.kept_tokens)


def test_broken_tolerance_exits_non_zero_and_says_which(run, monkeypatch, capsys):
    from pipeline.runners import factory

    real = factory.make_runner
    monkeypatch.setattr(factory, "make_runner", lambda *a, **k: _Perturbed(real(*a, **k)))
    code = main(["validate", str(run / "model.plugin.onnx"), "--batch-sizes", "4", "--limit", "8"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "batch 4: max |logit - logit at batch 1|" in printed and "validate.tol_vs_b1" in printed
    assert "batch 4: max |logit - torch|" in printed and "validate.tol_vs_torch" in printed
    looser = ["--set", "validate.tol_vs_b1=1e-2", "--set", "validate.tol_vs_torch=1e-2"]  # 1e-3 shifts now pass
    assert main(["validate", str(run / "model.plugin.onnx"), "--batch-sizes", "4", "--limit", "8", *looser]) == 0
    assert main(["validate", str(run / "model.plugin.onnx"), "--set", "model.depth=2"]) == 2


def test_group_gates_report_spread_instead_of_failing(tmp_path, fmnist_root):
    """GroupGates decide once per batch: batch 1 and batch 8 differ by design, and validate does not fail on it."""
    from pipeline.models import build_student, build_teacher, save_student

    cfg = tiny_config(fmnist_root, gates={"dynamic": "group", "static": False})
    out = make_run(tmp_path / "group", cfg)
    student = build_student(cfg, weights_from=build_teacher(cfg), static_gates=False)
    with torch.no_grad():  # routers that really depend on the batch's mean class token
        for router in student.group_gates.routers:
            router.weight.normal_(0.0, 3.0)
            router.bias.zero_()
    save_student(student, out / "student.safetensors", cfg)
    report = validate(out, [8], limit=16, show_progress=False)
    assert report["runtime"] == "torch" and report["reference"] == "self"
    assert not report["batch_invariant"] and report["passed"]
    assert report["results"]["8"]["max_abs_logit_diff_vs_b1"] > BATCH_TOL  # it would have failed the b1 tolerance
    top1 = [r["top1"] for r in report["results"].values()]
    assert report["top1_spread"] == pytest.approx(max(top1) - min(top1), abs=1e-12)


def test_nonfinite_inputs_are_excluded_and_reported(tmp_path, fmnist_root, monkeypatch):
    run = make_run(tmp_path / "run", tiny_config(fmnist_root))
    real = compare._ValidationData._inputs

    def poisoned(self, split_indices):
        images = real(self, split_indices)
        images[np.isin(split_indices, [3, 7])] = np.nan
        return images

    monkeypatch.setattr(compare._ValidationData, "_inputs", poisoned)
    report = validate(run, [4], limit=16, show_progress=False)
    assert [s["index"] for s in report["excluded_samples"]] == [3, 7] and report["images"] == 14
    assert report["passed"]


def test_all_nonfinite_inputs_are_an_error(tmp_path, fmnist_root):
    run = make_run(tmp_path / "run", tiny_config(fmnist_root, data={"mean": [0.5], "std": [0.0]}))
    with pytest.raises(TokenGateError, match="all 8 validation images are NaN/Inf"):
        validate(run, [2], limit=8, show_progress=False)


def test_foreign_onnx_is_refused(tmp_path, fmnist_root):
    path = write_tiny(tmp_path, "native", tiny_config(fmnist_root), name="foreign.onnx", tagged=False)
    with pytest.raises(TokenGateError, match="no TokenGate metadata"):
        validate(path, [2], show_progress=False)
    assert main(["validate", str(path)]) == 2


def test_a_run_directory_where_an_onnx_file_belongs_names_the_file_to_pass(run, capsys):
    """validate takes a run directory (its PyTorch student); quantize takes one exported file."""
    assert main(["quantize", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run} is a directory" in err[0] and "model.native.onnx" in err[0], err


def test_dense_flavor_is_compared_with_the_teacher(tmp_path, fmnist_root):
    cfg = tiny_config(fmnist_root)
    run = make_run(tmp_path / "run", cfg)
    subject = describe(write_tiny(run, "dense", cfg))
    assert subject.reference_model == "teacher" and subject.run_dir == run and subject.batch_invariant
    capped = describe(write_tiny(run, "capped", cfg))
    assert capped.reference_model == "student" and capped.caps == [3]


def test_compositions_are_shuffled_partitions():
    batches = compositions(50, 7, seed=0)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(50)) and [len(b) for b in batches] == [7] * 7 + [1]
    assert not np.array_equal(flat, np.arange(50))  # not contiguous slices
    assert not np.array_equal(flat, np.concatenate(compositions(50, 8, seed=0)))  # each size its own shuffle
    assert np.array_equal(flat, np.concatenate(compositions(50, 7, seed=0)))  # reproducible


@pytest.mark.parametrize("text", ["", "1,x", "0,2", "-1"])
def test_bad_batch_sizes(text):
    with pytest.raises(TokenGateError, match="--batch-sizes"):
        parse_batch_sizes(text)
