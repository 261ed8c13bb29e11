"""plugins/trtexec.sh (`make trtexec`): the commands it prints without trtexec, and what it runs with one.

A stand-in trtexec (a shell script written by the test) records its arguments and prints trtexec's summary lines
(or, on request, a log without them), so the script's parsing, precision and CUDA-graph labels, and its like-for-like
dense comparison are checked on the CPU.
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
graphs=GRAPHS_DEFAULT
for arg in "$@"; do
    case $arg in
        --saveEngine=*) mkdir -p "$(dirname "${arg#*=}")"; touch "${arg#*=}" ;;
        --loadEngine=*) engine=${arg#*=} ;;
        --useCudaGraph) graphs=1 ;;
        --noCudaGraph) graphs=0 ;;
    esac
done
if [[ -n "${engine:-}" ]]; then
    if [[ -n "${FAKE_TRUNCATED:-}" && $engine == *model.$FAKE_TRUNCATED.* ]]; then
        echo "[I] Starting inference"; exit 0  # killed before its summary, exit status 0 all the same
    fi
    qps=100; [[ $engine == *model.plugin.* ]] && qps=150
    if [[ $graphs == 1 && -n "${FAKE_CAPTURE_FAILS:-}" ]]; then
        echo "[W] CUDA graph capture failed. The inference will be launched without using CUDA graph."
    elif [[ $graphs == 1 ]]; then
        qps=$((qps + 25))
    fi
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
    assert f"prepare_onnx.py {run_dir}/model.plugin.onnx {run_dir}/model.plugin.trt.fp16.onnx" in out
    assert f"--onnx={run_dir}/model.plugin.trt.fp16.onnx" in out and "--dynamicPlugins=" in out
    for batch in (1, 32, 128):
        assert f"--shapes=images:{batch}x1x28x28" in out
    assert not (run_dir / "trtexec").exists() and not (run_dir / "model.plugin.trt.fp16.onnx").exists()


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
    graphs_default = "1" if "--noCudaGraph" in help_text else "0"  # TensorRT 11 times graphs by default
    fake.write_text(FAKE_TRTEXEC.replace("HELP_TEXT", help_text).replace("GRAPHS_DEFAULT", graphs_default))
    fake.chmod(0o755)
    return fake


def _rows(stdout: str) -> dict[tuple[str, str, str], list[str]]:
    """(flavour, batch, graphs) -> [precision, images/s, GPU ms, vs dense] from the script's table."""
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) == 7 and cells[0] in ("dense", "plugin", "capped", "native"):
            rows[(cells[0], cells[1], cells[3])] = [cells[2], *cells[4:]]
    return rows


TRT10_HELP = "  --fp16   Enable fp16 precision, in addition to fp32 (default = disabled)"
TRT11_HELP = "  --noCudaGraph   Disable CUDA graph (default = enabled)"


def test_runs_builds_and_benchmarks_and_compares_like_with_like(run_dir: Path, tmp_path: Path):
    fake = _fake_trtexec(tmp_path, TRT10_HELP)
    plugin_lib = tmp_path / "libtokengate_plugins.so"
    plugin_lib.write_bytes(b"")  # only its path is passed on
    result = _run(run_dir, TRTEXEC=str(fake), PLUGIN_LIB=str(plugin_lib), BATCHES="1 8")
    assert result.returncode == 0, result.stderr
    calls = (fake.parent / "calls.txt").read_text().splitlines()
    builds = [c for c in calls if "--saveEngine" in c]
    assert len(builds) == 2 and all("--fp16" in c and ".fp16.engine" in c for c in builds)
    runs = [c for c in calls if "--loadEngine" in c]
    assert all("--noDataTransfers --useSpinWait" in c for c in runs)
    # The plugin engine is data-dependent: never asked for a CUDA graph. Dense is timed both ways.
    assert not any("--useCudaGraph" in c for c in runs if "model.plugin" in c)
    assert sum("--useCudaGraph" in c for c in runs if "model.dense" in c) == 2
    plugin_calls = [c for c in calls if "model.plugin" in c]
    assert plugin_calls and all(f"--dynamicPlugins={plugin_lib}" in c for c in plugin_calls)
    prepared = run_dir / "model.plugin.trt.fp16.onnx"
    (node,) = [n for n in onnx.load(str(prepared)).graph.node if n.op_type == "TokenSelect"]
    assert len(node.output) == 3  # the prepare step ran before the plugin build
    rows = _rows(result.stdout)
    assert rows[("dense", "8", "off")] == ["fp16", "800.0", "1.5", "1.00x"]   # images/s = 100 qps x 8
    assert rows[("dense", "8", "on")] == ["fp16", "1000.0", "1.5", "1.00x"]   # graphs: 125 qps
    assert rows[("plugin", "8", "off")] == ["fp16", "1200.0", "1.5", "1.50x"]  # vs dense without graphs, not 1.20x
    assert rows[("plugin", "1", "off")] == ["fp16", "150.0", "1.5", "1.50x"]
    assert ("plugin", "8", "on") not in rows
    assert "cannot be one" in result.stdout  # the table says why plugin has no graph rows


def test_tensorrt_11_converts_to_fp16_and_turns_graphs_off_explicitly(run_dir: Path, tmp_path: Path):
    """TensorRT 11 dropped --fp16 (strongly typed networks) and made graphs/no copies/spin wait the defaults."""
    fake = _fake_trtexec(tmp_path, TRT11_HELP)
    result = _run(run_dir, TRTEXEC=str(fake), PLUGIN_LIB=str(tmp_path / "missing.so"), BATCHES="2")
    assert result.returncode == 0, result.stderr
    calls = [c for c in (fake.parent / "calls.txt").read_text().splitlines() if "--help" not in c]
    assert calls and not any("--fp16" in c or "--useCudaGraph" in c for c in calls)
    assert all("model.dense.fp16.engine" in c for c in calls)  # the plugin flavour is skipped: no library
    (build,) = [c for c in calls if "--saveEngine" in c]
    converted = run_dir / "model.dense.trt.fp16.onnx"
    assert f"--onnx={converted}" in build
    weight = next(t for t in onnx.load(str(converted)).graph.initializer if t.name == "head.weight")
    assert weight.data_type == onnx.TensorProto.FLOAT16  # the engine really is fp16, as its rows say
    rows = _rows(result.stdout)
    assert rows[("dense", "2", "off")][0] == "fp16" and rows[("dense", "2", "on")][1] == "250.0"
    assert sum("--noCudaGraph" in c for c in calls) == 1
    assert "converted to fp16" in result.stdout
    assert "missing.so not found" in result.stderr and "make plugins" in result.stderr


def test_fp32_is_built_and_labelled_as_such(run_dir: Path, tmp_path: Path):
    fake = _fake_trtexec(tmp_path, TRT11_HELP)
    result = _run(run_dir, TRTEXEC=str(fake), PLUGIN_LIB=str(tmp_path / "missing.so"), BATCHES="2", PRECISION="fp32")
    assert result.returncode == 0, result.stderr
    assert not (run_dir / "model.dense.trt.fp32.onnx").exists()  # no conversion: the ONNX is fp32
    assert {row[0] for row in _rows(result.stdout).values()} == {"fp32"}


def test_a_log_without_the_summary_fails_loudly_and_names_it(run_dir: Path, tmp_path: Path):
    fake = _fake_trtexec(tmp_path, TRT10_HELP)
    plugin_lib = tmp_path / "libtokengate_plugins.so"
    plugin_lib.write_bytes(b"")
    result = _run(run_dir, TRTEXEC=str(fake), PLUGIN_LIB=str(plugin_lib), BATCHES="4", FAKE_TRUNCATED="plugin")
    assert result.returncode == 1
    log = run_dir / "trtexec" / "plugin.b4.graphs-off.log"
    assert f"cannot read {log}" in result.stderr and '"Throughput:"' in result.stderr
    assert "1 step(s) gave no result" in result.stderr
    rows = _rows(result.stdout)  # the table of what could be read still comes first
    assert ("dense", "4", "off") in rows and ("plugin", "4", "off") not in rows


def test_a_failed_capture_is_labelled_as_no_graph(run_dir: Path, tmp_path: Path):
    fake = _fake_trtexec(tmp_path, TRT10_HELP)
    result = _run(run_dir, TRTEXEC=str(fake), PLUGIN_LIB=str(tmp_path / "missing.so"), BATCHES="4",
                  FAKE_CAPTURE_FAILS="1")
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert ("dense", "4", "on") not in rows  # the run that asked for a graph says it had none
    assert rows[("dense", "4", "failed")] == ["fp16", "400.0", "1.5", "1.00x"]  # vs dense without a graph


def test_fails_clearly_without_an_export(tmp_path: Path):
    result = _run(tmp_path, TRTEXEC="trtexec-not-installed-here")
    assert result.returncode == 2 and "tokengate export" in result.stderr
