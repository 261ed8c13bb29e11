"""tokengate build ONNX --target smXX --precision fp32|fp16|int8 --batch MIN,OPT,MAX [--runtime tensorrt|...-rtx]"""
from __future__ import annotations

import argparse

from pipeline.build.profile import DEFAULT_BATCH


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build a TensorRT / TensorRT-RTX engine from an exported ONNX, with engine.json",
                       description="Writes <run>/model.<flavor>.<target>.<precision>.engine next to the ONNX, and "
                                   "<engine>.json beside it (runtime and version, target, profile, plugin library).")
    p.add_argument("onnx", help="an ONNX written by `tokengate export`, e.g. runs/NAME/model.capped.onnx")
    p.add_argument("--target", default="auto",
                   help="GPU compute capability: sm75, sm80, sm86, sm89, sm90, sm120, ... (default auto: this "
                        "machine's GPU, or sm86 without one)")
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "int8"),
                   help="fp16 converts the ONNX's floats (inputs and logits stay fp32); int8 needs a quantized "
                        "(Q/DQ) ONNX from `tokengate quantize` (default fp16)")
    p.add_argument("--batch", default=DEFAULT_BATCH, metavar="MIN,OPT,MAX",
                   help=f"batch range of the optimization profile (default {DEFAULT_BATCH})")
    p.add_argument("--runtime", default=None, choices=("tensorrt", "tensorrt-rtx"),
                   help="tensorrt (on the target GPU, every flavor) or tensorrt-rtx (on any machine, RTX targets, "
                        "capped and dense flavors); default: TensorRT where it can build the target here, else "
                        "TensorRT-RTX")
    p.add_argument("--plugin-lib", default=None, metavar="PATH",
                   help="plugin flavor: the plugin library (default plugins/build/libtokengate_plugins.so)")
    p.add_argument("--out", default=None, metavar="PATH", help="engine path (default: next to the ONNX, named above)")
    p.add_argument("--verbose", action="store_true", help="print TensorRT's log")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.build.run_build import build_engine

    result = build_engine(args.onnx, target=args.target, precision=args.precision, batch=args.batch,
                          runtime=args.runtime, plugin_lib=args.plugin_lib, out=args.out, verbose=args.verbose)
    print(result.summary())
    return 0
