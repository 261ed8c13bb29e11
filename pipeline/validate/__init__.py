"""`tokengate validate`: one comparison of an artifact against batch 1 and against PyTorch, at several batch sizes.

Modelled on Polygraphy's Comparator: `subject` says what an artifact is and what it is compared with, `batches`
makes the shuffled batch compositions, `compare` runs the runners and checks tolerances, `table` prints the result.
"""
