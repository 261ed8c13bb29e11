"""`tokengate bench`: dense vs static vs token-gated vs combined, timed in one run, interleaved round by round.

- `target`: what the user passed (a run directory or a YAML config with an optional `bench:` section).
- `variants`: the four models, as GatedViTs; `keep`: training-free thresholds that hit per-stage keep ratios.
- `images`: the images the models are calibrated and timed on; `exports`: one cached ONNX file per model.
- `sessions`: one callable per model and runtime; `timing`: warm-up and interleaved rounds.
- `metrics`: percentiles, speedups, padding waste (pure functions); `profile`: TokenSelect's share of run time.
- `packed`: the packed [sum K, C] layout of DESIGN.md §3, as an exportable forward over a GatedViT's own layers.
- `report`, `plot`: bench.json, bench.md, bench.png; `run`: the whole command.
"""
