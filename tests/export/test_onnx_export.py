"""ONNX export: the four student flavors and the dense teacher, their graphs, metadata and ONNX Runtime parity."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pipeline.errors import TokenGateError
from pipeline.export.exporter_id import exporter_id
from pipeline.export.metadata import read_info
from pipeline.export.onnx_export import export_passes
from pipeline.export.run_export import export_run
from pipeline.models import load_student
from tests.conftest import make_run, tiny_config

PARITY_TOL = 1e-4  # ONNX Runtime CPU vs PyTorch, fp32 (issue 4 target)
INVARIANCE_TOL = 1e-5  # logits at any batch composition vs batch 1, fp32 (DESIGN.md §3)

ARCHS = {
    "default-geometry": {"arch": "vit_tiny_patch16_224", "img_size": 28, "in_chans": 1, "patch_size": 4,
                         "embed_dim": 64, "depth": 6, "num_heads": 4, "mlp_ratio": 4.0},
    "deit_tiny_patch16_224": {"arch": "deit_tiny_patch16_224", "img_size": 64, "in_chans": 3, "patch_size": None,
                              "embed_dim": None, "depth": 6, "num_heads": None, "mlp_ratio": None},
    "deit_tiny_distilled": {"arch": "deit_tiny_distilled_patch16_224", "img_size": 64, "in_chans": 3,
                            "patch_size": None, "embed_dim": None, "depth": 6, "num_heads": None, "mlp_ratio": None},
}
ARCHS["default-geometry-context"] = ARCHS["default-geometry"]  # dropped tokens stay as frozen keys and values
CONTEXT = {"default-geometry-context", "deit_tiny_distilled"}
MERGE = {"deit_tiny_distilled"}  # a merge stage before block 0 as `tokengate calibrate` writes, with 2 prefix tokens


@pytest.fixture(scope="module", params=list(ARCHS))
def exported(request, tmp_path_factory, fmnist_root):
    gates = {"token_stages": None, "init_threshold": 1.0,
             "dropped_tokens": "context" if request.param in CONTEXT else "discard",
             "merge_block": 0 if request.param in MERGE else None}
    cfg = tiny_config(fmnist_root, model=ARCHS[request.param], gates=gates)
    run = make_run(tmp_path_factory.mktemp(request.param), cfg)
    paths = export_run(run)  # `--flavor all`
    assert set(paths) == {"plugin", "native", "capped", "packed", "dense"}
    return cfg, run, paths


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_graphs_check_and_have_a_dynamic_batch(exported):
    _, _, paths = exported
    for flavor, path in paths.items():
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        batch = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.dim_value, flavor
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer), flavor
        assert not (path.parent / (path.name + ".data")).exists()


def test_plugin_flavor_has_one_fused_node_per_stage_and_others_none(exported):
    _, run, paths = exported
    stages = len(load_student(run).stages)
    for flavor, path in paths.items():
        model = onnx.load(str(path))
        fused = [n for n in model.graph.node if n.domain == "tokengate"]
        if flavor == "plugin":
            assert len(fused) == stages and all(n.op_type == "TokenSelect" for n in fused)
            assert {(o.domain, o.version) for o in model.opset_import} >= {("tokengate", 1)}
            attrs = {a.name: a.i for a in fused[0].attribute}
            assert attrs["num_prefix"] >= 1 and attrs["min_keep"] == 1
        else:
            assert not fused, flavor
    native_ops = {n.op_type for n in onnx.load(str(paths["native"])).graph.node}
    assert "TopK" in native_ops


def test_tensorrt_flavors_keep_attention_fusable(exported):
    """Graphs for TensorRT score tokens in a separate class-token pass, so no attention softmax feeds the scores
    (attention stays the pattern TensorRT fuses); the ONNX Runtime graph reads the class row off the scoring layers'
    own softmax."""
    _, run, paths = exported
    scoring = len(load_student(run).score_layers)
    for flavor in ("plugin", "native", "capped"):
        model = onnx.load(str(paths[flavor]))
        rank = {v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.value_info}
        # attention matrices [B, H, N, N]; the separate class pass's [B, H, N] may be sliced (context keys drop out)
        assert all(n.output[0] in rank for n in model.graph.node if n.op_type == "Softmax"), "ranks are known"
        softmax = {n.output[0] for n in model.graph.node if n.op_type == "Softmax" and rank.get(n.output[0]) == 4}
        row_reads = [n for n in model.graph.node if n.op_type in ("Gather", "Slice") and n.input[0] in softmax]
        assert len(row_reads) == (0 if flavor in ("plugin", "capped") else scoring), flavor


def test_metadata_records_what_later_stages_need(exported):
    cfg, run, paths = exported
    student = load_student(run)
    info = read_info(paths["capped"])
    assert info.flavor == "capped" and info.model == "student"
    assert info.stages == list(student.stages) and info.min_keep == student.min_keep
    assert info.thresholds == pytest.approx(student.thresholds.detach().tolist(), abs=0)
    assert info.run_config() == cfg and info.caps is not None and len(info.caps) == len(info.stages)
    assert read_info(paths["dense"]).model == "teacher"


def test_every_export_records_its_passes_and_exporter(exported):
    _, run, paths = exported
    all_rows = load_student(run).stages[0] == 0  # packed from a stage before block 0: every linear layer is 2-D
    for flavor, path in paths.items():
        assert read_info(path).exporter == exporter_id(), flavor
        passes = read_info(path).passes
        assert set(passes) == set(export_passes(flavor)), flavor
        assert set(export_passes(flavor)) == ({"fold_weights", "varlen", "bias_gemm", "batch_one"} if flavor == "packed"
                                              else {"fold_weights", "bias_gemm"})
        # every ViT has linear layers with a bias, on [B, N, C] activations unless they are packed rows throughout
        assert (passes["bias_gemm"] == 0) == (flavor == "packed" and all_rows), flavor


def _node_metadata(graph: onnx.GraphProto) -> set[str]:
    keys = set()
    for node in graph.node:
        keys |= {prop.key for prop in node.metadata_props}
        for attr in node.attribute:
            if attr.HasField("g"):
                keys |= _node_metadata(attr.g)
    return keys


def test_exports_name_no_checkout_path(exported):
    """No stack traces of the exporting source tree (packed's branches included), so the bytes of an export do not
    depend on where the checkout lies, and the same run exported again is the same file; the module each node came
    from stays."""
    from pathlib import Path

    import pipeline
    from pipeline.export.onnx_export import STACK_TRACE

    _, run, paths = exported
    checkout = str(Path(pipeline.__file__).resolve().parent).encode()
    for flavor, path in paths.items():
        keys = _node_metadata(onnx.load(str(path)).graph)
        assert STACK_TRACE not in keys and "namespace" in keys, flavor
        assert checkout not in path.read_bytes(), flavor
    before = paths["dense"].read_bytes()
    export_run(run, ["dense"])
    assert paths["dense"].read_bytes() == before


@pytest.mark.parametrize("flavor", ["native", "capped", "packed", "dense"])
def test_onnxruntime_matches_pytorch(exported, flavor):
    cfg, run, paths = exported
    model = load_student(run) if flavor != "dense" else None
    if flavor == "capped":  # random images keep more than validation images: compare capped with capped
        model = model.with_inference("capped", read_info(paths["capped"]).caps)
    images = torch.randn(7, cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size)
    outputs = _session(paths[flavor]).run(None, {"images": images.numpy()})
    with torch.no_grad():
        if model is None:
            from pipeline.models import load_teacher

            expected = load_teacher(run)(images).numpy()
        else:
            expected, lengths = (t.numpy() for t in model.forward_dropped(images))
            np.testing.assert_array_equal(outputs[1], lengths)
    assert np.abs(outputs[0] - expected).max() <= PARITY_TOL


def test_capped_limits_come_from_validation_data(exported):
    _, run, paths = exported
    summary = json.loads((run / "summary.json").read_text())
    info = read_info(paths["capped"])
    assert summary["capped"]["caps"] == info.caps and summary["capped"]["quantile"] == 0.99  # export's default
    # each stage's cap leaves at most 1% of the images above it (up to rounding to whole tokens): 3% over 3 stages
    assert summary["capped"]["truncation_rate"] == info.truncation_rate <= 0.03 + 1e-9


def test_packed_is_batch_invariant(exported):
    """Shuffled batches of 1, 2, 7 against batch 1 (num_prefix 2 for the distilled DeiT): within 1e-5, no flips."""
    cfg, _, paths = exported
    session = _session(paths["packed"])
    images = torch.randn(14, cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size,
                         generator=torch.Generator().manual_seed(5)).numpy()
    singles = np.concatenate([session.run(None, {"images": images[i:i + 1]})[0] for i in range(14)])
    order = np.random.default_rng(0).permutation(14)
    for size in (2, 7):
        for start in range(0, 14, size):
            idx = order[start:start + size]
            logits = session.run(None, {"images": images[idx]})[0]
            assert np.abs(logits - singles[idx]).max() <= INVARIANCE_TOL
            assert (logits.argmax(1) == singles[idx].argmax(1)).all()


def _files(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".onnx", ".data"))


def test_bad_export_requests(tmp_path, tiny_run, fmnist_root):
    _, run = tiny_run
    before = _files(run)
    with pytest.raises(TokenGateError, match="unknown flavor 'fused'"):
        export_run(run, ["fused"])
    assert _files(run) == before
    with pytest.raises(TokenGateError, match="opset 13 is below 18"):
        export_run(run, ["native"], opset=13)
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "config.json").write_text(json.dumps(tiny_config(fmnist_root).to_dict()))
    with pytest.raises(TokenGateError, match="has no student.safetensors"):
        export_run(untrained, ["native"])
    with pytest.raises(TokenGateError, match="has no config.json"):
        export_run(tmp_path, ["native"])


@pytest.mark.parametrize("gates,flavor,message", [
    ({"dynamic": "group"}, "packed", "group-level dynamic gates"),
    ({"token_stages": []}, "packed", "no token stages"),
])
def test_impossible_flavors_are_refused_before_any_file(tmp_path, fmnist_root, gates, flavor, message):
    """One clear line each, checked for every flavor asked before the first file is written (dense comes first)."""
    run = make_run(tmp_path / "run", tiny_config(fmnist_root, gates=gates))
    with pytest.raises(TokenGateError, match=message):
        export_run(run, ["dense", flavor])
    assert _files(run) == []


def test_plugin_flavor_runs_with_our_onnxruntime_op(exported):
    """The plugin flavor through ONNX Runtime with TokenSelect registered: the fused node plus, in context mode, the
    context's compaction in standard ops beside it."""
    from pipeline.runners import make_runner

    cfg, run, paths = exported
    images = torch.randn(7, cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size,
                         generator=torch.Generator().manual_seed(3))
    got = make_runner(paths["plugin"], "ort-cpu").infer(images.numpy())
    with torch.no_grad():
        expected, lengths = (t.numpy() for t in load_student(run).forward_dropped(images))
    np.testing.assert_array_equal(got.kept_tokens, lengths)
    assert np.abs(got.logits - expected).max() <= PARITY_TOL


def test_weights_are_stored_once_and_read_straight(exported):
    """No Transpose or Slice is left over a weight (context mode reads qkv's rows twice: those views are folded), and
    the file holds the student's parameters once (the exporter merges a few, e.g. the class token into its position
    embedding), plus small index constants."""
    _, run, paths = exported
    params = sum(p.numel() for p in load_student(run).parameters())
    for flavor in ("plugin", "native", "capped", "packed"):
        model = onnx.load(str(paths[flavor]))
        weights = {t.name: t for t in model.graph.initializer}
        views = [n.name for n in model.graph.node if n.op_type in ("Transpose", "Slice") and n.input[0] in weights]
        assert not views, flavor
        stored = sum(int(np.prod(t.dims)) for t in weights.values())
        assert 0.95 * params <= stored <= params * 1.05, flavor


def test_every_flavor_records_its_selection_nodes(exported):
    """The record is what the finder says of the written file: named nodes of that file, a decision per stage in
    `select` (TokenSelect, or the threshold comparison), the class-attention scoring in `scores`; none for dense."""
    from pipeline.export.batch_one import branch_model
    from pipeline.export.selection import selection_regions

    _, run, paths = exported
    stages = len(load_student(run).stages)
    for flavor, path in paths.items():
        model = onnx.load(str(path))
        recorded = read_info(path).selection
        if flavor == "dense":
            assert recorded == {}
            continue
        # packed: the batched graph's regions, then the batch-one graph's (a decision per stage in each)
        graphs = [branch_model(model, 2), branch_model(model, 1)] if flavor == "packed" else [model]
        found = [selection_regions(graph) for graph in graphs]
        assert recorded == {region: [n for f in found for n in f[region]] for region in recorded}, flavor
        names = [n.name for graph in graphs for n in graph.graph.node]
        assert len(set(names)) == len(names) and "" not in names, flavor
        types = {n.name: n.op_type for graph in graphs for n in graph.graph.node}
        select, scores = recorded["select"], recorded["scores"]
        assert set(select) | set(scores) <= set(names) and not set(select) & set(scores), flavor
        decision = "TokenSelect" if flavor == "plugin" else "Greater"
        assert sum(types[n] == decision for n in select) >= stages * len(graphs), flavor
        assert "ReduceL2" in {types[n] for n in scores}, f"{flavor}: head importance is part of the scores"


def test_a_failed_capped_export_leaves_no_capped_summary(tmp_path, fmnist_root, monkeypatch):
    """summary.json describes the capped file on disk: an export that fails writes neither."""
    import pipeline.export.run_export as run_export

    run = make_run(tmp_path / "run", tiny_config(fmnist_root, gates={"init_threshold": 1.0}))

    def failing(*args, **kwargs):
        raise TokenGateError("the export failed")

    monkeypatch.setattr(run_export, "export_onnx", failing)
    with pytest.raises(TokenGateError, match="the export failed"):
        export_run(run, ["capped"])
    summary = run / "summary.json"
    assert not (run / "model.capped.onnx").exists()
    assert not summary.exists() or "capped" not in json.loads(summary.read_text())
