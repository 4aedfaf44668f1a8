"""The arithmetic of the benchmark scripts that turns measurements into claims (bench/scaling.py)."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import scaling  # noqa: E402


def test_crossing_interpolates_in_log_compute():
    points = [(1.0, 0.1), (10.0, 0.3), (100.0, 0.5)]
    value, relation = scaling.crossing(points, 0.4)  # half-way between 10 and 100 in log space
    assert relation == "=" and value == pytest.approx(math.sqrt(10 * 100))
    assert scaling.crossing(points, 0.3) == (pytest.approx(10.0), "=")
    assert scaling.crossing(list(reversed(points)), 0.2)[0] == pytest.approx(math.sqrt(10))  # order does not matter


def test_crossing_bounds_when_never_or_already_reached():
    points = [(1.0, 0.1), (10.0, 0.3)]
    assert scaling.crossing(points, 0.9) == (10.0, ">=")  # a lower bound: more than the largest budget
    assert scaling.crossing(points, 0.05) == (1.0, "<=")
    assert scaling.crossing([(1.0, 0.1), (10.0, 0.05), (100.0, 0.2)], 0.15)[1] == "="  # non-monotone curves


def test_multiplier_is_relative_to_the_ar_baseline_at_the_reference_budget():
    def run(flops, minutes, mauve):
        return {"facts": {"flops": flops, "minutes": minutes}, "metrics": {"mauve": mauve}}

    rows = {"TextLDM": {3.0: [run(1e15, 3, 0.1)], 12.0: [run(4e15, 12, 0.2), run(4e15, 12, 0.4)]},
            "AR baseline": {3.0: [run(2e15, 3, 0.2)], 12.0: [run(8e15, 12, 0.3), run(8e15, 12, 0.3)]}}
    m = scaling.multiplier(rows, 12.0)
    assert m["ar_mauve"] == pytest.approx(0.3)  # TextLDM's mean at 12 min is exactly 0.3: reached there
    assert m["flops"] == (pytest.approx(0.5), "=") and m["minutes"] == (pytest.approx(1.0), "=")
    rows["TextLDM"][12.0][1]["metrics"]["mauve"] = 0.2
    assert m != scaling.multiplier(rows, 12.0) and scaling.multiplier(rows, 12.0)["flops"] == (pytest.approx(0.5), ">=")


def test_seed_spec():
    assert scaling.parse_seeds("12=0,1,2", [3.0, 12.0]) == {3.0: [0], 12.0: [0, 1, 2]}
    with pytest.raises(SystemExit, match="not in --minutes"):
        scaling.parse_seeds("5=0", [3.0, 12.0])


def test_table_and_plots_from_scorer_rows(tmp_path):
    from textldm.evaluation.harness import TABLE_METRICS
    assert set(scaling.METRICS) <= {*TABLE_METRICS, "gen_ppl", "distinct_2"}  # the keys the scorer writes

    def run(seed, minutes, mauve):
        return {"facts": {"flops": minutes * 1e14, "minutes": minutes, "params": 2e7, "steps": "10",
                          "agreement": 0.3}, "metrics": {k: mauve + 0.01 * seed for k in scaling.METRICS}}

    rows = {m: {3.0: [run(0, 3, 0.1)], 12.0: [run(s, 12, 0.2) for s in range(3)]} for m in ("TextLDM", "AR baseline")}
    human = {k: 0.5 for k in scaling.METRICS} | {"agreement": 0.01}
    lines = scaling.format_table(rows, human, [3.0, 12.0])
    assert len(lines) == 2 + 4 + 1 and "21.0 ± 1.0" in lines[3]  # mean ± sd over the three seeds, x100
    for axis in ("flops", "minutes"):
        scaling.plot(rows, human, axis, tmp_path / f"{axis}.png")
        assert (tmp_path / f"{axis}.png").stat().st_size > 10_000
