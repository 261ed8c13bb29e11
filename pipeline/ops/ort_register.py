"""Register TokenSelect with ONNX Runtime through onnxruntime-extensions' Python custom ops, once per process.

onnxruntime-extensions keeps one global table of Python ops; every session that loads its library
(`SessionOptions.register_custom_ops_library`) can then run `tokengate::TokenSelect` nodes on the CPU EP.

Its stock bridge returns each output as `array.flatten().tolist()`, which the C++ side turns back into a float64
array and then into float32: three full conversions of y per call. Its C++ side accepts a NumPy array as it is (it
casts the result to `py::array` and copies the bytes when the item size matches), so for our op we hand back
C-contiguous arrays of the declared dtypes and skip the lists. Other Python ops keep the stock path.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import numpy as np

from pipeline.errors import fail
from pipeline.ops.token_select import token_select

_lock = threading.Lock()
_library: Optional[str] = None


def op_name() -> str:
    """"tokengate::TokenSelect": onnxruntime-extensions reads the domain from the part before '::'."""
    from pipeline.contract import DOMAIN, OP_TYPE

    return f"{DOMAIN}::{OP_TYPE}"


def register(fast_outputs: bool = True) -> str:
    """Declare TokenSelect to onnxruntime-extensions (first call only); returns its custom-op library path.

    `fast_outputs=False` keeps the stock list-based output bridge (for measuring what it costs).
    """
    global _library
    with _lock:
        if _library is None:
            try:
                import onnxruntime_extensions as ortx
            except ImportError:
                raise fail("onnxruntime-extensions is not installed, so ONNX Runtime cannot run the plugin flavor's "
                           "TokenSelect node", "pip install onnxruntime-extensions, or use model.native.onnx") from None
            dt = ortx.PyCustomOpDef
            opdef = ortx.onnx_op(op_type=op_name(), inputs=[dt.dt_float, dt.dt_float, dt.dt_float],
                                 outputs=[dt.dt_float, dt.dt_int32],
                                 attrs={"num_prefix": dt.dt_int64, "min_keep": dt.dt_int64})(_kernel)
            if fast_outputs:
                _install_array_bridge(ortx, opdef)
            _library = ortx.get_library_path()
        return _library


def _kernel(x: np.ndarray, scores: np.ndarray, threshold: np.ndarray, num_prefix: int,
            min_keep: int) -> tuple[np.ndarray, np.ndarray]:
    return token_select(x, scores, threshold, num_prefix, min_keep)


def _install_array_bridge(ortx: Any, opdef: Any) -> None:
    """Route our op's calls through a hook that returns arrays; everything else goes to the stock hook."""
    from onnxruntime_extensions import _ocos

    stock: Optional[Callable] = getattr(_ocos, "_on_pyop_invocation", None)
    if stock is None:  # an onnxruntime-extensions whose bridge we do not know: keep it, it is only slower
        return
    op_id = id(opdef)

    def invoke(k_id: int, feed: list, attributes: dict) -> tuple:
        if k_id != op_id:
            return stock(k_id, feed, attributes)
        y, lengths = opdef.body(*feed, **opdef.cast_attributes(attributes))
        y = np.ascontiguousarray(y, dtype=np.float32)
        lengths = np.ascontiguousarray(lengths, dtype=np.int32)
        return k_id, y.shape, y, lengths.shape, lengths

    ortx.PyCustomOpDef.install_hooker(invoke)
