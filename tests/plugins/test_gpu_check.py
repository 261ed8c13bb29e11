"""pipeline/gpu_check.py (`make gpu-check`) where there is no GPU: it says so, exits 0, and writes a JSON of the
promised schema; and the parts of its reporting that need no GPU (exit status, table, pytest counts)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import gpu_check

ROOT = Path(__file__).resolve().parents[2]


def _check_schema(report: dict) -> None:
    assert report["schema"] == gpu_check.SCHEMA_VERSION
    assert set(report) == {"schema", "gpu", "versions", "parts"}
    assert {"python", "torch", "onnxruntime", "tensorrt", "tensorrt_rtx"} <= set(report["versions"])
    assert list(report["parts"]) == list(gpu_check.PARTS)
    for part in report["parts"].values():
        assert set(part) == {"status", "summary", "details", "seconds"}
        assert part["status"] in gpu_check.STATUSES and part["summary"]
        assert isinstance(part["details"], dict) and part["seconds"] >= 0


def test_without_a_gpu_every_part_is_skipped_and_it_exits_0(tmp_path: Path, monkeypatch, capsys):
    real_which = shutil.which
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None if name == "nvidia-smi" else real_which(name))
    out_json, out_md = tmp_path / "gpu-check.json", tmp_path / "gpu-check.md"
    assert gpu_check.main(["--json", str(out_json), "--table", str(out_md)]) == 0
    assert "no NVIDIA GPU found" in capsys.readouterr().out
    report = json.loads(out_json.read_text())
    _check_schema(report)
    assert report["gpu"] is None
    assert {p["status"] for p in report["parts"].values()} == {"skipped"}
    assert all("no NVIDIA GPU" in p["summary"] for p in report["parts"].values())
    table = out_md.read_text()
    assert "GPU: no NVIDIA GPU" in table and all(f"| {name} | skipped |" in table for name in gpu_check.PARTS)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None,
                    reason="nvidia-smi is here: make gpu-check would run the real check, not its no-GPU path")
def test_make_gpu_check_on_a_machine_without_a_gpu(tmp_path: Path):
    result = subprocess.run(["make", "-s", "-C", str(ROOT), "gpu-check", f"GPU_CHECK_OUT={tmp_path}/"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no NVIDIA GPU found" in result.stdout
    _check_schema(json.loads((tmp_path / "gpu-check.json").read_text()))


def _gpu_report(**statuses: str) -> dict:
    parts = {name: {"status": statuses.get(name, "passed"), "summary": f"{name} | line", "details": {},
                    "seconds": 1.0} for name in gpu_check.PARTS}
    versions = {"python": "3.11.7", "torch": "2.14.1", "onnxruntime": "1.23.2", "tensorrt": "10.13.3",
                "tensorrt_rtx": None}
    return {"schema": gpu_check.SCHEMA_VERSION, "versions": versions, "parts": parts,
            "gpu": {"name": "NVIDIA H200", "driver": "580.65.06", "compute_capability": "9.0", "memory": "141 GiB"}}


@pytest.mark.parametrize("status, code", [("passed", 0), ("measured", 0), ("skipped", 0), ("failed", 1),
                                          ("error", 1)])
def test_exit_status_follows_the_parts(tmp_path: Path, monkeypatch, status: str, code: int):
    monkeypatch.setattr(gpu_check, "run_all", lambda run, config: _gpu_report(tensorrt=status))
    out_json, out_md = tmp_path / "g.json", tmp_path / "g.md"
    assert gpu_check.main(["--json", str(out_json), "--table", str(out_md)]) == code
    _check_schema(json.loads(out_json.read_text()))
    table = out_md.read_text()
    assert "NVIDIA H200, driver 580.65.06, sm 9.0" in table
    assert f"| tensorrt | {status} | tensorrt / line | 1 |" in table  # a | in a summary cannot split the row


def test_pytest_counts_reads_junit_xml(tmp_path: Path):
    junit = tmp_path / "r.xml"
    junit.write_text('<testsuites><testsuite name="pytest" tests="10" failures="1" errors="1" skipped="3">'
                     "</testsuite></testsuites>")
    assert gpu_check.pytest_counts(junit) == {"passed": 5, "failed": 2, "skipped": 3}


def test_missing_sanitizer_and_unpassed_kernels_are_skips_with_reasons(monkeypatch):
    assert gpu_check.part_sanitizer(lambda: 100.0, gpu_check.Part("failed", "x")).status == "skipped"
    monkeypatch.setattr(gpu_check, "find_sanitizer", lambda: None)
    part = gpu_check.part_sanitizer(lambda: 100.0, gpu_check.Part("passed", "x"))
    assert part.status == "skipped" and "compute-sanitizer not found" in part.summary


def test_ort_part_skips_without_the_cuda_provider_or_the_run(tmp_path: Path):
    part = gpu_check.part_ort_cuda(tmp_path / "runs" / "none", lambda: 100.0)
    assert part.status == "skipped"
    assert "CUDAExecutionProvider" in part.summary or "no trained student" in part.summary


def test_the_module_runs_as_a_script_without_a_gpu_import_error():
    """Importing the driver pulls in neither torch nor onnxruntime nor TensorRT: the no-GPU path stays light."""
    code = "import sys, pipeline.gpu_check; print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
