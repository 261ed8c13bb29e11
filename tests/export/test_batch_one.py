"""The packed file's batch-one branch (pipeline/export/batch_one.py): the batch size picks the branch, the branches
agree, each weight is stored once, and either branch cuts back out as a model of its own.

Tolerances: kept counts exact; logits 1e-5 (DESIGN.md §3) between the two branches, and between the joined file and
its branch cut out, which ONNX Runtime optimizes apart (fusions inside an If's branch differ from a top graph's)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from pipeline.config import Config, ModelConfig
from pipeline.errors import TokenGateError
from pipeline.export.batch_one import PREFIX, branch_model, is_joined
from pipeline.export.metadata import ExportInfo, read_info
from pipeline.export.onnx_export import export_onnx
from tests.models.test_merge_stage import merge_model

TOL = 1e-5


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    """A merge stage, a context stage and a stage before the last block (query rows only), exported packed."""
    out = tmp_path_factory.mktemp("batch_one")
    model = merge_model("context")
    cfg = Config(model=ModelConfig(arch="vit_tiny_patch16_224", img_size=32, in_chans=3, num_classes=10,
                                   patch_size=4, embed_dim=32, depth=4, num_heads=2))
    path = export_onnx(model, "packed", out / "model.packed.onnx", ExportInfo.of(model, cfg, "packed", out, 20))
    return model, path, out


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_batch_size_picks_the_branch(joined):
    model, path, _ = joined
    proto = onnx.load(str(path))
    assert [n.op_type for n in proto.graph.node] == ["Shape", "Equal", "If"] and is_joined(proto)
    one, batched = branch_model(proto, 1), branch_model(proto, 5)
    ops = {n.op_type for n in one.graph.node}
    assert len(one.graph.node) < len(batched.graph.node)
    assert not ops & {"CumSum", "Range", "If", "Loop"}  # no layouts and no per-sample attention at batch one
    assert all(n.name.startswith(PREFIX) for n in one.graph.node)
    full, alone, general = _session(proto), _session(one), _session(batched)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, kept = model.forward_dropped(images)
    batch, cut = full.run(None, {"images": images.numpy()}), general.run(None, {"images": images.numpy()})
    assert np.array_equal(batch[1], cut[1]) and np.abs(batch[0] - cut[0]).max() <= TOL
    assert np.array_equal(batch[1], kept.numpy()) and (kept.min(0).values < kept.max(0).values).any()
    for i in range(5):
        image = {"images": images[i:i + 1].numpy()}
        single, own, other = full.run(None, image), alone.run(None, image), general.run(None, image)
        assert np.array_equal(single[1], own[1]) and np.abs(single[0] - own[0]).max() <= TOL
        assert np.array_equal(single[1], other[1]) and np.abs(single[0] - other[0]).max() <= TOL
        assert np.abs(single[0] - logits[i:i + 1].numpy()).max() <= TOL
    assert read_info(path).passes["batch_one"] == 1


def test_each_weight_is_stored_once(joined):
    """The branches read the outer initializers; the batch-one graph adds none of the model's weights."""
    model, path, _ = joined
    proto = onnx.load(str(path))
    large = [numpy_helper.to_array(t) for t in proto.graph.initializer if np.prod(t.dims) >= 256]
    contents = {(a.dtype.str, a.shape, a.tobytes()) for a in large}
    assert len(contents) == len(large)
    stored = sum(a.size for a in large)
    parameters = sum(p.numel() for p in model.parameters())
    assert stored <= 1.05 * parameters  # the weights once (a few folded views aside), not twice
    assert all(np.prod(t.dims) < 256 for t in proto.graph.initializer if t.name.startswith(PREFIX))


def test_a_file_without_the_branch_is_its_own_branch(joined, tmp_path):
    _, path, _ = joined
    plain = branch_model(onnx.load(str(path)), 3)
    assert not is_joined(plain) and branch_model(plain, 1) is plain


def test_quantize_refuses_the_joined_file(joined):
    pytest.importorskip("onnxruntime.quantization")
    from calib.quantize import quantize_onnx

    _, path, out = joined
    with pytest.raises(TokenGateError, match="inside an If") as refused:
        quantize_onnx(path, None, np.zeros((1, 3, 32, 32), np.float32), out=out / "q.onnx")
    assert "model.native.onnx" in str(refused.value)
    assert not (out / "q.onnx").exists()
