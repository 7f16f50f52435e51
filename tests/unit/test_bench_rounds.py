"""Benches report the median over interleaved rounds, with the spread; ratios per round."""

import pytest

from mlc_dist.bench_rounds import combine, run_rounds


def test_rounds_interleave_every_side_once_per_round():
    calls = []

    def one_round(i):
        calls.extend([("ours", i), ("theirs", i)])
        return {"i": i}

    assert [r["i"] for r in run_rounds(one_round, 3)] == [0, 1, 2]
    assert calls == [("ours", 0), ("theirs", 0), ("ours", 1), ("theirs", 1), ("ours", 2),
                     ("theirs", 2)]
    with pytest.raises(ValueError, match="at least 1"):
        run_rounds(one_round, 0)


def test_median_spread_and_per_round_of_the_varying_figures():
    rounds = [{"rows": 100, "ours": 10.0, "ratio": 4.5, "model": "m", "ok": True},
              {"rows": 100, "ours": 30.0, "ratio": 3.1, "model": "m", "ok": True},
              {"rows": 100, "ours": 20.0, "ratio": 4.2, "model": "m", "ok": True}]
    out = combine(rounds)
    assert out["ours"] == 20.0 and out["ratio"] == 4.2   # medians, not means (20.0, 3.933)
    assert out["spread"] == {"ours": [10.0, 30.0], "ratio": [3.1, 4.5]}
    assert out["per_round"]["ratio"] == [4.5, 3.1, 4.2]
    assert out["rows"] == 100 and out["model"] == "m" and out["ok"] is True
    assert out["rounds"] == 3 and "rows" not in out["spread"]


def test_a_figure_missing_in_a_round_keeps_the_first_rounds_value():
    out = combine([{"mfu": None, "x": 1.0}, {"mfu": None, "x": 2.0}])
    assert out["mfu"] is None and out["x"] == 1.5


def test_figures_equal_in_every_round_keep_their_type():
    out = combine([{"rows": 400, "x": 1}, {"rows": 400, "x": 2}])
    assert out["rows"] == 400 and isinstance(out["rows"], int) and out["x"] == 1.5
