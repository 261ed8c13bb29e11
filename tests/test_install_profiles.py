"""Install profiles: `make setup` (CPU) and `make setup GPU=1` each resolve to exactly one ONNX Runtime build.

Two checks of the transitive requirements: an offline walk over the installed distributions' metadata (always runs),
and pip's own resolver in a dry run against this environment, which downloads what the profile lacks (skipped with
the reason when the package index cannot deliver it).
"""
import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from pipeline.ort_packages import ORT_DISTRIBUTIONS, PROFILE_DISTRIBUTION, installed_ort, problem

ROOT = Path(__file__).resolve().parents[1]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_normal(Requirement(r).name) for r in requirements}


def _builds(gpu: bool) -> tuple[str, str]:
    """(the ORT build the profile installs, the other one)."""
    ours, other = ("gpu", "cpu") if gpu else ("cpu", "gpu")
    return PROFILE_DISTRIBUTION[ours], PROFILE_DISTRIBUTION[other]


def _setup_commands(gpu: bool, venv: Path) -> list[str]:
    args = ["make", "-n", "-C", str(ROOT), "setup", f"VENV={venv}"] + (["GPU=1"] if gpu else [])
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.splitlines()


def _install_extras(lines: list[str]) -> str:
    found = [m.group(1) for line in lines if (m := re.search(r'pip install --quiet -e "\.\[([^\]]+)\]"', line))]
    assert len(found) == 1, f"expected one project install in make setup, got {found}"
    return found[0]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirement_closure(roots: list[str]) -> tuple[dict[str, set[str]], set[str]]:
    """({installed distribution: the distributions that require it}, {required but not installed}) reached from roots.

    Markers are evaluated for this interpreter and for the extras each requirement asks for.
    """
    required_by: dict[str, set[str]] = {}
    extras_done: dict[str, set[str]] = {}
    missing: set[str] = set()
    todo = [("<make setup>", Requirement(r)) for r in roots]
    while todo:
        parent, requirement = todo.pop()
        name = _normal(requirement.name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.add(name)
            continue
        required_by.setdefault(name, set()).add(parent)
        extras = set(requirement.extras)
        if name in extras_done and extras <= extras_done[name]:
            continue
        extras_done[name] = extras_done.get(name, set()) | extras
        for text in dist.requires or []:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in {""} | extras):
                todo.append((name, child))
    return required_by, missing


def test_extras_hold_one_ort_build_each():
    project = _project()
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
    expect, other = _builds(gpu)
    assert text.index(f"pip show --quiet {other}") < text.index("pip install --quiet -e")
    assert f"pipeline.ort_packages --expect {expect}" in text


def test_installed_requirements_reach_exactly_one_ort(tmp_path):
    """This environment's profile, walked offline: nothing but the profile's own extra pulls in an ORT build."""
    found = installed_ort()
    if len(found) != 1:
        pytest.fail(problem(found, None) or "no ONNX Runtime build is installed: run make setup")
    build = next(iter(found))
    extras = _install_extras(_setup_commands(build == PROFILE_DISTRIBUTION["gpu"], tmp_path / "venv")).split(",")
    project = _project()
    roots = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    required_by, missing = _requirement_closure(roots)
    assert not missing, f"required by make setup but not installed: {sorted(missing)}; rerun make setup"
    reached = {name: parents for name, parents in required_by.items() if name in ORT_DISTRIBUTIONS}
    assert reached == {build: {"<make setup>"}}, reached


def test_requirement_closure_follows_extras_and_reports_missing():
    required_by, missing = _requirement_closure(["pytest", "no-such-distribution-tokengate>=1"])
    assert "pluggy" in required_by and required_by["pluggy"] == {"pytest"}
    assert missing == {"no-such-distribution-tokengate"}


# Failures of the index or the machine, not of the requirements: the dry run is skipped with pip's line.
_INDEX_TROUBLE = (r"NewConnectionError|Network is unreachable|Temporary failure in name resolution|Could not fetch "
                  r"URL|ProxyError|ReadTimeoutError|Connection interrupted|incomplete-download|No space left on device")


@pytest.mark.slow
@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_resolved_requirements_have_exactly_one_ort(tmp_path, gpu):
    """pip's own resolver, dry run against this environment, over what `make setup [GPU=1]` installs.

    Resolving against the installed packages downloads only what the profile lacks (onnxruntime-gpu in a CPU
    environment), not the whole set again; the result is the ORT builds make setup leaves: the installed ones (none
    when the other build was there: make setup removes both first), plus what pip would install.
    """
    extras = _install_extras(_setup_commands(gpu, tmp_path / "venv"))
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                           f".[{extras}]"], cwd=ROOT, capture_output=True, text=True)
    trouble = re.search(rf"^.*({_INDEX_TROUBLE}).*$", done.stderr, re.MULTILINE) if done.returncode else None
    if trouble:
        pytest.skip(f"the package index could not deliver the dry run: {trouble.group(0).strip()}")
    assert done.returncode == 0, done.stderr[-2000:]
    expect, other = _builds(gpu)
    builds = set(installed_ort())
    if other in builds:
        builds.clear()
    builds |= {_normal(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    assert builds & set(ORT_DISTRIBUTIONS) == {expect}


def test_problem_names_the_fix():
    assert problem({"onnxruntime": "1.31.1"}, "onnxruntime") is None
    both = problem({"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"}, "onnxruntime-gpu")
    assert "both onnxruntime builds" in both and "pip install --force-reinstall onnxruntime-gpu" in both
    wrong = problem({"onnxruntime": "1.31.1"}, "onnxruntime-gpu")
    assert "onnxruntime-gpu is not installed (onnxruntime is installed instead)" in wrong


def test_this_environment_has_one_build():
    found = installed_ort()
    assert len(found) == 1, found
