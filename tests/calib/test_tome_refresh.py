"""A ToMe baseline file that another exporter wrote is written again from the merges it records (`refresh_baseline`,
and `tokengate bench RUN --baselines baseline.tome.onnx` before it times the file); a current one is left alone."""
import json
import shutil

import onnx
import pytest

from calib.tome_export import BASELINE_FILE, export_tome, refresh_baseline, tome_exporter_id
from pipeline.artifacts import read_json, sha256_file
from pipeline.cli import main
from pipeline.errors import TokenGateError
from pipeline.export.exporter_id import exporter_id
from pipeline.export.metadata import PREFIX, read_info
from pipeline.models import load_teacher

MERGES = [4, 2, 1, 0]


@pytest.fixture()
def run_with_baseline(small_run, tmp_path):
    """A copy of the shared small run (the bench writes into a run) with a current ToMe baseline beside it."""
    cfg, run = small_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return cfg, copy, export_tome(load_teacher(copy, cfg), MERGES, cfg, copy)


def _set_metadata(path, key: str, value) -> None:
    """Rewrite one TokenGate metadata entry of an ONNX file, as a file from another exporter version would have it."""
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == PREFIX + key:
            prop.value = json.dumps(value)
    onnx.save(proto, str(path))


def test_the_baseline_digest_follows_the_flavors_exporter():
    assert len(tome_exporter_id()) == 16 and tome_exporter_id() != exporter_id()


def test_a_stale_baseline_is_written_again_and_a_current_one_is_left(run_with_baseline):
    _, run, path = run_with_baseline
    assert read_info(path).exporter == tome_exporter_id()
    written = sha256_file(path)
    assert refresh_baseline(run) is None and sha256_file(path) == written  # current: untouched
    _set_metadata(path, "exporter", "0" * 16)
    assert sha256_file(path) != written
    assert refresh_baseline(run) == path
    info = read_info(path)
    assert info.exporter == tome_exporter_id() and info.baseline["merges"] == MERGES
    assert sha256_file(path) == written  # the same merges, the same exporter: the same bytes
    path.unlink()
    assert refresh_baseline(run) is None  # nothing to refresh


def test_a_stale_baseline_without_merges_names_the_fix(run_with_baseline):
    _, run, path = run_with_baseline
    _set_metadata(path, "exporter", "0" * 16)
    _set_metadata(path, "baseline", None)
    with pytest.raises(TokenGateError, match="records no merge counts.*tokengate calibrate command"):
        refresh_baseline(run)


@pytest.mark.slow
def test_bench_times_the_baseline_it_wrote_again(run_with_baseline, tmp_path, capsys):
    _, run, path = run_with_baseline
    _set_metadata(path, "exporter", "0" * 16)
    report = tmp_path / "bench.json"
    assert main(["bench", str(run), "--flavors", "packed", "--baselines", BASELINE_FILE, "--batch-sizes", "1",
                 "--rounds", "1", "--sessions", "1", "--images", "4", "--top1-limit", "20", "--warmup", "0",
                 "--json", str(report)]) == 0
    assert "exported" in capsys.readouterr().err and read_info(path).exporter == tome_exporter_id()
    assert read_json(report)["files"]["baseline.tome"]["sha256"] == sha256_file(path)
