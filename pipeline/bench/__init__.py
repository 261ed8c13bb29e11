"""`tokengate bench`: a run's shipped ONNX files against its dense one, timed in one run, interleaved round by round.

- `options`: the command's options and defaults (no heavy imports: the CLI reads them).
- `target`: what the user passed (a run directory, or a YAML config with an optional `bench:` section);
  `prepare`: the run directory a config becomes (teacher, sliced student, fitted thresholds).
- `run`: the whole command (exports through `tokengate export`'s code, runners from pipeline/runners, parity with
  validate's code); `timing`: warm-up and interleaved rounds; `metrics`: percentiles, speedups, padding waste.
- `selection_share`: TokenSelect's share of run time (`--selection-share`).
- `report`, `plot`: bench.json, bench.md, bench.png.
"""
