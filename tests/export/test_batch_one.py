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

from pipeline.config import Config
from pipeline.errors import TokenGateError
from pipeline.export.batch_one import PREFIX, branch_model, is_joined
from pipeline.export.metadata import ExportInfo, read_info
from pipeline.export.onnx_export import export_onnx
from pipeline.models.gated_vit import GatedViT
from tests.models.test_merge_stage import TINY, merge_model, tiny_vit

TOL = 1e-5


def _queries_only() -> GatedViT:
    """A merge stage and one context stage right before the last block: at batch one that block projects every row
    in one product and picks the kept rows' queries (`packed_attention`'s pick)."""
    model = GatedViT(tiny_vit(), stages=(3,), dropped_tokens="context", merge_block=0).eval()
    with torch.no_grad():
        model.thresholds.copy_(torch.tensor([-0.2, 1.0]))
    return model


@pytest.fixture(scope="module", params=["context", "queries-only"])
def joined(request, tmp_path_factory):
    """Exported packed: a merge stage, a context stage and a stage before the last block (the context then holds
    rows), or a merge stage and the stage before the last block alone."""
    out = tmp_path_factory.mktemp("batch_one")
    model = merge_model("context") if request.param == "context" else _queries_only()
    info = ExportInfo.of(model, Config(model=TINY), "packed", out, 20)
    return model, export_onnx(model, "packed", out / "model.packed.onnx", info), out


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _nodes_run(path, images: np.ndarray, tmp_path) -> set[str]:
    """The names of the nodes ONNX Runtime ran for one call of the file on `images` (from its profile)."""
    import json

    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / f"run{len(images)}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"images": images})
    events = json.loads(open(session.end_profiling()).read())
    return {e["name"].removesuffix("_kernel_time") for e in events
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")}


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


def test_batch_one_runs_the_batch_one_graph_only(joined, tmp_path):
    """Which graph runs, read from ONNX Runtime's profile: the batch-one graph's nodes at batch 1 and the batched
    graph's at any other batch size (the outputs alone could not tell: the branches agree). ORT names the nodes it
    creates itself, so each run is checked against the exported names of both graphs."""
    _, path, _ = joined
    proto = onnx.load(str(path))
    one, batched = ({n.name for n in branch_model(proto, b).graph.node} for b in (1, 3))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)).numpy()
    at_one, at_three = _nodes_run(path, images[:1], tmp_path), _nodes_run(path, images, tmp_path)
    assert len(at_one & one) > len(one) // 2 and not at_one & batched
    assert len(at_three & batched) > len(batched) // 2 and not at_three & one


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


def test_a_file_without_the_branch_is_its_own_branch(joined):
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
