"""The capped flavor truncates per sample: a sample above its stage's cap keeps its own top-`cap` scores, whatever
its batch holds, so truncated samples are batch invariant too."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.export.metadata import read_info
from pipeline.export.run_export import export_run
from pipeline.models import load_student
from pipeline.runners.ort_runner import OrtRunner
from tests.conftest import make_run, tiny_config

INVARIANCE_TOL = 1e-5  # logits at any batch composition vs batch 1, fp32 (DESIGN.md §3)
PARITY_TOL = 1e-4  # ONNX Runtime CPU vs PyTorch, fp32


def test_truncated_samples_are_batch_invariant(tmp_path, fmnist_root):
    cfg = tiny_config(fmnist_root, gates={"token_stages": [2, 3], "init_threshold": 1.0})
    run = make_run(tmp_path / "run", cfg)
    path = export_run(run, ["capped"], quantile=0.5)["capped"]  # caps at the median: half the images truncated
    caps = read_info(path).caps
    from pipeline.data import load_dataset

    data = load_dataset(cfg.data, cfg.model)  # the images the caps were taken from: half of them truncated
    images = data.to_input(data.val.raw(torch.arange(16)))
    with torch.no_grad():
        adaptive = load_student(run).forward_dropped(images)[1].numpy() - 1  # patches kept without caps
        student = load_student(run).with_inference("capped", caps)
        expected, expected_kept = (t.numpy() for t in student.forward_dropped(images))
    truncated = (adaptive > np.array(caps)).any(axis=1)
    assert 0 < truncated.sum() < len(images), "the test needs truncated and untruncated samples alike"
    runner = OrtRunner(path, threads=1)
    batch = runner.infer(images.numpy())
    singles = [runner.infer(images[i:i + 1].numpy()) for i in range(len(images))]
    single_logits = np.concatenate([s.logits for s in singles])
    np.testing.assert_array_equal(np.concatenate([s.kept_tokens for s in singles]), batch.kept_tokens)
    np.testing.assert_array_equal(batch.kept_tokens, expected_kept)
    assert (batch.kept_tokens - 1 <= np.array(caps)).all()
    assert np.abs(batch.logits - single_logits)[truncated].max() <= INVARIANCE_TOL
    assert np.abs(batch.logits - single_logits).max() <= INVARIANCE_TOL
    assert np.abs(batch.logits - expected).max() <= PARITY_TOL
    # a truncated sample beside samples that keep all their tokens, and beside other truncated ones
    for order in (np.argsort(truncated), np.argsort(~truncated)):
        out = runner.infer(images.numpy()[order[:5]])
        assert np.abs(out.logits - single_logits[order[:5]]).max() <= INVARIANCE_TOL
