"""The TokenSelect CUDA kernels (through ctypes) against `token_select_reference`, on a GPU.

The reference runs on the CPU, the semantics ONNX Runtime is held to. The kernels only compare scores and copy
rows, so every check is exact: lengths equal, y equal bit for bit (fp32 and fp16 alike; no tolerance).
"""
from __future__ import annotations

import pytest
import torch

from pipeline import cuda_kernels
from pipeline.models.token_ops import token_select_reference

LIBRARY = cuda_kernels.DEFAULT_LIBRARY
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU: torch.cuda.is_available() is False"),
    pytest.mark.skipif(not LIBRARY.is_file(), reason=f"{LIBRARY} is not built: run make plugins"),
]
DTYPES = [torch.float32, torch.float16]
BITS = {torch.float32: torch.int32, torch.float16: torch.int16}


def check(x: torch.Tensor, scores: torch.Tensor, threshold, num_prefix: int, min_keep: int) -> torch.Tensor:
    """Run both implementations and assert they agree exactly; returns lengths."""
    y, lengths = cuda_kernels.token_select_cuda(x, scores, threshold, num_prefix, min_keep)
    thr = torch.as_tensor(threshold, dtype=x.dtype)
    y_ref, lengths_ref = token_select_reference(x.cpu(), scores.cpu(), thr, num_prefix, min_keep)
    assert lengths.dtype == torch.int32 and torch.equal(lengths.cpu(), lengths_ref)
    assert y.shape == y_ref.shape
    bits = BITS[x.dtype]
    assert torch.equal(y.cpu().view(bits), y_ref.contiguous().view(bits))  # exact: the gather copies bits
    return lengths.cpu()


def inputs(batch, num_tokens, channels, num_prefix, dtype, scores=None):
    x = torch.randn(batch, num_tokens, channels, device="cuda").to(dtype)
    if scores is None:
        spread = torch.linspace(-2.0, 2.0, batch, device="cuda")[:, None]  # samples keep very different counts
        scores = torch.randn(batch, num_tokens - num_prefix, device="cuda") + spread
    return x, scores.to(device="cuda", dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7, 256])
@pytest.mark.parametrize("num_tokens", [197, 577])
@pytest.mark.parametrize("channels", [384, 768])
@pytest.mark.parametrize("num_prefix", [1, 2])
def test_random_scores(dtype, batch, num_tokens, channels, num_prefix):
    x, scores = inputs(batch, num_tokens, channels, num_prefix, dtype)
    lengths = check(x, scores, 0.3, num_prefix, min_keep=1)
    if batch > 1:
        assert lengths.min() < lengths.max()  # padding rows were exercised


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", [197, 300])
def test_deit_s_geometry_at_batch_64(dtype, num_tokens):
    """DeiT-S rows (C=384: 16-byte copies), its 197 tokens and more than 256 patches, at the goal's batch of 64."""
    x, scores = inputs(64, num_tokens, 384, 1, dtype)
    lengths = check(x, scores, 0.3, 1, min_keep=1)
    assert lengths.min() < lengths.max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_stage_chain(dtype):
    """Stages 4, 7 and 10 of DeiT-S: each stage's y (its data-dependent K rows) is the next stage's x."""
    x, scores = inputs(64, 197, 384, 1, dtype)
    tokens = [197]
    for stage in range(3):
        lengths = check(x, scores, 0.3, 1, min_keep=1)
        y, _ = cuda_kernels.token_select_cuda(x, scores, 0.3, 1, 1)
        tokens.append(y.shape[1])
        x, scores = y, torch.randn(64, y.shape[1] - 1, device="cuda").to(dtype) + 0.2 * stage
        assert int(lengths.max()) == y.shape[1]
    assert tokens[-1] < tokens[0] and tokens == sorted(tokens, reverse=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_prefix", [1, 2])
class TestAdversarial:
    def test_all_kept(self, dtype, num_prefix):
        x, scores = inputs(16, 197, 384, num_prefix, dtype)
        lengths = check(x, scores, -1e4, num_prefix, min_keep=1)
        assert bool((lengths == 197).all())

    @pytest.mark.parametrize("min_keep", [1, 3, 50])
    def test_none_kept_min_keep_applies(self, dtype, num_prefix, min_keep):
        x, scores = inputs(16, 197, 384, num_prefix, dtype)
        lengths = check(x, scores, float("inf"), num_prefix, min_keep)
        assert bool((lengths == num_prefix + min_keep).all())

    def test_ties_at_the_threshold_do_not_pass(self, dtype, num_prefix):
        levels = torch.tensor([0.0, 0.5, 1.0], device="cuda")
        scores = levels[torch.randint(0, 3, (32, 197 - num_prefix), device="cuda")]
        x, scores = inputs(32, 197, 384, num_prefix, dtype, scores)
        lengths = check(x, scores, 0.5, num_prefix, min_keep=1)
        assert torch.equal(lengths - num_prefix, (scores == 1.0).sum(1).clamp_min(1).int().cpu())

    def test_equal_scores_min_keep_takes_the_lowest_indices(self, dtype, num_prefix):
        x, scores = inputs(8, 197, 384, num_prefix, dtype, torch.full((8, 197 - num_prefix), 0.25))
        check(x, scores, 1.0, num_prefix, min_keep=5)
        y, _ = cuda_kernels.token_select_cuda(x, scores, 1.0, num_prefix, 5)
        assert torch.equal(y[:, num_prefix:], x[:, num_prefix:num_prefix + 5])

    def test_nan_and_inf_scores(self, dtype, num_prefix):
        scores = torch.randn(64, 197 - num_prefix, device="cuda")
        draw = torch.rand_like(scores)
        scores[draw < 0.25] = float("nan")
        scores[(draw >= 0.25) & (draw < 0.5)] = float("-inf")
        scores[(draw >= 0.5) & (draw < 0.55)] = float("inf")
        scores[0] = float("nan")  # a sample of NaNs only: min_keep falls back to the lowest indices
        scores[1] = float("-inf")  # padded positions only
        scores[2, ::2], scores[2, 1::2] = float("nan"), float("-inf")  # NaN ranks as -inf
        x, scores = inputs(64, 197, 384, num_prefix, dtype, scores)
        check(x, scores, 0.0, num_prefix, min_keep=4)
        check(x, scores, float("inf"), num_prefix, min_keep=4)  # +inf never passes +inf, but ranks first

    def test_infinities_tie_with_the_largest_finite_scores(self, dtype, num_prefix):
        """The reference ranks nan_to_num(scores): +-inf tie with +-finfo.max, across the threshold too."""
        big = torch.finfo(dtype).max
        levels = torch.tensor([float("-inf"), -big, big, float("inf"), float("nan"), 0.0], device="cuda")
        scores = levels[torch.randint(0, 6, (64, 197 - num_prefix), device="cuda")]
        x, scores = inputs(64, 197, 384, num_prefix, dtype, scores)
        for threshold in (float("-inf"), -big, big, float("inf"), float("nan")):
            for min_keep in (1, 7, 150):
                check(x, scores, threshold, num_prefix, min_keep)

    def test_signed_zeros_tie(self, dtype, num_prefix):
        signs = torch.where(torch.rand(8, 197 - num_prefix, device="cuda") < 0.5, -1.0, 1.0)
        x, scores = inputs(8, 197, 384, num_prefix, dtype, signs * 0.0)
        check(x, scores, 0.5, num_prefix, min_keep=3)
        check(x, scores, -0.0, num_prefix, min_keep=1)  # neither zero is > -0.0

    def test_denormal_scores_pass_a_zero_threshold(self, dtype, num_prefix):
        tiny = torch.finfo(dtype).tiny / 4  # subnormal: must not be flushed to zero
        scores = torch.zeros(4, 197 - num_prefix, device="cuda", dtype=dtype)
        scores[:, 3] = tiny
        x, scores = inputs(4, 197, 384, num_prefix, dtype, scores)
        lengths = check(x, scores, 0.0, num_prefix, min_keep=1)
        assert bool((lengths == num_prefix + 1).all())

    def test_min_keep_beyond_the_patch_count(self, dtype, num_prefix):
        x, scores = inputs(4, 197, 384, num_prefix, dtype)
        lengths = check(x, scores, float("inf"), num_prefix, min_keep=10_000)
        assert bool((lengths == 197).all())

    def test_special_values_in_x_are_copied_bit_for_bit(self, dtype, num_prefix):
        x, scores = inputs(8, 197, 384, num_prefix, dtype)
        flat = x.view(-1)
        flat[::7] = float("nan")
        flat[1::7] = -0.0
        flat[2::7] = float("-inf")
        flat[3::7] = torch.finfo(dtype).tiny / 2
        check(x, scores, 0.0, num_prefix, min_keep=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 3, 5, 384])
def test_odd_channels_and_unaligned_rows(dtype, channels):
    """Rows whose size or address is not a multiple of 16 bytes take the narrower copy paths."""
    base = torch.randn(6 * 50 * channels + 1, device="cuda").to(dtype)
    x = base[1:].view(6, 50, channels)  # one element off the allocation's alignment
    _, scores = inputs(6, 50, channels, 1, dtype)
    check(x, scores, 0.0, 1, min_keep=2)
    check(base[:-1].view(6, 50, channels), scores, 0.0, 1, min_keep=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_patch_tokens_and_empty_batch(dtype):
    x, scores = inputs(3, 2, 16, 2, dtype, torch.empty(3, 0))
    lengths = check(x, scores, 0.0, 2, min_keep=1)
    assert lengths.tolist() == [2, 2, 2]
    x, scores = inputs(0, 197, 16, 1, dtype, torch.empty(0, 196))
    y, lengths = cuda_kernels.token_select_cuda(x, scores, 0.0, 1, 1)
    assert y.shape == (0, 1, 16) and lengths.shape == (0,)


def test_runs_on_the_current_stream():
    x, scores = inputs(64, 197, 384, 1, torch.float32)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # x and scores were made on the default stream
    with torch.cuda.stream(stream):
        y, lengths = cuda_kernels.token_select_cuda(x, scores, 0.3, 1, 1)
    stream.synchronize()
    y_ref, lengths_ref = token_select_reference(x.cpu(), scores.cpu(), torch.tensor(0.3), 1, 1)
    assert torch.equal(lengths.cpu(), lengths_ref) and torch.equal(y.cpu().view(torch.int32), y_ref.view(torch.int32))


def test_two_kernel_launches_per_call():
    x, scores = inputs(64, 197, 384, 1, torch.float32)
    threshold = torch.tensor(0.3, device="cuda")  # already on the GPU: no copy inside the trace
    cuda_kernels.token_select_cuda(x, scores, threshold, 1, 1)  # load the library and warm up outside the trace
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        cuda_kernels.token_select_cuda(x, scores, threshold, 1, 1)
        torch.cuda.synchronize()
    device_ops = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels = [name for name in device_ops if not name.startswith(("Memcpy", "Memset"))]
    if not any("tokengate" in name for name in kernels):
        pytest.skip(f"the profiler recorded no kernel of the ctypes library (saw {device_ops})")
    assert len(kernels) == 2, kernels
    assert sum("tokengateCompactKernel" in k for k in kernels) == 1
    assert sum("tokengateGatherKernel" in k for k in kernels) == 1
