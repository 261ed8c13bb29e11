"""Copy a plugin-flavour ONNX into the form TensorRT's ONNX parser imports as the TokenSelect plugin.

    python plugins/prepare_onnx.py runs/NAME/model.plugin.onnx runs/NAME/model.plugin.trt.onnx [--max-tokens N]
    python plugins/prepare_onnx.py --fp16 runs/NAME/model.capped.onnx runs/NAME/model.capped.trt.fp16.onnx

For trtexec users (docs/trtexec.md): `tokengate build` does the same rewrite in a temporary file. Each
`tokengate::TokenSelect` node gets the plugin's third output `<y>__k` (the int32 size tensor K), the
`plugin_version`/`plugin_namespace` attributes TensorRT's parser finds creators by, and `max_tokens`, the model's
token count (read from the graph's shapes unless given), which bounds K at every stage (pipeline/build/onnx_prep.py).
`--fp16` also converts floats to fp16 inside (fp32 at the graph's edges), for TensorRT 11, which has no fp16 builder
flag and builds the ONNX's own types; with it, any flavour is accepted. The canonical model.plugin.onnx stays
untouched for ONNX Runtime. External weights are shared, not copied, when the
output sits next to the input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx
from onnx import external_data_helper

from pipeline.artifacts import save_onnx
from pipeline.build.onnx_prep import DOMAIN, OP_TYPE, add_plugin_outputs, to_fp16, token_count
from pipeline.errors import TokenGateError

prepare_for_tensorrt = add_plugin_outputs  # patches graph, subgraphs and local functions in place; returns the count


def _shape_probe(model: onnx.ModelProto, base_dir: Path) -> onnx.ModelProto:
    """A copy whose external int64 tensors (Reshape targets and other shapes) are loaded, for shape inference."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for tensor in probe.graph.initializer:
        if tensor.data_type == onnx.TensorProto.INT64 and external_data_helper.uses_external_data(tensor):
            external_data_helper.load_external_data_for_tensor(tensor, str(base_dir))
    return probe


def prepare_file(src: Path, dst: Path, max_tokens: int | None = None, fp16: bool = False) -> int:
    """Write the TensorRT form of `src` to `dst`; returns the number of TokenSelect nodes patched."""
    src, dst = Path(src), Path(dst)
    same_dir = src.resolve().parent == dst.resolve().parent and not fp16  # fp16 rewrites the weights: its own file
    model = onnx.load(str(src), load_external_data=not same_dir)
    if max_tokens is None and same_dir and any(n.op_type == OP_TYPE and n.domain == DOMAIN for n in model.graph.node):
        max_tokens = token_count(_shape_probe(model, src.parent))  # the weights stay on disk
    has_plugin = any(n.op_type == OP_TYPE and n.domain == DOMAIN for n in model.graph.node) or any(
        n.op_type == OP_TYPE and n.domain == DOMAIN for f in model.functions for n in f.node)
    count = prepare_for_tensorrt(model, max_tokens) if has_plugin or not fp16 else 0
    if count == 0 and not fp16:
        raise ValueError(f"{src} has no {DOMAIN}::{OP_TYPE} node; is it the plugin flavour?")
    if fp16:
        model = to_fp16(model)
    # Beside the input, the external-data locations (relative to the directory) stay valid; elsewhere the weights
    # travel along in dst's own .data file. Either way a failed write leaves no half file at dst.
    save_onnx(model, dst, external_data=not same_dir, check=False)
    return count


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prepare_onnx.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--fp16", action="store_true", help="convert floats to fp16 inside (TensorRT 11); any flavour")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="the model's token count, prefix included (default: read from the graph's shapes)")
    args = parser.parse_args(argv)
    if args.max_tokens is not None and args.max_tokens < 1:
        parser.error(f"--max-tokens must be >= 1, got {args.max_tokens}")
    try:
        count = prepare_file(args.src, args.dst, args.max_tokens, args.fp16)
    except (ValueError, TokenGateError) as exc:
        print(f"prepare_onnx: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.dst}: {count} TokenSelect node(s) prepared for TensorRT{', floats in fp16' if args.fp16 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
