"""The README's `polygraphy run` comparison, its CPU half: ONNX Runtime's reference saved by Polygraphy's CLI, and
the comparison flags that the TensorRT half adds to `--trt --plugins`.

`polygraphy run` cannot register ONNX Runtime custom ops, so the reference side runs the native flavor; the plugin
flavor on ONNX Runtime (TokenSelect registered) goes through our OrtRunner's Polygraphy runner instead.
"""
import subprocess
import sys
from pathlib import Path

import pytest
from polygraphy.comparator import Comparator, RunResults
from polygraphy.json import load_json

from pipeline.export.metadata import read_info
from pipeline.runners import make_runner
from pipeline.runners.compare import accuracy_gaps, quiet
from tests.onnx_models import exported_run

POLYGRAPHY = [str(Path(sys.executable).with_name("polygraphy"))]  # the CLI next to this Python
FLAVOR_TOL = 1e-4  # plugin vs native flavor on ONNX Runtime CPU, fp32 (both within 1e-4 of PyTorch)
COMPARE = ["--atol", "logits:1e-4", "kept_tokens:0", "--rtol", "0", "--check-error-stat", "max"]


def polygraphy(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*POLYGRAPHY, "run", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fmnist_root):
    """`polygraphy run model.native.onnx --onnxrt ... --save-inputs --save-outputs`, as the README writes it."""
    _, run = exported_run(tmp_path_factory, fmnist_root)
    out = tmp_path_factory.mktemp("polygraphy")
    shape = ",".join(map(str, [6, *read_info(run / "model.native.onnx").input_shape]))
    polygraphy(str(run / "model.native.onnx"), "--onnxrt", "--input-shapes", f"images:[{shape}]",
               "--save-inputs", str(out / "inputs.json"), "--save-outputs", str(out / "ort.json"))
    return run, out, shape


def test_the_saved_reference_is_what_the_plugin_flavor_computes(reference):
    run, out, _ = reference
    runner = make_runner(run / "model.plugin.onnx")  # TokenSelect registered by our session
    with quiet():
        ours = Comparator.run([runner.polygraphy], data_loader=load_json(str(out / "inputs.json")))
    saved = RunResults.load(str(out / "ort.json"))
    gaps = accuracy_gaps(RunResults([ours[0], saved[0]]), {"logits": FLAVOR_TOL, "kept_tokens": 0})
    assert len(gaps) == 1 and gaps[0].passed, gaps


def test_the_comparison_flags_of_the_tensorrt_half_run_here_on_onnx_runtime(reference):
    run, out, shape = reference
    done = polygraphy(str(run / "model.native.onnx"), "--onnxrt", "--input-shapes", f"images:[{shape}]",
                      "--load-inputs", str(out / "inputs.json"), "--load-outputs", str(out / "ort.json"), *COMPARE)
    assert "PASSED | Output: 'logits'" in done.stdout and "PASSED | Output: 'kept_tokens'" in done.stdout


def test_the_cli_cannot_load_the_plugin_flavor_on_onnx_runtime(reference):
    """Why the README's reference side is the native flavor."""
    run, out, _ = reference
    done = subprocess.run([*POLYGRAPHY, "run", str(run / "model.plugin.onnx"), "--onnxrt", "--load-inputs",
                           str(out / "inputs.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "TokenSelect(-1) is not a registered function/op" in done.stdout + done.stderr
