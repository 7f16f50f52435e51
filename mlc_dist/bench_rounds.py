"""Benchmarks that survive noise: every side runs once per round, rounds repeat (interleaved,
so a slow minute of the machine hits every side alike), and figures are reported as the median
over rounds with their spread.

A ratio is computed within each round (both sides under the same conditions) and its median
taken; it is not the ratio of two medians. Owns the statistics only.
"""

from __future__ import annotations

import statistics
from typing import Callable

#: Rounds when a bench is not told otherwise: the fewest with a median that one outlier
#: cannot move.
DEFAULT_REPEATS = 3


def run_rounds(one_round: Callable[[int], dict], repeats: int) -> list[dict]:
    """[one_round(0), one_round(1), ...]: each call runs every side of the comparison once."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    return [one_round(i) for i in range(repeats)]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def combine(rounds: list[dict], digits: int = 3) -> dict:
    """One result from the rounds' figures: a key numeric in every round becomes the median,
    and `spread[key]` its [min, max] where the rounds differ; other keys come from the first
    round (they are the same in every round: rows, model, device). `rounds` is the count and
    `per_round` keeps every round's figures for the keys that vary."""
    first = rounds[0]
    out, spread, per_round = dict(first), {}, {}
    for key in first:
        values = [r.get(key) for r in rounds]
        if not all(_number(v) for v in values) or len(set(values)) == 1:
            continue  # the same in every round (rows, tokens): as it is
        out[key] = round(statistics.median(values), digits)
        spread[key] = [round(min(values), digits), round(max(values), digits)]
        per_round[key] = [round(v, digits) for v in values]
    out.update(rounds=len(rounds), spread=spread, per_round=per_round)
    return out
