"""USDC structural gates: slicing equivalence, the layer rules, reloads, the FLOPs model, and budget gradients."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pipeline.checkpoints import read_header
from pipeline.config import Config, GatesConfig, ModelConfig, replace
from pipeline.errors import TokenGateError
from pipeline.flops import dense_macs
from pipeline.models import build_student, load_student, save_student
from pipeline.train import losses

SLICE_TOL = 1e-5  # sliced vs gated-with-closed-gates logits, fp32 CPU
CFG = Config(
    model=ModelConfig(arch="vit_tiny_patch16_224", img_size=28, in_chans=1, num_classes=10, patch_size=4,
                      embed_dim=64, depth=6, num_heads=4),
    gates=GatesConfig(init_threshold=1.0, static=True, static_init=2.0),
)


def _gated(seed: int = 0):
    """A student whose static gates close: some heads, some channels, a whole MLP, a whole attention (all its
    heads), and every head of a token-scoring layer (which must keep one)."""
    torch.manual_seed(seed)
    model = build_student(CFG).eval()
    gates = model.static_gates
    with torch.no_grad():
        for block in model.vit.blocks:
            block.attn.qkv.weight[: 2 * block.attn.attn_dim] *= 4.0
        gates.head_logits[0].copy_(torch.tensor([1.0, -1.0, 2.0, -3.0]))
        gates.channel_logits[0].copy_(torch.randn(256))
        gates.head_logits[3].fill_(-1.0)  # layer 3 scores no tokens: its attention goes away
        gates.head_logits[4].copy_(torch.tensor([-2.0, -0.5, -1.0, -3.0]))  # layer 4 scores stage 3: keeps head 1
        gates.channel_logits[5].fill_(-1.0)  # the whole MLP of layer 5
        gates.mlp_logits[2].fill_(-1.0)  # the MLP block gate of layer 2
    assert model.score_layers == (1, 2, 4)
    return model


def test_sliced_model_equals_gated_model_with_closed_gates():
    model = _gated()
    images = torch.randn(6, 1, 28, 28)
    sliced = model.sliced().eval()
    with torch.no_grad():
        expected, kept = model.forward_dropped(images)
        logits, kept_sliced = sliced.forward_dropped(images)
    torch.testing.assert_close(logits, expected, rtol=0, atol=SLICE_TOL)
    assert torch.equal(kept, kept_sliced)
    structure = sliced.structure()
    assert structure.heads == (2, 4, 4, 0, 1, 4)
    assert structure.mlp_hidden[2] == 0 and structure.mlp_hidden[5] == 0
    assert structure.mlp_hidden[0] == int((model.static_gates.channel_logits[0] > 0).sum())
    assert sliced.static_gates is None


def test_masked_training_path_agrees_with_slicing_too():
    model = _gated()
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        masked, _ = model.forward_masked(images)
        sliced, _ = model.sliced().forward_dropped(images)
    torch.testing.assert_close(masked, sliced, rtol=0, atol=SLICE_TOL)


def test_parameters_and_checkpoint_shrink_by_what_was_removed(tmp_path):
    model = _gated()
    dense = build_student(replace(CFG, gates=replace(CFG.gates, static=False)))
    sliced = model.sliced()
    removed_heads = (2 + 4 + 3) * (4 * 16 * 64 + 3 * 16)  # qkv rows + proj columns per head, plus qkv bias
    removed_channels = sum(256 - sliced.structure().mlp_hidden[i] for i in range(6)) * (2 * 64 + 1)
    removed_blocks = 3 * (2 * 64 + 64)  # whole sub-blocks also take their LayerNorm and output bias along
    count = lambda m: sum(p.numel() for n, p in m.named_parameters() if not n.startswith("static_gates"))
    assert count(dense) - count(sliced) == removed_heads + removed_channels + removed_blocks
    save_student(dense, tmp_path / "dense.safetensors", CFG)
    save_student(sliced, tmp_path / "sliced.safetensors", CFG)
    saved = (tmp_path / "dense.safetensors").stat().st_size - (tmp_path / "sliced.safetensors").stat().st_size
    assert abs(saved - 4 * (count(dense) - count(sliced))) < 4096  # fp32 bytes, give or take the JSON header


def test_sliced_student_reloads_from_config_and_safetensors(tmp_path):
    from pipeline.artifacts import write_json

    model = _gated().sliced()
    write_json(tmp_path / "config.json", CFG.to_dict())
    save_student(model, tmp_path / "student.safetensors", CFG)
    assert read_header(tmp_path / "student.safetensors")["structure"]["heads"] == [2, 4, 4, 0, 1, 4]
    reloaded = load_student(tmp_path)
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), model.eval()(images), rtol=0, atol=0)


def test_sliced_group_gated_student_reloads_with_its_routers(tmp_path):
    """Group gates on top: routers lose the rows of removed heads, and all head rows where attention went away."""
    from pipeline.artifacts import write_json

    cfg = replace(CFG, gates=replace(CFG.gates, dynamic="group"))
    torch.manual_seed(0)
    model = build_student(cfg).eval()
    with torch.no_grad():
        model.static_gates.head_logits[3].fill_(-1.0)  # layer 3's attention goes away
        model.static_gates.head_logits[0].copy_(torch.tensor([1.0, -1.0, 2.0, -3.0]))
    sliced = model.sliced().eval()
    assert [r.out_features for r in sliced.group_gates.routers] == [2 + h for h in sliced.structure().heads]
    write_json(tmp_path / "config.json", cfg.to_dict())
    save_student(sliced, tmp_path / "student.safetensors", cfg)
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(load_student(tmp_path)(images), sliced(images), rtol=0, atol=0)
        torch.testing.assert_close(sliced.forward_dropped(images)[0], model.forward_dropped(images)[0],
                                   rtol=0, atol=SLICE_TOL)


def test_sliced_checkpoint_in_the_wrong_architecture_is_refused(tmp_path):
    from pipeline.artifacts import write_json

    write_json(tmp_path / "config.json", CFG.to_dict())
    save_student(_gated().sliced(), tmp_path / "student.safetensors", CFG)
    deeper = replace(CFG, model=replace(CFG.model, depth=8))
    with pytest.raises(TokenGateError, match="structure has 6 layers but the model has 8"):
        load_student(tmp_path, deeper)
    wider = replace(CFG, model=replace(CFG.model, embed_dim=96, num_heads=6))
    with pytest.raises(TokenGateError, match="does not fit this architecture"):
        load_student(tmp_path, wider)
    other = replace(CFG, model=replace(CFG.model, arch="deit_tiny_patch16_224"))
    with pytest.raises(TokenGateError, match="trained as 'vit_tiny_patch16_224'"):
        load_student(tmp_path, other)


def test_flops_model_of_a_sliced_model_equals_measured():
    sliced = _gated().sliced().eval()
    with torch.no_grad():
        sliced.thresholds.fill_(-1.0)  # keep every token: the count is then the structure's own
    images = torch.randn(1, 1, 28, 28)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        _, lengths = sliced.forward_dropped(images)
    assert float(sliced.macs(lengths.double())[0]) == counter.get_total_flops() / 2


def test_differentiable_static_cost_equals_the_sliced_cost():
    model = _gated()
    sliced = model.sliced()
    full = torch.full((1, 3), 50.0)
    assert float(model.static_macs().detach()) == pytest.approx(float(sliced.macs(full)[0]), rel=1e-6)
    assert float(sliced.macs(full)[0]) < dense_macs(build_student(CFG).geometry())


def test_budget_gradient_reaches_every_kind_of_gate():
    model = _gated().train()
    _, stats = model.forward_masked(torch.randn(4, 1, 28, 28))
    macs = model.macs(stats.tokens, stats.gates)
    loss = losses.budget(macs, 1e7, 0.1) + losses.static_ceiling(model.static_macs(), 1e7, 0.1)
    loss.backward()
    gates = model.static_gates
    assert gates.head_logits[0].grad.abs().sum() > 0
    assert gates.channel_logits[1].grad.abs().sum() > 0
    assert gates.attn_logits.grad[0] != 0 and gates.mlp_logits.grad[1] != 0
    assert model.thresholds.grad.abs().sum() > 0


def test_all_heads_closed_rules():
    model = _gated()
    heads3, _, attn3, _ = model.static_gates.hard(3)
    heads4, _, attn4, _ = model.static_gates.hard(4)
    assert not bool(attn3) and not bool(heads3.any())  # non-scoring layer: the attention sub-block is removed
    assert bool(attn4) and heads4.tolist() == [False, True, False, False]  # scoring layer: keeps its best head
