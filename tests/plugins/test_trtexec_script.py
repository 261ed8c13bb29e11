"""plugins/trtexec.sh (`make trtexec`): the commands it prints without trtexec, and what it runs with one.

A stand-in trtexec (a shell script written by the test) records its arguments and prints trtexec's summary lines,
so the script's parsing and dense comparison are checked on the CPU.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx

SCRIPT = Path(__file__).resolve().parents[2] / "plugins" / "trtexec.sh"

FAKE_TRTEXEC = r"""#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/calls.txt"
if [[ "$*" == *--help* ]]; then echo "HELP_TEXT"; exit 0; fi
for arg in "$@"; do
    case $arg in
        --saveEngine=*) mkdir -p "$(dirname "${arg#*=}")"; touch "${arg#*=}" ;;
        --loadEngine=*) engine=${arg#*=} ;;
    esac
done
if [[ -n "${engine:-}" ]]; then
    qps=100; [[ $engine == *model.plugin.* ]] && qps=150
    echo "[11/23/2025-05:00:00] [I] Throughput: $qps qps"
    echo "[11/23/2025-05:00:00] [I] GPU Compute Time: min = 1.2 ms, max = 2.5 ms, mean = 1.5 ms, median = 1.4 ms"
fi
"""


def _run(run: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), str(run)], capture_output=True, text=True, env=full_env, timeout=120)


def test_prints_commands_when_trtexec_is_missing(run_dir: Path):
    result = _run(run_dir, TRTEXEC="trtexec-not-installed-here")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "trtexec is not installed" in out and "TensorRT" in out.splitlines()[-1]
    profile = "--minShapes=images:1x1x28x28 --optShapes=images:32x1x28x28 --maxShapes=images:128x1x28x28"
    assert f"--onnx={run_dir}/model.dense.onnx" in out and profile in out
    assert f"prepare_onnx.py {run_dir}/model.plugin.onnx {run_dir}/model.plugin.trt.onnx" in out
    assert f"--onnx={run_dir}/model.plugin.trt.onnx" in out and "--dynamicPlugins=" in out
    for batch in (1, 32, 128):
        assert f"--shapes=images:{batch}x1x28x28" in out
    assert not (run_dir / "trtexec").exists() and not (run_dir / "model.plugin.trt.onnx").exists()


def test_reads_the_input_shape_from_the_onnx(tmp_path: Path, write_dense_onnx):
    run = tmp_path / "rgb"
    run.mkdir()
    write_dense_onnx(run / "model.dense.onnx", channels=3, size=32)
    result = _run(run, TRTEXEC="trtexec-not-installed-here", BATCHES="4 2 8")
    assert result.returncode == 0, result.stderr
    assert "--minShapes=images:2x3x32x32 --optShapes=images:4x3x32x32 --maxShapes=images:8x3x32x32" in result.stdout


def _fake_trtexec(tmp_path: Path, help_text: str) -> Path:
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    fake.write_text(FAKE_TRTEXEC.replace("HELP_TEXT", help_text))
    fake.chmod(0o755)
    return fake


TRT10_HELP = "  --fp16   Enable fp16 precision, in addition to fp32 (default = disabled)"
TRT11_HELP = "  --noCudaGraph   Disable CUDA graph (default = enabled)"


def test_runs_builds_and_benchmarks_and_compares_with_dense(run_dir: Path, tmp_path: Path):
    fake = _fake_trtexec(tmp_path, TRT10_HELP)
    plugin_lib = tmp_path / "libtokengate_plugins.so"
    plugin_lib.write_bytes(b"")  # only its path is passed on
    result = _run(run_dir, TRTEXEC=str(fake), PLUGIN_LIB=str(plugin_lib), BATCHES="1 8")
    assert result.returncode == 0, result.stderr
    calls = (fake.parent / "calls.txt").read_text().splitlines()
    builds = [c for c in calls if "--saveEngine" in c]
    assert len(builds) == 2 and all("--fp16" in c for c in builds)
    assert all("--useCudaGraph --noDataTransfers --useSpinWait" in c for c in calls if "--loadEngine" in c)
    plugin_calls = [c for c in calls if "model.plugin" in c]
    assert plugin_calls and all(f"--dynamicPlugins={plugin_lib}" in c for c in plugin_calls)
    (node,) = [n for n in onnx.load(str(run_dir / "model.plugin.trt.onnx")).graph.node if n.op_type == "TokenSelect"]
    assert len(node.output) == 3  # the prepare step ran before the plugin build
    rows = {tuple(line.split()[:2]): line.split() for line in result.stdout.splitlines()
            if line.split()[:1] in (["dense"], ["plugin"])}
    assert rows[("dense", "8")][2:] == ["800.0", "1.5", "1.00x"]   # images/s = 100 qps x 8
    assert rows[("plugin", "8")][2:] == ["1200.0", "1.5", "1.50x"]
    assert rows[("plugin", "1")][2:] == ["150.0", "1.5", "1.50x"]


def test_tensorrt_11_gets_no_fp16_or_timing_flags(run_dir: Path, tmp_path: Path):
    """TensorRT 11 dropped --fp16 (strongly typed networks) and made graphs/no copies/spin wait the defaults."""
    fake = _fake_trtexec(tmp_path, TRT11_HELP)
    result = _run(run_dir, TRTEXEC=str(fake), PLUGIN_LIB=str(tmp_path / "missing.so"), BATCHES="2")
    assert result.returncode == 0, result.stderr
    calls = [c for c in (fake.parent / "calls.txt").read_text().splitlines() if "--help" not in c]
    assert calls and not any("--fp16" in c or "--useCudaGraph" in c for c in calls)
    assert all("model.dense.typed.engine" in c for c in calls)  # the plugin flavour is skipped: no library
    assert "missing.so not found" in result.stderr and "make plugins" in result.stderr


def test_fails_clearly_without_an_export(tmp_path: Path):
    result = _run(tmp_path, TRTEXEC="trtexec-not-installed-here")
    assert result.returncode == 2 and "tokengate export" in result.stderr
