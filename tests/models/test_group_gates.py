"""Dynamic group gates and sub-group gates augmentation: the splitter, per-group decisions, inference skips."""
from collections import Counter

import pytest
import torch

from pipeline.config import Config, GatesConfig, ModelConfig
from pipeline.models import build_student
from pipeline.models.gates import GroupGates, group_ids_for, split_sizes

CFG = Config(model=ModelConfig(arch="vit_tiny_patch16_224", img_size=28, in_chans=1, num_classes=10, patch_size=7,
                               embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0),
             gates=GatesConfig(token_stages=(2,), init_threshold=0.5, static=False, dynamic="group"))


@pytest.mark.parametrize("mode", ["none", "uniform", "random", "recursive"])
def test_split_sizes_cover_the_batch(mode):
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 2, 7, 64):
        for _ in range(50):
            sizes = split_sizes(batch, mode, generator)
            assert sum(sizes) == batch and min(sizes) >= 1


def test_split_modes_have_their_shapes():
    generator = torch.Generator().manual_seed(1)
    assert split_sizes(64, "none", generator) == [64]
    for _ in range(20):
        sizes = split_sizes(64, "uniform", generator)
        assert len(set(sizes)) == 1 and sizes[0] in (1, 2, 4, 8, 16, 32, 64)
    seen = Counter()
    for _ in range(400):
        seen.update(split_sizes(64, "recursive", generator))
    assert seen[1] > 0 and seen[64] > 0, "recursive splits reach single samples and keep whole batches too"
    assert len(seen) > 30, "and many sizes in between"
    counts = [len(split_sizes(64, "random", generator)) for _ in range(200)]
    assert min(counts) < 10 and max(counts) > 50


def test_recursive_split_spreads_samples_over_size_octaves():
    """Sample-weighted, every octave of group sizes (1, 2-3, .., 64-127, 128) gets 1/8 of the samples within 0.05."""
    generator = torch.Generator().manual_seed(0)
    per_octave = Counter()
    for _ in range(2000):
        for size in split_sizes(128, "recursive", generator):
            per_octave[size.bit_length() - 1] += size
    shares = [per_octave[o] / (2000 * 128) for o in range(8)]
    assert max(abs(s - 1 / 8) for s in shares) < 0.05, shares


def test_group_ids_follow_the_sizes():
    generator = torch.Generator().manual_seed(2)
    ids = group_ids_for([3, 1, 4], generator)
    assert sorted(Counter(ids.tolist()).items()) == [(0, 3), (1, 1), (2, 4)]


def test_gates_are_decided_per_sub_group():
    torch.manual_seed(0)
    gates = GroupGates(dim=8, heads=[2], init_bias=0.0)
    torch.nn.init.normal_(gates.routers[0].weight)
    cls = torch.randn(6, 8)
    ids = torch.tensor([0, 1, 0, 2, 1, 2])
    values = gates.layer(0, cls, ids)
    for g in range(3):
        members = (ids == g).nonzero().flatten()
        logits = gates.routers[0](cls[members].mean(dim=0))
        expected = (logits > 0).float()
        for m in members:
            assert values.attn[m] == expected[0] and values.mlp[m] == expected[1]
            assert torch.equal(values.heads[m], expected[2:])


def test_whole_batch_is_one_group_at_inference_and_closed_blocks_are_skipped():
    torch.manual_seed(0)
    model = build_student(CFG).eval()
    with torch.no_grad():
        model.group_gates.routers[3].bias[1] = -5.0  # layer 3's MLP: always closed
    calls = []
    hook = model.vit.blocks[3].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    model.vit.blocks[3].mlp.forward_gated = lambda x, g=None: (calls.append(1), torch.zeros_like(x))[1]
    images = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        model.forward_dropped(images)
    hook.remove()
    assert not calls, "a closed gate skips the sub-block's compute at inference"
    model.train()
    with torch.no_grad():
        model.forward_masked(images, torch.zeros(5, dtype=torch.long))
    assert calls, "but it runs in training, where the gate needs its gradient"


def test_scoring_layers_never_skip_their_attention():
    model = build_student(CFG)
    values = model.group_gates.layer(1, torch.randn(3, 32), None)
    assert values.attn is None and model.score_layers == (1,)
