"""INT8 explicit quantization of an exported TokenGate model: a Q/DQ ONNX file that TensorRT builds as is.

Quantizer: ONNX Runtime's static Q/DQ quantization (`onnxruntime.quantization.quantize_static`), already in the
project's one ONNX Runtime build. NVIDIA Model Optimizer's ONNX PTQ does run on this CPU, but only with
`onnxruntime-gpu~=1.24` and `onnx~=1.21` pinned by its `[onnx]` extra, which would replace the project's
onnxruntime 1.32 (CPU) and onnx 1.23; both write the same standard QuantizeLinear/DequantizeLinear pairs.

What is quantized, and how (TensorRT's explicit-quantization conventions):
- the weight GEMMs and the patch-embedding Conv (qkv, proj, MLP fc1/fc2, head), Q/DQ on their inputs only;
- int8 symmetric (zero point 0) activations with one scale per tensor, int8 symmetric weights per output channel;
- activation ranges: min/max over the calibration set, collected here with an ONNX Runtime session that can run
  the plugin flavor's TokenSelect, then handed to ONNX Runtime's quantizer as its calibration cache.
What is not: every node of the token score / selection path (as the export recorded it), which is checked
after quantization to see no int8-rounded value; attention's activation-activation products (QK^T, AV).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx

from pipeline.artifacts import atomic_path
from pipeline.errors import fail
from pipeline.export import schema
from pipeline.export.batch_one import is_joined
from pipeline.export.graph import constant_names
from pipeline.export.metadata import attach, read_info

from calib.qdq_graph import COMPUTE_OPS, is_weight_product, recorded_selection, rounded_inputs, score_feeding
from calib.sets import CalibSet

QUANT_KEY = "tokengate_quantization"  # outside read_info's "tokengate." prefix, so older readers ignore it
PRECISIONS = ("int8",)


@dataclass(frozen=True)
class QuantResult:
    path: Path
    quantized: list[str]  # node names given Q/DQ inputs
    excluded: list[str]  # the selection path, kept in fp32
    record: dict  # what the file's metadata says about its quantization


def int8_path(src: Path) -> Path:
    """model.native.onnx -> model.native.int8.onnx"""
    return src.with_name(f"{src.stem}.int8.onnx")


def import_quantizer() -> Any:
    """onnxruntime.quantization, or a clear error naming the fix."""
    try:
        quantization = importlib.import_module("onnxruntime.quantization")
    except ImportError:
        raise fail("the INT8 quantizer (onnxruntime.quantization) is missing",
                   "install ONNX Runtime: pip install 'onnxruntime>=1.20' (make setup installs the [cpu] extra)"
                   ) from None
    return quantization


def weight_nodes(model: onnx.ModelProto, excluded: set[str]) -> list[str]:
    """GEMMs with a constant weight, and Convs, off the selection path: what int8 pays off on."""
    constants = constant_names(model)
    return [n.name for n in model.graph.node if n.name not in excluded and is_weight_product(n, constants)]


def activation_inputs(model: onnx.ModelProto, nodes: list[str]) -> list[str]:
    """The non-constant inputs of the nodes to quantize: the tensors that need a calibrated range."""
    constants = constant_names(model)
    wanted = set(nodes)
    names: list[str] = []
    for n in model.graph.node:
        if n.name in wanted:
            names += [i for i in n.input[:1] if i and i not in constants and i not in names]
    return names


def collect_ranges(model: onnx.ModelProto, tensors: list[str], images: np.ndarray, batch_size: int = 64) -> dict:
    """min/max of each tensor over the calibration images (the graph's own outputs made to expose them)."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    for name in tensors:
        if name not in existing:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    lows = {t: np.inf for t in tensors}
    highs = {t: -np.inf for t in tensors}
    with tempfile.TemporaryDirectory(prefix="tokengate-calib-") as tmp:
        path = Path(tmp) / "augmented.onnx"
        onnx.save_model(augmented, str(path))
        session = cpu_session(path)
        input_name = session.get_inputs()[0].name
        for start in range(0, len(images), batch_size):
            values = session.run(tensors, {input_name: images[start:start + batch_size]})
            for name, value in zip(tensors, values):
                lows[name] = min(lows[name], float(value.min()))
                highs[name] = max(highs[name], float(value.max()))
    return {t: (lows[t], highs[t]) for t in tensors}


def cpu_session(path: Path) -> Any:
    """An ONNX Runtime CPU session, TokenSelect (plugin flavor) registered by pipeline.runtime where the graph has it."""
    from pipeline.runtime import ort_session

    return ort_session(path, device="cpu")


def check_precision(precision: str) -> None:
    """Refuse a precision this module does not quantize to (the others are build-time choices)."""
    if precision not in PRECISIONS:
        raise fail(f"--precision {precision} is not a quantization this command makes",
                   "use --precision int8 (fp16 and fp32 are chosen at build time: tokengate build --precision fp16)")


def quantize_onnx(src: str | Path, cal: CalibSet, images: np.ndarray, out: Optional[str | Path] = None,
                  precision: str = "int8", score_layers_fp32: bool = False) -> QuantResult:
    """Write the Q/DQ model next to `src` (or to `out`) with the source's TokenGate metadata plus a quantization
    record. `images`: the calibration set as float32 model inputs [N, C, H, W]. `score_layers_fp32` also keeps the
    qkv projections that feed the token scores in fp32 (fewer kept-token changes, a little less int8)."""
    check_precision(precision)
    quantization = import_quantizer()
    src = Path(src)
    info = read_info(src)
    schema.register_schema()  # the quantizer runs ONNX shape inference, which must know TokenSelect
    model = onnx.load(str(src))
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise fail(f"{src} is already quantized", "quantize the fp32 export (model.<flavor>.onnx)")
    if is_joined(model):
        raise fail(f"{src} keeps its graphs inside an If (the packed flavor's batch-one and batched branches), "
                   "which this quantizer does not rewrite", "quantize model.native.onnx or model.capped.onnx")
    excluded, scores = recorded_selection(info, src)
    chosen = weight_nodes(model, set(excluded))
    if score_layers_fp32:
        feeding = set(score_feeding(model, chosen, scores))
        excluded += [n for n in chosen if n in feeding]
        chosen = [n for n in chosen if n not in feeding]
    ranges = collect_ranges(model, activation_inputs(model, chosen), images)
    out = Path(out) if out else int8_path(src)
    with tempfile.TemporaryDirectory(prefix="tokengate-q-") as tmp:
        cache, written = Path(tmp) / "ranges.json", Path(tmp) / "model.int8.onnx"
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

        data = {t: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
                for t, (lo, hi) in ranges.items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        with _quiet_root_logger():  # it logs advice about pre-processing we skip on purpose (it renames nodes)
            quantization.quantize_static(
                str(src), str(written), calibration_data_reader=None, quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=sorted(COMPUTE_OPS), per_channel=True,
                activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8,
                nodes_to_quantize=chosen, nodes_to_exclude=excluded,
                calibrate_method=quantization.CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                               "OpTypesToExcludeOutputQuantization": sorted(COMPUTE_OPS)})
        proto = onnx.load(str(written))
    leaks = rounded_inputs(proto, excluded)
    if leaks:
        raise RuntimeError(f"selection nodes see int8-rounded inputs after quantization: {leaks[:5]}")
    record = {"precision": "int8", "format": "qdq", "quantizer": f"onnxruntime.quantization {_ort_version()}",
              "activations": "int8 symmetric, per tensor, min/max over the calibration set",
              "weights": "int8 symmetric, per output channel", "quantized_nodes": len(chosen),
              "excluded_nodes": excluded, "score_layers_fp32": score_layers_fp32,
              "excluded_reason": "token score and selection path stays fp32",
              "calib_set": cal.describe(), "source": str(src)}
    attach(proto, info)
    prop = proto.metadata_props.add()
    prop.key, prop.value = QUANT_KEY, json.dumps(record)
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=False)
    return QuantResult(out, chosen, excluded, record)


def read_quantization(path: str | Path) -> Optional[dict]:
    """The quantization record of a Q/DQ file written here, or None for an fp32 file."""
    proto = onnx.load(str(path), load_external_data=False)
    value = next((p.value for p in proto.metadata_props if p.key == QUANT_KEY), None)
    return None if value is None else json.loads(value)


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
