"""Calibration without training: calibration sets, token thresholds fitted to a FLOPs budget, and INT8 Q/DQ models.

- `sets` / `manifest` / `__main__`: deterministic, stratified calibration sets with a manifest (`python -m calib`).
- `search` (over `pipeline.models.staged`, `cost`) and `baseline`: per-stage thresholds for a GFLOPs budget, and the
  fixed-keep-rate top-k baseline at the same cost; `tome` and `tome_search`: the ToMe-style token-merging baseline
  (merge counts per block) at the same cost; `calibrate` / `source` / `run_dir` / `report` / `plot`:
  `tokengate calibrate`.
- `quantize` (with `qdq_graph`) and `qdq_check`: `tokengate quantize`, ONNX Runtime static Q/DQ that leaves the
  token-selection path in fp32, and its agreement with fp32.
"""
