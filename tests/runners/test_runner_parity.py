"""Both adaptive flavors through ONNX Runtime: parity with the PyTorch student, and batch invariance.

One checker per property, run on ort-cpu always and on ort-cuda where a GPU and onnxruntime-gpu are present (there
the plugin flavor gives way to its native sibling, by design). Parity goes through Polygraphy's Comparator over the
runners' Polygraphy runners; batch invariance is ours (one runner against itself across batch compositions).
"""
import numpy as np
import onnxruntime as ort
import pytest
from polygraphy.comparator import Comparator

from pipeline.data import load_dataset
from pipeline.runners import make_runner
from pipeline.runners.compare import accuracy_gaps, quiet
from tests.onnx_models import exported_run

RUNTIMES = ["ort-cpu", pytest.param("ort-cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                                        reason="needs onnxruntime-gpu with the CUDA EP and an NVIDIA GPU")])]
PARITY_TOL = 1e-4  # ONNX Runtime CPU vs PyTorch, fp32 (issue 4 target)
BATCH_TOL = 1e-5  # logits at batch B vs batch 1, fp32 (DESIGN.md §3 promise)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, fmnist_root):
    cfg, run = exported_run(tmp_path_factory, fmnist_root)
    data = load_dataset(cfg.data, cfg.model)
    images = data.to_input(data.val.raw(np.arange(24))).numpy()
    images[20:] += np.random.default_rng(0).standard_normal(images[20:].shape).astype(np.float32) * 2  # odd inputs
    return run, images, make_runner(run, device="cpu")  # the reference stays fp32 on the CPU


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("flavor", ["plugin", "native"])
def test_onnxruntime_matches_pytorch_and_keeps_the_same_tokens(setup, flavor, runtime):
    run, images, torch_runner = setup
    runner = make_runner(run / f"model.{flavor}.onnx", runtime)
    feeds = [{"images": images[:7]}, {"images": images}]  # two batch sizes, the odd inputs in the second
    with quiet():
        results = Comparator.run([runner.polygraphy, torch_runner.polygraphy], data_loader=feeds)
    gaps = accuracy_gaps(results, {"logits": PARITY_TOL, "kept_tokens": 0})
    assert all(gap.passed for gap in gaps), gaps  # logits within PARITY_TOL, kept tokens equal
    kept = results[0][1][-1]["kept_tokens"][:, -1]
    assert kept.min() < kept.max() < 17  # the stages really drop tokens, and differently per sample
    np.testing.assert_array_equal(runner.infer(images).kept_tokens, results[1][1][-1]["kept_tokens"])


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("flavor", ["plugin", "native"])
def test_batch_invariance_within_tolerance_and_no_flips(setup, flavor, runtime):
    run, images, _ = setup
    runner = make_runner(run / f"model.{flavor}.onnx", runtime)
    single = np.concatenate([runner.infer(images[i:i + 1]).logits for i in range(len(images))])
    order = np.random.default_rng(1).permutation(len(images))
    for size in (2, 7, 24):
        logits = np.empty_like(single)
        for start in range(0, len(images), size):
            idx = order[start:start + size]
            logits[idx] = runner.infer(images[idx]).logits
        assert np.abs(logits - single).max() <= BATCH_TOL, size
        assert int((logits.argmax(1) != single.argmax(1)).sum()) == 0, size
