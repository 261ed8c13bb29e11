"""TokenSelect in NumPy and through ONNX Runtime against the PyTorch reference: bit for bit (tolerance 0)."""
import numpy as np
import pytest
import torch

from pipeline.models.token_ops import token_select_reference
from pipeline.ops.token_select import token_select
from tests.onnx_models import token_select_graph

NAN, INF = float("nan"), float("inf")


def _case(name: str, rng: np.random.Generator):
    """(x [B, N, C], scores [B, N - P], threshold, num_prefix, min_keep) for one named situation."""
    cases = {
        "random": (4, 12, 2, 1.0, 1),
        "all_kept": (3, 9, 1, -INF, 1),
        "none_kept_min_keep_1": (3, 9, 1, 50.0, 1),
        "none_kept_min_keep_3": (3, 9, 2, 50.0, 3),
        "min_keep_above_patches": (2, 3, 1, 50.0, 5),
        "single_sample": (1, 16, 1, 1.0, 1),
        "one_patch": (3, 1, 2, 0.5, 1),
    }
    if name in cases:
        batch, patches, prefix, threshold, min_keep = cases[name]
        scores = rng.random((batch, patches)).astype(np.float32) * 2
    elif name == "ties_at_threshold":  # score == threshold is not kept (strict >); equal scores rank by index
        prefix, threshold, min_keep = 1, 1.0, 3
        scores = np.array([[1.0, 1.0, 0.5, 1.0, 0.5], [0.5, 0.5, 0.5, 0.5, 0.5], [2.0, 1.0, 2.0, 1.0, 0.0]],
                          np.float32)
    elif name == "nan_and_inf":  # NaN is never kept and ranks as -inf; +inf is kept; -inf is padding
        prefix, threshold, min_keep = 2, 1.0, 2
        scores = np.array([[NAN, 0.2, -INF, 0.3, NAN], [NAN, NAN, NAN, NAN, NAN], [INF, NAN, -INF, 5.0, 0.0],
                           [-INF, -INF, 0.1, -INF, NAN]], np.float32)
    else:
        raise KeyError(name)
    x = rng.standard_normal((scores.shape[0], prefix + scores.shape[1], 8)).astype(np.float32)
    return x, scores, np.array(threshold, np.float32), prefix, min_keep


CASES = ["random", "all_kept", "none_kept_min_keep_1", "none_kept_min_keep_3", "min_keep_above_patches",
         "single_sample", "one_patch", "ties_at_threshold", "nan_and_inf"]


def _reference(x, scores, threshold, prefix, min_keep):
    y, lengths = token_select_reference(torch.from_numpy(x), torch.from_numpy(scores), torch.from_numpy(threshold),
                                        prefix, min_keep)
    return y.numpy(), lengths.numpy()


def _assert_bitwise(got, expected):
    (y, lengths), (ry, rlengths) = got, expected
    assert y.dtype == np.float32 and lengths.dtype == np.int32
    assert y.shape == ry.shape and lengths.shape == rlengths.shape
    np.testing.assert_array_equal(lengths, rlengths)
    np.testing.assert_array_equal(y.view(np.int32), ry.view(np.int32))  # tolerance 0: identical bits, -0.0 included


@pytest.mark.parametrize("name", CASES)
def test_numpy_op_matches_reference_bit_for_bit(name):
    args = _case(name, np.random.default_rng(0))
    _assert_bitwise(token_select(*args), _reference(*args))


def test_numpy_op_hand_example():
    x = np.arange(2 * 5 * 2, dtype=np.float32).reshape(2, 5, 2) + 1
    scores = np.array([[0.1, 2.0, 0.3, 3.0], [5.0, 5.0, 5.0, 5.0]], np.float32)
    y, lengths = token_select(x, scores, np.float32(1.0), num_prefix=1, min_keep=1)
    assert lengths.tolist() == [3, 5]
    np.testing.assert_array_equal(y[0], np.stack([x[0, 0], x[0, 2], x[0, 4], np.zeros(2), np.zeros(2)]))
    np.testing.assert_array_equal(y[1], x[1])


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """One single-node session per (num_prefix, min_keep), opened through ort_session (which registers the op)."""
    from pipeline.runtime import ort_session

    folder = tmp_path_factory.mktemp("token_select")
    cache = {}

    def get(prefix: int, min_keep: int):
        if (prefix, min_keep) not in cache:
            path = folder / f"ts_{prefix}_{min_keep}.onnx"
            path.write_bytes(token_select_graph(prefix, min_keep).SerializeToString())
            cache[prefix, min_keep] = ort_session(path, device="cpu")
        return cache[prefix, min_keep]

    return get


@pytest.mark.parametrize("name", CASES)
def test_onnxruntime_op_matches_reference_bit_for_bit(sessions, name):
    x, scores, threshold, prefix, min_keep = _case(name, np.random.default_rng(2))
    got = sessions(prefix, min_keep).run(None, {"x": x, "scores": scores, "threshold": threshold})
    _assert_bitwise(tuple(got), _reference(x, scores, threshold, prefix, min_keep))


def test_registration_happens_once_per_process(sessions):
    from onnxruntime_extensions import Opdef

    from pipeline.ops.ort_register import op_name, register

    sessions(1, 1)  # at least one registration happened
    assert register() == register()
    ours = [d for d in Opdef._odlist.values() if d.op_type == op_name()]
    assert len(ours) == 1
