"""GPU target names and detection (torch first, then nvidia-smi), with the GPU faked at those two boundaries."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from pipeline.build import targets
from pipeline.errors import TokenGateError


@pytest.mark.parametrize("text", ["sm86", "SM86", "sm_86", "86", "8.6", "compute_86", " sm86 "])
def test_parses_the_usual_spellings(text):
    assert targets.parse_target(text) == "sm86"


def test_parses_two_digit_minor_and_major():
    assert targets.parse_target("12.0") == "sm120" and targets.parse_target("sm121") == "sm121"
    assert targets.parse_target("sm_100") == "sm100"


@pytest.mark.parametrize("text", ["sm99", "ampere", "", "sm8", "9.9"])
def test_unknown_target_says_which_exist(text):
    with pytest.raises(TokenGateError, match="unknown GPU target") as info:
        targets.parse_target(text)
    assert "sm86 (RTX 30" in str(info.value) and "sm90 (H100" in str(info.value)


def test_every_rtx_target_is_a_known_target():
    assert set(targets.RTX_TARGETS) <= set(targets.KNOWN_TARGETS)
    assert targets.CPU_DEFAULT_TARGET in targets.RTX_TARGETS


def test_compute_cap_strings():
    assert targets.from_compute_cap("8.6") == "sm86"
    assert targets.from_compute_cap("12.0\n") == "sm120"
    assert targets.from_compute_cap("[N/A]") is None


def _fake_nvidia_smi(tmp_path: Path, monkeypatch, output: str, status: int = 0) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '{output}'\nexit {status}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")


def test_detects_with_torch_first(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    _fake_nvidia_smi(tmp_path, monkeypatch, "9.0\\n")
    assert targets.detect_target() == "sm89"


def test_falls_back_to_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fake_nvidia_smi(tmp_path, monkeypatch, "9.0\\n9.0\\n")  # two GPUs: the first one counts
    assert targets.detect_target() == "sm90"


def test_no_gpu_when_nvidia_smi_fails_or_is_absent(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA-SMI has failed\\n", status=9)
    assert targets.detect_target() is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert targets.detect_target() is None


def test_query_gpu_reads_the_first_gpus_fields(monkeypatch, tmp_path):
    _fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA H100 80GB HBM3, 9.0\\nNVIDIA L4, 8.9\\n")
    assert targets.query_gpu("name,compute_cap") == ["NVIDIA H100 80GB HBM3", "9.0"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert targets.query_gpu("name") is None
