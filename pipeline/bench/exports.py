"""Each bench model is exported to ONNX once, into a cache folder keyed by its weights, thresholds and flavor.

Flavors: the exporter's own (`dense` for the models without token stages; `native`, `capped`, `plugin` for the
gated ones) plus the packed layout of `packed.py` with standard-op selection (`packed`) or the fused TokenSelect
node (`packed-plugin`). Every export goes through `bias_gemm.fuse_bias_into_gemm`, so that the dense baseline's
linear layers fuse their bias as the packed rows' do.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
from pathlib import Path
from typing import Optional, Sequence

import onnx
import torch

from pipeline.artifacts import atomic_path
from pipeline.config import Config
from pipeline.errors import fail
from pipeline.export import schema
from pipeline.export.bias_gemm import fuse_bias_into_gemm
from pipeline.export.metadata import ExportInfo, attach
from pipeline.export.onnx_export import INPUT_NAME, OUTPUT_NAMES, export_onnx
from pipeline.models import GatedViT

GATED_FLAVORS = ("native", "capped", "plugin", "packed", "packed-plugin")
PACKED_SELECT = {"packed": "packed", "packed-plugin": "op"}


def model_key(model: GatedViT, flavor: str, opset: int, caps: Optional[Sequence[int]],
              per_sample: Optional[bool] = None) -> str:
    """sha256 of everything the exported graph depends on: weights, stages, thresholds, flavor, caps, versions."""
    digest = hashlib.sha256()
    meta = {"flavor": flavor, "opset": opset, "caps": list(caps) if caps else None, "stages": list(model.stages),
            "per_sample": per_sample, "dropped_tokens": model.dropped_tokens,
            "min_keep": model.min_keep, "thresholds": [float(t) for t in model.thresholds.detach()],
            "structure": model.structure().to_dict(), "torch": torch.__version__, "format": 16}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for name, tensor in sorted(model.vit.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def cached_export(model: GatedViT, label: str, flavor: str, cache: Path, cfg: Config, opset: int = 20,
                  caps: Optional[Sequence[int]] = None, per_sample: Optional[bool] = None) -> tuple[Path, bool]:
    """The ONNX file of `model` in `flavor`, exported now if the cache lacks it; returns (path, was_cached).
    `per_sample` (packed flavors): force per-sample attention on or off; None lets the model's size decide."""
    flavor = flavor if model.stages else "dense"
    if model.stages and flavor not in GATED_FLAVORS:
        raise fail(f"unknown bench flavor {flavor!r}", f"use one of {', '.join(GATED_FLAVORS)}")
    path = Path(cache) / f"{label}.{flavor}.{model_key(model, flavor, opset, caps, per_sample)[:16]}.onnx"
    if path.is_file():
        return path, True
    info = ExportInfo(
        flavor=flavor, model="teacher" if label == "dense" else "student", config=cfg.to_dict(),
        stages=list(model.stages), thresholds=[float(t) for t in model.thresholds.detach()], min_keep=model.min_keep,
        num_prefix=model.num_prefix, caps=list(caps) if caps else None, truncation_rate=None,
        input_shape=[cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size], opset=opset, run_dir=str(cache),
    )
    if flavor in PACKED_SELECT:
        export_packed(model, path, info, opset, PACKED_SELECT[flavor], per_sample)
    else:
        export_onnx(model, flavor, path, info, opset, caps, passes=(fuse_bias_into_gemm,))
    return path, False


def export_packed(model: GatedViT, path: Path, info: ExportInfo, opset: int, select: str,
                  per_sample: Optional[bool] = None) -> Path:
    """Export `PackedForward(model, select)` with the same exporter settings as `export_onnx` (dynamic batch).
    `per_sample`: attention sample by sample (`varlen`); None decides by the model's token count."""
    from pipeline.bench import varlen
    from pipeline.bench.packed import PackedForward, per_sample_attention_pays

    if per_sample is None:
        per_sample = per_sample_attention_pays(model)

    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise fail("the packed export takes float32 models (its per-sample attention loop is written in float32)",
                   "export the float32 model; ONNX Runtime and TensorRT choose lower precision later")
    model = copy.deepcopy(model).eval()
    schema.register_schema()
    varlen.register_schema()
    images = torch.randn(2, *info.input_shape)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            PackedForward(model, select, varlen=per_sample), (images,), input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"images": {0: batch}}, opset_version=opset, dynamo=True, optimize=True,
            custom_translation_table={torch.ops.tokengate.token_select.default: schema.token_select_onnx,
                                      **varlen.TRANSLATION},
        )
    proto = program.model_proto
    varlen.expand_varlen_attention(proto)
    if varlen.placeholders_left(proto):
        raise fail("the packed export kept a per-sample attention placeholder that expand_varlen_attention did not "
                   "reach (inside a function or subgraph)", "report it with the model; --flavor native exports it")
    fuse_bias_into_gemm(proto)
    attach(proto, info)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=False)
    return path
