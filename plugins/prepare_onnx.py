"""Copy a plugin-flavour ONNX into the form TensorRT's ONNX parser imports as the TokenSelect plugin.

    python plugins/prepare_onnx.py runs/NAME/model.plugin.onnx runs/NAME/model.plugin.trt.onnx

The exported `tokengate::TokenSelect` node has two outputs (y, lengths). The plugin has a third: K, the size tensor
that gives y its data-dependent extent (TensorRT only takes a size tensor from a plugin output). The parser maps
node outputs to plugin outputs one to one (TensorRT >= 10.6 requires equal counts), and finds the creator by
op_type plus the `plugin_version`/`plugin_namespace` attributes (namespace "" by default). So each TokenSelect node
here gets a third output `<y>__k` and those two attributes. The canonical model.plugin.onnx stays untouched for
ONNX Runtime. External weights are shared, not copied, when the output sits next to the input.
"""
from __future__ import annotations

import sys
from pathlib import Path

import onnx
from onnx import helper

DOMAIN = "tokengate"
OP_TYPE = "TokenSelect"
PLUGIN_VERSION = "1"
K_SUFFIX = "__k"


def _patch_node(node: onnx.NodeProto) -> bool:
    if node.op_type != OP_TYPE or node.domain != DOMAIN:
        return False
    if len(node.output) not in (2, 3):
        raise ValueError(f"{OP_TYPE} node {node.name!r} has {len(node.output)} outputs; expected y, lengths")
    if len(node.output) == 2:
        node.output.append(node.output[0] + K_SUFFIX)
    names = {a.name for a in node.attribute}
    if "plugin_namespace" not in names:
        node.attribute.append(helper.make_attribute("plugin_namespace", DOMAIN))
    if "plugin_version" not in names:
        node.attribute.append(helper.make_attribute("plugin_version", PLUGIN_VERSION))
    return True


def _patch_graph(graph: onnx.GraphProto) -> int:
    count = 0
    for node in graph.node:
        count += _patch_node(node)
        for attr in node.attribute:  # If/Loop/Scan bodies
            if attr.type == onnx.AttributeProto.GRAPH:
                count += _patch_graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                count += sum(_patch_graph(g) for g in attr.graphs)
    return count


def prepare_for_tensorrt(model: onnx.ModelProto) -> int:
    """Patch every TokenSelect node in place (graph, subgraphs, local functions); returns how many."""
    count = _patch_graph(model.graph)
    for function in model.functions:
        count += sum(_patch_node(node) for node in function.node)
    return count


def prepare_file(src: Path, dst: Path) -> int:
    """Write the TensorRT form of `src` to `dst`; returns the number of TokenSelect nodes patched."""
    src, dst = Path(src), Path(dst)
    same_dir = src.resolve().parent == dst.resolve().parent
    model = onnx.load(str(src), load_external_data=not same_dir)
    count = prepare_for_tensorrt(model)
    if count == 0:
        raise ValueError(f"{src} has no {DOMAIN}::{OP_TYPE} node; is it the plugin flavour?")
    if same_dir:
        onnx.save(model, str(dst))  # external-data locations are relative to the directory: still valid
    else:
        onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    return count


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    count = prepare_file(Path(argv[0]), Path(argv[1]))
    print(f"{argv[1]}: {count} TokenSelect node(s) prepared for TensorRT")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
