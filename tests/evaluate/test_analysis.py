from __future__ import annotations

import numpy as np
import pytest

from medsamkit.errors import InputError
from medsamkit.evaluate import auroc, bootstrap_mean, compare_protocols, paired_bootstrap, spearman, summarize
from medsamkit.evaluate.analysis import format_interval, seed_image_bootstrap, verdict


def test_auroc_by_hand():
    # positives score 0.35 and 0.8; negatives 0.1 and 0.4: pairs (pos > neg) = 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3/4
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert auroc([1, 1], [True, False]) == pytest.approx(0.5)  # a tie counts half
    assert auroc([0.2, 0.3], [True, True]) is None


def test_spearman_leaves_out_undefined_values_and_counts_them():
    x = [1, 2, 3, 4, float("nan"), 6]
    y = [10, 20, 30, 40, 50, 5]
    r = spearman(x, y)
    assert r["n"] == 5 and r["n_undefined"] == 1
    assert r["rho"] == pytest.approx(0.0)
    assert spearman([1, 1, 1], [1, 2, 3])["rho"] is None  # constant side


def row(case, protocol, step, dice, **kw):
    base = {
        "dataset": "d",
        "case": case,
        "label": 1,
        "slice": -1,
        "modality": "US",
        "protocol": protocol,
        "step": step,
        "status": "ok",
        "dice": dice,
        "iou": dice,
        "nsd": dice,
        "hd95": 1.0,
        "assd": 1.0,
        "predicted_iou": 0.9,
        "time_s": 0.01,
        "encode_s": 0.5,
        "empty_pred": False,
        "size": 100.0,
    }
    return {**base, **kw}


def test_summary_tables_curves_and_uncertainty():
    rows = [
        row("a", "box", 0, 0.9, size=400.0),
        row("b", "box", 0, 0.5, size=100.0),
        row("c", "box", 0, 0.8, size=300.0),
        row("a", "iterative:1:farthest-error", 0, 0.2),
        row("a", "iterative:1:farthest-error", 1, 0.6),
        row("a", "uncertainty:4:0.1", 0, 0.9, uncertainty=0.01),
        row("b", "uncertainty:4:0.1", 0, 0.6, uncertainty=0.2),
        row("c", "uncertainty:4:0.1", 0, 0.85, uncertainty=0.05),
        {"dataset": "d", "case": "e", "label": 0, "slice": -1, "protocol": "*", "step": 0, "status": "error", "error": "X"},
    ]
    s = summarize(rows, ["box", "iterative:1:farthest-error", "uncertainty:4:0.1"])
    box = next(e for e in s["table"] if e["dataset"] == "all" and e["protocol"] == "box")
    assert box["n"] == 3 and box["dice"]["mean"] == pytest.approx((0.9 + 0.5 + 0.8) / 3, abs=1e-4)
    assert box["failures"] == 1
    assert s["dice_vs_clicks"]["d"]["iterative:1:farthest-error"] == [0.2, 0.6]
    corr = next(c for c in s["correlations"] if c["dataset"] == "all" and c["protocol"] == "box")
    assert corr["spearman_with_dice"]["size"]["rho"] == pytest.approx(1.0)
    u = s["uncertainty"][0]
    assert u["auroc_own_dice"] == pytest.approx(1.0) and u["auroc_box_dice"] == pytest.approx(1.0)
    assert s["errors"] == 1 and s["error_examples"][0]["error"] == "X"
    assert not any(isinstance(v, float) and np.isnan(v) for e in s["table"] for v in e["dice"].values())


def test_summary_intervals_resample_pictures_not_objects():
    # picture "a" holds three objects at 0.9, picture "b" one at 0.1: drawing pictures, a resample's mean is 0.7, 0.9
    # or 0.1, so the interval reaches both ends; drawing the 4 objects as independent would give a narrower one
    rows = [row("a", "box", 0, 0.9, label=k) for k in (1, 2, 3)] + [row("b", "box", 0, 0.1)]
    cell = next(e for e in summarize(rows, ["box"])["table"] if e["dataset"] == "all")
    assert cell["dice"]["units"] == 2 and cell["dice"]["interval95"] == pytest.approx([0.1, 0.9])
    assert cell["dice"]["interval95"][0] < cell["dice"]["mean"] - cell["dice"]["ci95"]
    # a picture is (dataset, case): the same case id in two datasets is two pictures
    other = [row("a", "box", 0, 0.5, dataset="e")]
    assert next(e for e in summarize(rows + other, ["box"])["table"] if e["dataset"] == "all")["dice"]["units"] == 3


def test_compare_protocols_pairs_objects_and_words_the_interval():
    # dataset d: the point protocol loses 0.5 on every object of 4 pictures; dataset e: the same Dice on 3 pictures
    rows = [row(c, "box", 0, 0.9) for c in "abcd"] + [row(c, "point", 0, 0.4) for c in "abcd"]
    rows += [row(c, "box", 0, 0.8, dataset="e") for c in "xyz"] + [row(c, "point", 0, 0.8, dataset="e") for c in "xyz"]
    rows += [row("w", "box", 0, 0.7, dataset="e")]  # no point row: left out, counted
    rows += [row("v", "box", 0, 0.1, dataset="e"), row("v", "point", 0, 0.9, dataset="e", status="error")]
    out = {e["dataset"]: e for e in compare_protocols(rows, ("box", 0), ("point", 0))}
    assert list(out) == ["d", "e", "all"]
    assert out["d"]["difference"]["mean"] == pytest.approx(-0.5) and out["d"]["verdict"] == "worse"
    assert out["e"]["difference"]["mean"] == pytest.approx(0.0) and out["e"]["verdict"] == "no difference shown"
    assert (out["e"]["n"], out["e"]["unpaired"], out["all"]["units"]) == (3, 2, 7)
    assert out["all"]["difference"]["mean"] == pytest.approx(-0.5 * 4 / 7, abs=1e-4)
    assert compare_protocols(rows, ("point", 0), ("box", 0))[0]["verdict"] == "better"
    with pytest.raises(InputError, match="no object has both"):
        compare_protocols(rows, ("box", 0), ("box", 3))
    with pytest.raises(InputError, match="with itself"):
        compare_protocols(rows, ("box", 0), ("box", 0))


def test_bootstrap_interval_contains_the_mean_and_is_seeded():
    x = np.random.default_rng(3).random(200)
    ci = bootstrap_mean(x)
    assert ci.mean == pytest.approx(x.mean()) and ci.low < ci.mean < ci.high
    assert (ci.n, ci.units, ci.resamples, ci.level) == (200, 200, 10_000, 0.95)
    # the percentile bootstrap by hand: 10,000 means of resamples drawn by default_rng(seed).integers(0, n, (R, n))
    idx = np.random.default_rng(0).integers(0, 200, size=(10_000, 200))
    assert (ci.low, ci.high) == pytest.approx(tuple(np.percentile(x[idx].mean(axis=1), [2.5, 97.5])))
    assert bootstrap_mean(x) == ci and bootstrap_mean(x, seed=1) != ci
    assert bootstrap_mean(x, level=0.5).high < ci.high  # a narrower level, a narrower interval
    assert bootstrap_mean([0.7, 0.7, 0.7]).low == bootstrap_mean([0.7, 0.7, 0.7]).high == pytest.approx(0.7)


def test_bootstrap_over_units_and_strata():
    # image "a" holds three objects, "b" one: a unit's objects are drawn together, so the pooled mean of any resample
    # is either (3 * 0.9 + 0.1) / 4 (both images), 0.9 (only a) or 0.1 (only b)
    values, units = [0.9, 0.9, 0.9, 0.1], ["a", "a", "a", "b"]
    ci = bootstrap_mean(values, units)
    assert ci.units == 2 and ci.mean == pytest.approx(0.7)
    assert ci.low == pytest.approx(0.1) and ci.high == pytest.approx(0.9)
    # strata: the mean of the strata's means (0.9 and 0.1 -> 0.5), units resampled within each stratum
    strat = bootstrap_mean(values, units, strata=["s", "s", "s", "t"])
    assert strat.mean == pytest.approx(0.5) and strat.low == strat.high == pytest.approx(0.5)  # one unit per stratum
    with pytest.raises(InputError, match="lies in two strata"):
        bootstrap_mean(values, units, strata=["s", "s", "t", "t"])
    with pytest.raises(InputError, match="3 units for 4 values"):
        bootstrap_mean(values, units[:3])
    with pytest.raises(InputError, match="no values"):
        bootstrap_mean([])
    with pytest.raises(InputError, match="finite"):
        bootstrap_mean([0.1, float("nan")])


def test_paired_bootstrap_of_differences():
    rng = np.random.default_rng(5)
    a = rng.random(100)
    same = paired_bootstrap(a, a)
    assert same.mean == same.low == same.high == 0.0
    better = paired_bootstrap(a, a + 0.05 + rng.normal(0, 0.01, 100))
    assert better.low > 0 and better.mean == pytest.approx(0.05, abs=0.005)
    assert paired_bootstrap(a, a + 0.1).mean == pytest.approx(0.1)
    with pytest.raises(InputError, match="pairs need one of each"):
        paired_bootstrap(a, a[:-1])


def test_seed_image_bootstrap_draws_seeds_and_images():
    rng = np.random.default_rng(7)
    x = rng.random(60)
    one = seed_image_bootstrap(x[None])  # one seed: the bootstrap over images
    plain = bootstrap_mean(x)
    assert one.mean == pytest.approx(x.mean()) and (one.n, one.units) == (60, 60)
    assert one.low == pytest.approx(plain.low, abs=0.01) and one.high == pytest.approx(plain.high, abs=0.01)
    # three seeds that differ by a constant offset: drawing seeds widens the interval beyond the images' spread
    seeds = np.stack([x, x + 0.1, x + 0.2])
    ci = seed_image_bootstrap(seeds)
    assert ci.mean == pytest.approx(x.mean() + 0.1) and (ci.n, ci.units) == (180, 60)
    assert ci.high - ci.low > (plain.high - plain.low) + 0.05
    # every seed equal to x: the seeds add nothing (the same draws of images give the same means as one seed)
    assert seed_image_bootstrap(np.stack([x, x, x])).high - seed_image_bootstrap(np.stack([x, x, x])).low == (
        pytest.approx(one.high - one.low, abs=0.01)
    )
    assert seed_image_bootstrap(np.full((2, 5), 0.4)).low == pytest.approx(0.4)


def test_seed_image_bootstrap_pairs_images_across_arms():
    x = np.random.default_rng(8).random((1, 40))
    d = seed_image_bootstrap(x, x + 0.05)  # the same images, shifted: a paired interval has no width
    assert d.mean == pytest.approx(0.05) and d.low == pytest.approx(0.05) and d.high == pytest.approx(0.05)
    assert verdict(d) == "better" and verdict(d, higher_is_better=False) == "worse"
    assert verdict(seed_image_bootstrap(x + 0.05, x)) == "worse"
    # each arm draws its own seeds: two arms with identical rows and the same per-seed offsets still differ from
    # resample to resample (shared seed draws would cancel exactly and give an interval of no width)
    offsets = np.array([[0.0], [0.1], [0.2]])
    both = seed_image_bootstrap(x + offsets, x + offsets)
    assert both.mean == pytest.approx(0.0) and both.low < -0.02 and both.high > 0.02
    noisy = seed_image_bootstrap(x, x[:, ::-1])  # the same values on other images: no difference on average
    assert noisy.low < 0 < noisy.high and verdict(noisy) == "no difference shown"
    assert format_interval(d, signed=True) == "+0.050 [+0.050, +0.050]"
    assert format_interval(seed_image_bootstrap(np.full((1, 3), 0.25)), digits=2) == "0.25 [0.25, 0.25]"
    with pytest.raises(InputError, match=r"arms on \[40, 39\] images"):
        seed_image_bootstrap(x, x[:, :39])
    with pytest.raises(InputError, match="finite"):
        seed_image_bootstrap([[0.1, float("nan")]])
    with pytest.raises(InputError, match=r"\(seeds, images\)"):
        seed_image_bootstrap(np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="resamples"):
        seed_image_bootstrap(x, resamples=0)
