"""Install profiles: `make setup` (CPU) and `make setup GPU=1` each resolve to exactly one ONNX Runtime build.

The dry-run test asks pip's resolver for the full requirement set of the exact command `make setup` runs; it needs
the package index (skipped with the reason when that is unreachable).
"""
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pipeline.ort_packages import ORT_DISTRIBUTIONS, installed_ort, problem

ROOT = Path(__file__).resolve().parents[1]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_normal(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in requirements}


def _setup_commands(gpu: bool, venv: Path) -> list[str]:
    args = ["make", "-n", "-C", str(ROOT), "setup", f"VENV={venv}"] + (["GPU=1"] if gpu else [])
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.splitlines()


def _install_extras(lines: list[str]) -> str:
    found = [m.group(1) for line in lines if (m := re.search(r'pip install --quiet -e "\.\[([^\]]+)\]"', line))]
    assert len(found) == 1, f"expected one project install in make setup, got {found}"
    return found[0]


def test_extras_hold_one_ort_build_each():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert not _names(project["dependencies"]) & set(ORT_DISTRIBUTIONS), "the base install must not pick an ORT build"
    assert _names(extras["cpu"]) & set(ORT_DISTRIBUTIONS) == {"onnxruntime"}
    assert _names(extras["gpu"]) & set(ORT_DISTRIBUTIONS) == {"onnxruntime-gpu"}
    for name, reqs in extras.items():
        if name not in ("cpu", "gpu"):
            assert not _names(reqs) & set(ORT_DISTRIBUTIONS), f"extra {name} must not pull an ORT build"


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_make_setup_removes_the_other_build_first(tmp_path, gpu):
    lines = _setup_commands(gpu, tmp_path / "venv")
    extras = _install_extras(lines).split(",")
    assert ("gpu" in extras) == gpu and ("cpu" in extras) != gpu
    text = "\n".join(lines)
    other = "onnxruntime" if gpu else "onnxruntime-gpu"
    assert text.index(f"pip show --quiet {other}") < text.index("pip install --quiet -e")
    expect = "onnxruntime-gpu" if gpu else "onnxruntime"
    assert f"pipeline.ort_packages --expect {expect}" in text


@pytest.mark.slow
@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_resolved_requirements_have_exactly_one_ort(tmp_path, gpu):
    """pip's own resolver, dry run, over what `make setup [GPU=1]` installs (transitive requirements included)."""
    extras = _install_extras(_setup_commands(gpu, tmp_path / "venv"))
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", str(report), f".[{extras}]"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode and re.search(r"NewConnectionError|Network is unreachable|Temporary failure in name "
                                     r"resolution|Could not fetch URL|ProxyError", done.stderr):
        pytest.skip(f"the package index is unreachable: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-2000:]
    names = {_normal(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    assert names & set(ORT_DISTRIBUTIONS) == {"onnxruntime-gpu" if gpu else "onnxruntime"}


def test_problem_names_the_fix():
    assert problem({"onnxruntime": "1.31.1"}, "onnxruntime") is None
    both = problem({"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"}, "onnxruntime-gpu")
    assert "both onnxruntime builds" in both and "pip install --force-reinstall onnxruntime-gpu" in both
    wrong = problem({"onnxruntime": "1.31.1"}, "onnxruntime-gpu")
    assert "onnxruntime-gpu is not installed (onnxruntime is installed instead)" in wrong


def test_this_environment_has_one_build():
    found = installed_ort()
    assert len(found) == 1, found
