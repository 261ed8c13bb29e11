"""Copy a plugin-flavour ONNX into the form TensorRT's ONNX parser imports as the TokenSelect plugin.

    python plugins/prepare_onnx.py runs/NAME/model.plugin.onnx runs/NAME/model.plugin.trt.onnx

For trtexec users (docs/trtexec.md): `tokengate build` does the same rewrite in a temporary file. Each
`tokengate::TokenSelect` node gets the plugin's third output `<y>__k` (the int32 size tensor K) and the
`plugin_version`/`plugin_namespace` attributes TensorRT's parser finds creators by (pipeline/build/onnx_prep.py).
The canonical model.plugin.onnx stays untouched for ONNX Runtime. External weights are shared, not copied, when the
output sits next to the input.
"""
from __future__ import annotations

import sys
from pathlib import Path

import onnx

from pipeline.build.onnx_prep import DOMAIN, OP_TYPE, add_plugin_outputs
from pipeline.errors import TokenGateError

prepare_for_tensorrt = add_plugin_outputs  # patches graph, subgraphs and local functions in place; returns the count


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
    try:
        count = prepare_file(Path(argv[0]), Path(argv[1]))
    except (ValueError, TokenGateError) as exc:
        print(f"prepare_onnx: error: {exc}", file=sys.stderr)
        return 2
    print(f"{argv[1]}: {count} TokenSelect node(s) prepared for TensorRT")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
