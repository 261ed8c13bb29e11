"""Outputs compared by Polygraphy's Comparator, so a tolerance means the same in validate, bench, gpu_check and in
`polygraphy run --atol ... --rtol 0 --check-error-stat max`.

Our checks are absolute: max |got - reference| <= atol, with rtol 0 (relative error means nothing for logits near
zero). NaN or Inf on either side fails every tolerance, and its gap reads as inf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Gap:
    max_abs: float  # max |got - reference| over the compared outputs; inf where either side holds NaN/Inf
    passed: bool  # every compared output within its atol


def quiet() -> object:
    """A context in which Polygraphy stays silent: our callers report failures themselves, in one line each."""
    from polygraphy.logger import G_LOGGER

    return G_LOGGER.verbosity(G_LOGGER.CRITICAL)


def compare_func(atol: Mapping[str, float]) -> object:
    """Polygraphy's simple comparison on the max absolute error, comparing only the outputs `atol` names."""
    from polygraphy.comparator import SimpleCompareFunc

    return SimpleCompareFunc(atol=dict(atol), rtol=0.0, check_error_stat="max",
                             find_output_func=lambda name, index, other: [name] if name in atol else [])


def accuracy_gaps(run_results: object, atol: Mapping[str, float]) -> list[Gap]:
    """One Gap per iteration of the first runner vs the second, from `Comparator.compare_accuracy`."""
    from polygraphy.comparator import Comparator

    with quiet(), np.errstate(invalid="ignore", over="ignore"):  # its statistics of NaN/Inf: the gap says inf
        (result,) = Comparator.compare_accuracy(run_results, compare_func=compare_func(atol))
    (iterations,) = result.values()
    return [_gap(outputs.values()) if set(atol) <= set(outputs) else Gap(math.inf, False)  # an output missing
            for outputs in iterations]  # on either side (Polygraphy skips it with a warning) fails


def compare_outputs(got: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                    atol: Mapping[str, float], names: Sequence[str] = ("got", "reference")) -> Gap:
    """`got` vs `reference` (name -> array, e.g. a whole split's logits gathered from many batches)."""
    from polygraphy.comparator import IterationResult, RunResults

    results = RunResults([(name, [IterationResult(dict(outputs), runner_name=name)])
                          for name, outputs in zip(names, (got, reference))])
    return accuracy_gaps(results, atol)[0]


def logit_gap(logits: np.ndarray, reference: np.ndarray, atol: float) -> Gap:
    """max |logits - reference| against `atol` (Polygraphy's comparison of the `logits` output)."""
    if logits.size == 0:
        return Gap(0.0, True)
    return compare_outputs({"logits": logits}, {"logits": reference}, {"logits": atol})


def _gap(results: Iterable[object]) -> Gap:
    worst, passed = 0.0, True
    for result in results:
        if isinstance(result, bool):  # Polygraphy's answer for outputs of different shapes: not comparable
            return Gap(math.inf, False)
        value = float(result.max_absdiff)
        worst = max(worst, value if math.isfinite(value) else math.inf)
        passed = passed and bool(result)
    return Gap(worst, passed)
