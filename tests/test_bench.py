"""The arithmetic of the benchmark scripts that turns measurements into claims (bench/scaling.py)."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import scaling  # noqa: E402


def point(design: str, flops: float, seed: int = 0, **metrics) -> dict:
    values = {m: 0.5 for m in scaling.METRICS} | metrics
    return {"design": design, "flops_budget": flops, "seed": seed, "samples": 100, "metrics": values,
            "facts": {"flops": flops, "minutes": flops / 1e12, "params": 2e7, "steps": {"dit": 10},
                      **({} if design == "ar" else {"agreement": 0.3})}}


def test_fit_line_recovers_a_line_and_its_uncertainty():
    exact = scaling.fit_line([1, 2, 3, 4], [1.0, 3.0, 5.0, 7.0])
    assert exact["a"] == pytest.approx(-1.0) and exact["b"] == pytest.approx(2.0) and exact["r2"] == pytest.approx(1)
    noisy = scaling.fit_line([1, 2, 3, 4, 4], [1.1, 2.9, 5.2, 6.8, 7.1])
    assert 0 < noisy["cov"][1][1] and noisy["r2"] < 1


def test_crossing_flops_solves_the_fit_with_a_band():
    fit = scaling.fit_line([10, 11, 12, 12, 12], [0.10, 0.21, 0.29, 0.31, 0.30])  # ~0.1 per decade
    cross = scaling.crossing_flops(fit, 0.5)  # two decades past the last point
    assert cross["log10_flops"] == pytest.approx(10 + (0.5 - fit["a"] - 10 * fit["b"]) / fit["b"])
    assert cross["band"][0] < cross["log10_flops"] < cross["band"][1]


def test_multiplier_is_relative_to_the_ar_baseline_at_the_reference_budget():
    """A design whose MAUVE grows 0.1 per decade and sits 0.2 below AR at the reference needs 100x AR's FLOPs; a
    gen-PPL falling with compute 'helps', one rising never reaches AR."""
    points = [point("ar", 1e13, mauve=0.4, gen_ppl=100.0), point("ar", 1e14, mauve=0.5, gen_ppl=50.0)]
    points += [point("block", 10.0 ** e, mauve=0.1 * (e - 13) + 0.2, gen_ppl=1000.0 * 10 ** (13 - e))
               for e in (13, 14, 15)]
    points += [point("worse", 10.0 ** e, mauve=0.1 * (e - 13), gen_ppl=10.0 ** e / 1e10) for e in (13, 14, 15)]
    mult = scaling.multipliers(points, scaling.design_fits(points), reference=1e13)
    assert mult["block"]["mauve"]["linear"]["multiplier"] == pytest.approx(100.0, rel=1e-6)
    block_ppl = mult["block"]["gen_ppl"]["log"]
    assert block_ppl["helps"] and block_ppl["multiplier"] == pytest.approx(10.0)
    assert mult["worse"]["mauve"]["linear"]["multiplier"] == pytest.approx(1e4, rel=1e-6)
    assert not mult["worse"]["gen_ppl"]["log"]["helps"] and mult["worse"]["gen_ppl"]["log"]["multiplier"] is None
    assert "log" not in mult["worse"]["mauve"]  # MAUVE 0 at the smallest budget: no power law
    assert "ar" not in mult


def test_a_nearly_flat_fit_gives_an_infinite_multiplier_not_a_crash():
    """A design whose MAUVE barely rises reaches AR's only past float range: its multiplier is inf (the table says
    never), and the fit of the other designs goes on (SSD-LM's degenerate points on the CPU)."""
    points = [point("ar", 1e13, mauve=0.4), point("ar", 1e14, mauve=0.5)]
    points += [point("flat", 1e13, mauve=0.004), point("flat", 1e14, mauve=0.004 + 1e-9)]
    mult = scaling.multipliers(points, scaling.design_fits(points), reference=1e13)
    line = mult["flat"]["mauve"]["linear"]
    assert line["helps"] and line["multiplier"] == math.inf and not line["reached"]
    assert mult["flat"]["mauve"]["log"]["reached"] is False
    flat = [line for line in scaling.format_multipliers(mult, 1e13) if line.startswith("| flat | MAUVE | line")]
    assert flat and "never (the fit is too flat" in flat[0] and "inf" not in flat[0]


def test_a_series_constant_to_rounding_is_flat_not_a_coin_flip_of_its_last_digit():
    """SSD-LM's MAUVE is the same floor value at every budget, differing only in the 16th digit: the fit's slope is
    exactly 0 (more compute does not help, whichever way rounding leans), R² is undefined and shown as '-'."""
    for last in (1e-18, -1e-18):
        ys = [0.0040720962619612555, 0.0040720962619612555 + last, 0.004072096261961256]
        fit = scaling.fit_line([13.0, 13.3, 13.7], ys)
        assert fit["b"] == 0.0 and fit["a"] == pytest.approx(0.004072096261961) and math.isnan(fit["r2"])
    assert scaling.fit_line([1, 2, 3], [0.0, 0.0, 0.0])["b"] == 0.0
    points = [point("ar", 1e13, mauve=0.4), point("ar", 1e14, mauve=0.5)]
    points += [point("const", 1e13, mauve=0.004072096261961256), point("const", 1e14, mauve=0.0040720962619612555)]
    mult = scaling.multipliers(points, scaling.design_fits(points), reference=1e13)
    assert not mult["const"]["mauve"]["linear"]["helps"] and not mult["const"]["mauve"]["linear"]["reached"]
    row = [line for line in scaling.format_multipliers(mult, 1e13) if line.startswith("| const | MAUVE | line")][0]
    assert "| - | never (more compute does not improve the fit) |" in row


def test_mauve_is_also_fitted_as_a_power_law_and_small_budgets_can_be_left_out():
    """MAUVE doubling per decade (a power law) reaches 4x its value two decades on; the linear form, fitted to the
    same points, says something else - both are reported. --min-flops drops the budgets below it from the fits."""
    points = [point("ar", 1e13, mauve=0.4)] + [point("pl", 10.0 ** e, mauve=0.1 * 2 ** (e - 13)) for e in (13, 14, 15)]
    mult = scaling.multipliers(points, scaling.design_fits(points), reference=1e13)["pl"]["mauve"]
    assert mult["log"]["multiplier"] == pytest.approx(100.0, rel=1e-6) and mult["log"]["fit_r2"] == pytest.approx(1)
    assert mult["linear"]["multiplier"] != pytest.approx(100.0, rel=0.05) and mult["linear"]["fit_r2"] < 1
    points.append(point("pl", 1e12, mauve=0.9))  # an outlier below the cut
    fits = scaling.design_fits(points, min_flops=1e13)
    assert fits["pl"]["mauve"]["log"]["n"] == 3 and fits["pl"]["mauve"]["log"]["r2"] == pytest.approx(1)


def test_matched_quality_interpolates_the_ar_curve_without_extrapolating():
    """AR's MAUVE 0.1 at 1e13 and 0.4 at 1e15 (log-log: doubling per decade); 0.2 is reached at 1e14. Values outside
    its range, or crossed twice by a non-monotone curve, have no AR equivalent."""
    points = [point("ar", 1e13, mauve=0.1, gen_ppl=100.0), point("ar", 1e15, mauve=0.4, gen_ppl=300.0),
              point("ar", 1e16, mauve=0.5, gen_ppl=50.0)]
    rows = scaling.summary_rows(points)
    assert scaling.ar_equivalent_flops(rows, "mauve", 0.2) == pytest.approx(1e14)
    assert scaling.ar_equivalent_flops(rows, "mauve", 0.05) is None
    assert scaling.ar_equivalent_flops(rows, "mauve", 0.0) is None  # a collapsed model has no AR equivalent
    assert scaling.ar_equivalent_flops(rows, "gen_ppl", 200.0) is None  # on both segments
    assert scaling.ar_equivalent_flops(rows, "gen_ppl", 70.0) is not None


def test_wall_clock_over_seeds_is_the_median_and_quality_the_mean():
    """A seed that shared the machine (10x slower) must not set a design's cost; the quality metrics stay means."""
    points = [point("full", 1e13, s, mauve=m) for s, m in enumerate((0.1, 0.2, 0.6))]
    for p, minutes, seconds in zip(points, (1.0, 1.2, 12.0), (0.10, 0.12, 1.5)):
        p["facts"] |= {"minutes": minutes, "seconds_per_continuation": seconds}
    (row,) = scaling.summary_rows(points)
    assert row["minutes"] == pytest.approx(1.2) and row["seconds_per_continuation"] == pytest.approx(0.12)
    assert row["mauve"][0] == pytest.approx(0.3)


def test_table_fit_and_plot_from_point_files(tmp_path):
    from textldm.evaluation.harness import TABLE_METRICS
    assert set(scaling.METRICS) <= {*TABLE_METRICS, "gen_ppl", "distinct_2", "prompt_binding"}  # scorer keys
    out = tmp_path / "scaling"
    points = [point(d, f, s, mauve=0.1 * math.log10(f) - 1.2 + 0.01 * s) for d in ("ar", "full")
              for f in (1e13, 1e14) for s in ((0, 1, 2) if f == 1e13 else (0,))]
    for p in points:
        scaling.write_json(scaling.point_path(out, p["design"], p["flops_budget"], p["seed"]), p)
    human = {m: 0.5 for m in scaling.METRICS} | {"reference_prompt_binding": 2.4, "agreement": 0.01}
    scaling.write_json(out / "human-100.json", human)
    assert scaling.main(["fit", "--out", str(out), "--reference", "1e13"]) == 0
    text = (out / "scaling.md").read_text()
    assert "| full | 1e+13 | 3 |" in text and "11.0 ± 1.0" in text  # mean ± sd over three seeds, x100
    assert "2.400 (true cont.)" in text and (out / "scaling.png").stat().st_size > 10_000
    assert "| full | ar | 1e+13 | 3 vs 3 | +0.0 ± 0.8 | level |" in text  # the same curve: level with AR



def test_a_comparison_over_seeds_reports_the_welch_error_and_calls_level_within_two_of_them():
    """The plain sentence's arithmetic: MAUVE's difference of seed means with the Welch standard error; gen-PPL as a
    ratio of geometric means, lower better; ahead / behind only past 2 standard errors; one seed: no verdict."""
    c = scaling.compare([0.10, 0.12, 0.14], [0.20, 0.21, 0.22], "mauve")
    se = math.sqrt(0.0004 / 3 + 0.0001 / 3)
    assert c["diff"] == pytest.approx(-0.09) and c["se"] == pytest.approx(se) and c["verdict"] == "behind"
    assert scaling.compare([0.10, 0.30], [0.15, 0.25], "mauve")["verdict"] == "level"
    assert scaling.compare([0.30, 0.31], [0.20, 0.21], "mauve")["verdict"] == "ahead"
    g = scaling.compare([100.0, 110.0, 121.0], [1000.0, 1100.0, 1210.0], "gen_ppl")
    assert math.exp(g["diff"]) == pytest.approx(0.1) and g["verdict"] == "ahead"  # a tenth of theirs: better
    one = scaling.compare([0.1], [0.2, 0.3], "mauve")
    assert one["se"] is None and one["verdict"] == "-" and one["seeds"] == [1, 2]
    rows = scaling.comparisons([point("full", f, s, mauve=0.1 + 0.01 * s + (f > 1e13) * 0.3) for s in range(3)
                                for f in (1e13, 2e13)]
                               + [point("ar", 1e13, s, mauve=0.3 + 0.01 * s) for s in range(3)]
                               + [point("ar", 2e13, 0, mauve=0.3)] + [point("mdlm", 3e13, 0)], ["full"])
    # each budget both designs ran (mdlm shares none with full), the gap's sign per budget
    assert [(r["design"], r["versus"], r["budget"]) for r in rows] == [("full", "ar", 1e13), ("full", "ar", 2e13)]
    assert rows[0]["mauve"]["diff"] == pytest.approx(-0.2) and rows[0]["mauve"]["verdict"] == "behind"
    assert rows[1]["mauve"]["diff"] == pytest.approx(0.11) and rows[1]["mauve"]["verdict"] == "-"  # one AR seed
    table = scaling.format_comparisons(rows)
    assert table[2].startswith("| full | ar | 1e+13 | 3 vs 3 | -20.0 ± ") and "| 2e+13 | 3 vs 1 | +11.0 |" in table[3]


def test_next_token_ratio_error_is_zero_for_identical_answers_and_matches_the_spread_of_independent_draws():
    """bench/next_token.py's standard error of accuracy / LM accuracy (paired, delta method): none when the sampler
    answers exactly as the LM does, the observed spread of the ratio for independent answers."""
    import torch

    from next_token import ratio_se

    g = torch.Generator().manual_seed(0)
    lm = torch.rand(512, generator=g) < 0.3
    assert ratio_se(lm, lm) == 0.0
    draws = [(torch.rand(128, generator=g) < 0.25, torch.rand(128, generator=g) < 0.3) for _ in range(1500)]
    ratios = torch.tensor([a.float().mean() / b.float().mean() for a, b in draws])
    mean_se = sum(ratio_se(a, b) for a, b in draws) / len(draws)
    assert mean_se == pytest.approx(ratios.std().item(), rel=0.15)


def test_block_positions_averages_each_position_inside_a_block_over_the_rows_that_reached_it():
    """bench/block_positions.py: position j of the sampled text is position j % B of its block; rows that ended
    (written -1) leave the means."""
    import torch

    from block_positions import summary

    p = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.7, 0.3], [0.5, 0.5, 0.5, 0.5, 0.0, 0.0]])
    written = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, -1, -1]])
    s = summary(p, written, block_size=2)
    assert s["per_position"][4] == pytest.approx(0.7) and s["first"] == pytest.approx(0.7)
    assert s["within_block"] == pytest.approx([(0.9 + 0.8 + 0.7 + 0.5 + 0.5) / 5, (0.1 + 0.2 + 0.3 + 0.5 + 0.5) / 5])
    assert "within_block" not in summary(p, written, block_size=1)


def test_the_readme_multiplier_cell_says_never_for_a_flat_or_falling_fit():
    """bench/tables.py's compute-multiplier cell: the power law's value and band, the line's value; "never" where
    more compute does not help the fit or its crossing lies past float range (SSD-LM's flat MAUVE), "-" unfitted."""
    import tables

    def fit(multiplier, helps=True):  # as bench/scaling.py writes it: reached = helps and a finite multiplier
        return {"multiplier": multiplier, "band": [1.5, 3.25], "helps": helps,
                "reached": helps and math.isfinite(multiplier)}

    d = {"multipliers": {"a": {"mauve": {"log": fit(2.44), "linear": fit(22.2)}},
                         "flat": {"mauve": {"log": fit(math.inf), "linear": fit(math.inf)}},
                         "worse": {"mauve": {"log": fit(None, helps=False), "linear": fit(None, helps=False)}}}}
    assert tables._multiplier_cell(d, "a") == "2.4x (1.5-3.2); 22x"
    assert tables._multiplier_cell(d, "flat") == "never; never"
    assert tables._multiplier_cell(d, "worse") == "never; never"
    assert tables._multiplier_cell(d, "unfitted") == "-"


def test_a_bad_setting_ends_the_script_with_one_line_not_a_traceback(monkeypatch, capsys, tmp_path):
    """bench/scaling.py turns the library's UserError (e.g. fewer --samples than MAUVE's buckets, raised before any
    training) into exit code 2 and one line on stderr."""
    from textldm.errors import UserError

    def bad(args):
        raise UserError("MAUVE needs more samples than buckets: 50 samples, num_buckets=50")

    monkeypatch.setattr(scaling, "cmd_fit", bad)
    assert scaling.main(["fit", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bench/scaling.py: error: MAUVE needs more samples than buckets: 50 samples, num_buckets=50"
