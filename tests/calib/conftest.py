"""Fixtures for the calib tests: a calibration set from the synthetic Fashion-MNIST, small runs, and one calibrated,
exported run shared by the CLI and quantization tests (its export dominates their time). `small_run` is in
tests/conftest.py (tools/ tests use it too)."""
from __future__ import annotations

import pytest

from calib import sets

PER_CLASS = 6


@pytest.fixture(scope="session")
def calib_set(tmp_path_factory, fmnist_root):
    """6 images per class of the synthetic train split (60 images)."""
    manifest, images, labels = sets.build_fashion_mnist(str(fmnist_root), PER_CLASS, seed=0, name="synthetic")
    return sets.load_set(sets.save_set(tmp_path_factory.mktemp("calib_set"), manifest, images, labels))


@pytest.fixture(scope="session")
def calibrated_run(tmp_path_factory, tiny_run, calib_set):
    """`tokengate calibrate` on the trained tiny run's teacher at budget 0.8, with a sweep point and the plot. A trained
    teacher, because int8-vs-fp32 agreement is only meaningful on logits and attention that mean something."""
    from pipeline.cli import main

    _, run = tiny_run
    out = tmp_path_factory.mktemp("calibrated") / "run"
    plot = out.parent / "calib.png"
    code = main(["calibrate", str(run), "--budget", "0.8", "--calib-set", str(calib_set.folder), "--out", str(out),
                 "--sweep", "0.7", "--grid", "2", "--plot", str(plot)])
    assert code == 0
    return out, plot


@pytest.fixture(scope="session")
def exported(calibrated_run):
    """The calibrated run exported like a trained one (native and capped: no custom op needed)."""
    from pipeline.export.run_export import export_run

    out, _ = calibrated_run
    return export_run(out, ["native", "capped"])
