"""The selection finder: which nodes score tokens and which select them, on small graphs whose answer is known, and
the record every exported flavor carries."""
from __future__ import annotations

import onnx
import pytest

from pipeline.export.selection import score_inputs, selection_nodes, selection_regions, _Graph
from tests.onnx_models import token_select_graph, two_stage_graph


def test_standard_op_stages_split_into_scores_and_select():
    regions = selection_regions(two_stage_graph())
    select, scores = set(regions["select"]), set(regions["scores"])
    for p in ("a_", "b_"):
        assert {f"{p}{n}" for n in ("keep", "ranked", "positive", "kept", "mask3", "y")} <= select
        assert {f"{p}raw", f"{p}scores"} <= scores
        assert not {f"{p}h", f"{p}normed"} & (select | scores)  # block compute is neither
    assert not select & scores


def test_a_comparison_of_a_copy_of_the_scores_is_not_a_stage():
    model = two_stage_graph()
    assert score_inputs(model, _Graph(model)) == ["a_scores", "b_scores"]  # not a_ranked, the Where copy


def test_a_mask_applied_by_multiplication_is_data():
    """A float mask multiplied into the tokens carries values: the finder cannot tell it from the data path, which is
    why the exporter's graphs apply masks through Where (a condition input)."""
    model = two_stage_graph()
    for node in model.graph.node:
        if node.name == "a_y":
            node.op_type = "Mul"
            del node.input[:]
            node.input.extend(["a_h", "a_mask3"])
    assert "a_y" not in selection_nodes(model) and "a_keep" not in selection_nodes(model)


def test_fused_token_select_is_the_selection():
    model = token_select_graph(num_prefix=1, min_keep=1)
    model.graph.node[0].name = "select"
    assert selection_regions(model) == {"scores": [], "select": ["select"]}


def test_graph_order_is_kept():
    model = two_stage_graph()
    order = [n.name for n in model.graph.node]
    for names in selection_regions(model).values():
        assert names == sorted(names, key=order.index)
