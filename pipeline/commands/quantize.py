"""tokengate quantize runs/NAME/model.native.onnx [--calib-set DIR] --precision int8 [--out PATH] [--no-check]"""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="write an INT8 Q/DQ ONNX model (token selection kept in fp32)")
    p.add_argument("onnx", metavar="ONNX", help="an fp32 model written by `tokengate export` (native, capped, plugin, "
                                                "dense)")
    p.add_argument("--calib-set", default=None, help="calibration set folder (default: calib/sets/fmnist-default)")
    p.add_argument("--precision", default="int8", help="int8 (the only quantization made here)")
    p.add_argument("--out", default=None, help="output path (default: next to the input, model.<flavor>.int8.onnx)")
    p.add_argument("--score-layers-fp32", action="store_true",
                   help="also keep the qkv projections that feed the token scores in fp32 (fewer kept-token changes)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the fp32-vs-int8 check on the validation split (top-1, kept tokens, batch invariance)")
    p.add_argument("--check-images", type=int, default=2000,
                   help="validation images for the check (stratified; 0 = all)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.artifacts import read_json, update_summary
    from pipeline.export.metadata import read_info

    from calib.check_data import calibration_inputs, validation_inputs
    from calib.qdq_check import compare, patch_count, stage_compactions
    from calib.quantize import check_precision, import_quantizer, quantize_onnx
    from calib.sets import load_set

    check_precision(args.precision)  # before the calibration set and the quantizer load
    import_quantizer()
    info = read_info(args.onnx)
    cal = load_set(args.calib_set)
    result = quantize_onnx(args.onnx, cal, calibration_inputs(info, cal), args.out, args.precision,
                           args.score_layers_fp32)
    print(f"int8: {result.path} ({len(result.quantized)} nodes quantized, {len(result.excluded)} selection nodes "
          "kept fp32)")
    if args.no_check:
        return 0
    images, labels = validation_inputs(info, args.check_images)
    check = compare(args.onnx, result.path, images, labels, info.num_prefix, stage_compactions(info),
                    patch_count(info))
    record = {"path": str(result.path), "calib_set": cal.manifest.id, **check.to_dict()}
    run_dir = Path(info.run_dir)
    summary = run_dir / "summary.json"
    if summary.is_file() and Path(args.onnx).resolve().parent == run_dir.resolve():
        checks = read_json(summary).get("int8", {})  # one entry per Q/DQ file, so variants never overwrite
        update_summary(run_dir, "int8", {**checks, result.path.name: record})
    kept = "n/a" if check.kept_count_agreement is None else f"{check.kept_count_agreement:.2%}"
    sets = "n/a" if check.kept_set_agreement is None else f"{check.kept_set_agreement:.2%}"
    tokens = "n/a" if check.token_agreement is None else f"{check.token_agreement:.2%}"
    print(f"check on {check.images} validation images: top-1 fp32 {check.top1_fp32:.2f}% / int8 {check.top1_int8:.2f}%"
          f", same prediction {check.prediction_agreement:.2%}, kept counts {kept}, identical kept sets {sets}, "
          f"per-token keep decisions {tokens}, "
          f"max |logit - batch-1 logit| {check.max_abs_vs_batch1:.2e} over batches {list(check.batch_sizes)} "
          f"({check.flips_vs_batch1} flips)")
    return 0
