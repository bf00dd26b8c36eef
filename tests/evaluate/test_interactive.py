from __future__ import annotations

import pytest

from medsamkit.errors import InputError, OptionError
from medsamkit.evaluate import (
    NSD_MIN_DICE,
    challenge_nsd,
    interactive_auc,
    interactive_record,
    interactive_records,
    run_evaluation,
    summarize,
)
from medsamkit.evaluate.report import write_report
from tests.conftest import DATA, requires_shared

BOX5 = "iterative:5:farthest-error:start=box:mask"


def test_auc_of_known_curves():
    assert interactive_auc([1.0] * 5) == pytest.approx(4.0)  # the challenge's maximum: 5 click steps, unit spacing
    assert interactive_auc([0.0] * 5) == 0.0
    assert interactive_auc([0.0, 0.25, 0.5, 0.75, 1.0]) == pytest.approx(2.0)  # a ramp: a triangle of base 4, height 1
    assert interactive_auc([0.2, 0.6]) == pytest.approx(0.4)
    # trapezoid, not the sum of the values: the end points count half
    assert interactive_auc([1.0, 0.0, 0.0, 0.0, 1.0]) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [[], [0.5], [0.1, float("nan")], [0.1, float("inf")], ["x", 0.2]])
def test_auc_refuses_what_has_no_area(bad):
    with pytest.raises(InputError, match="interactive_auc"):
        interactive_auc(bad)


def test_challenge_nsd_is_zero_where_dice_is_at_most_the_threshold():
    assert NSD_MIN_DICE == 0.2
    assert challenge_nsd([0.1, 0.2, 0.21, 0.9], [0.5, 0.6, 0.7, 0.8]) == [0.0, 0.0, 0.7, 0.8]
    with pytest.raises(InputError, match="2 Dice values but 1 NSD"):
        challenge_nsd([0.1, 0.2], [0.5])


def test_record_excludes_the_initial_prompt_and_zeroes_nsd():
    dice = [0.9, 0.1, 0.3, 0.5, 0.7, 0.8]
    nsd = [0.95, 0.4, 0.4, 0.6, 0.8, 0.9]
    rec = interactive_record(dice, nsd, dataset="d", case="c", label=2)
    assert rec.nsd_challenge == (0.95, 0.0, 0.4, 0.6, 0.8, 0.9)  # click 1 has Dice 0.1 <= 0.2
    assert rec.dsc_auc == pytest.approx(interactive_auc([0.1, 0.3, 0.5, 0.7, 0.8]))  # step 0 (the box) left out
    assert rec.dsc_auc == pytest.approx(0.2 + 0.4 + 0.6 + 0.75)
    assert rec.nsd_auc == pytest.approx(0.2 + 0.5 + 0.7 + 0.85)
    assert (rec.dsc_final, rec.nsd_final) == (0.8, 0.9)
    low_final = interactive_record([0.9, 0.5, 0.15], [0.9, 0.6, 0.7])
    assert low_final.nsd_final == 0.0  # the final NSD follows the rule too
    assert interactive_record([0.9, 0.5], [0.9, 0.6]).dsc_auc is None  # one click: no area
    with pytest.raises(InputError, match="at least one click"):
        interactive_record([0.9], [0.9])


def row(case, protocol, step, dice, nsd=None, status="ok", **kw):
    r = {"dataset": "d", "case": case, "label": 1, "slice": -1, "modality": "US", "protocol": protocol}
    r.update(step=step, status=status, dice=dice, nsd=dice if nsd is None else nsd)
    return {**r, **kw}


def test_records_from_rows_in_step_order():
    dice_a = [0.9, 0.85, 0.8, 0.82, 0.84, 0.86]
    rows = [row("a", BOX5, s, dice_a[s]) for s in (3, 0, 5, 1, 4, 2)]  # steps out of order
    rows += [row("b", BOX5, s, 0.1 * s, nsd=0.5) for s in range(6)]
    rows += [row("a", "box", 0, 0.9), row("e", BOX5, 0, None, status="error")]  # other protocols and errors left out
    recs = interactive_records(rows)
    assert [r.case for r in recs] == ["a", "b"]
    assert recs[0].dice == tuple(dice_a) and recs[0].protocol == BOX5 and recs[0].key == ("d", "a", 1, -1)
    assert recs[1].nsd_challenge == (0.0, 0.0, 0.0, 0.5, 0.5, 0.5)  # Dice 0.0, 0.1, 0.2 zero the NSD
    assert recs[1].nsd_auc == pytest.approx(0.0 + 0.25 + 0.5 + 0.5)  # steps 1..5: 0, 0, 0.5, 0.5, 0.5
    assert interactive_records(rows, BOX5) == recs
    assert interactive_records(rows, "iterative:5:farthest-error:mask") == []


def test_records_refuse_missing_or_repeated_steps():
    rows = [row("a", BOX5, s, 0.5) for s in (0, 1, 2, 4, 5)]
    with pytest.raises(InputError, match=r"object d/a label 1 under .* lacks step\(s\) 3 \(steps 0..5 expected\)"):
        interactive_records(rows)
    with pytest.raises(InputError, match="step 2 appears twice"):
        interactive_records([row("a", BOX5, s, 0.5) for s in (0, 1, 2, 2, 3, 4, 5)])
    with pytest.raises(InputError, match=r"has step\(s\) 6 beyond 5"):
        interactive_records([row("a", BOX5, s, 0.5) for s in range(7)])
    with pytest.raises(InputError, match="has no dice value"):
        interactive_records([row("a", BOX5, s, None if s == 2 else 0.5) for s in range(6)])
    with pytest.raises(OptionError, match="not an iterative protocol"):
        interactive_records([], "box")


def test_summary_and_report_show_the_challenge_scores(tmp_path):
    rows = [row("a", "box", 0, 0.9)]
    rows += [row("a", BOX5, s, d) for s, d in enumerate([0.9, 0.1, 0.3, 0.5, 0.7, 0.8])]
    rows += [row("b", BOX5, s, 1.0) for s in range(6)]
    for r in rows:
        r.update(iou=r["dice"], hd95=1.0, assd=1.0, predicted_iou=0.9, time_s=0.01, encode_s=0.5, empty_pred=False)
    s = summarize(rows, ["box", BOX5])
    entry = next(e for e in s["interactive"] if e["dataset"] == "all")
    assert entry["protocol"] == BOX5 and entry["n"] == 2 and entry["clicks"] == 5
    assert entry["dsc_auc"]["mean"] == pytest.approx((1.95 + 4.0) / 2, abs=1e-4)
    assert entry["dice_start_mean"] == pytest.approx(0.95) and entry["dsc_final_mean"] == pytest.approx(0.9)
    assert "interactive" in s["conventions"]
    assert summarize([rows[0]], ["box"])["interactive"] == []  # no iterative protocol: nothing, no convention
    assert "interactive" not in summarize([rows[0]], ["box"])["conventions"]
    html = write_report(tmp_path, rows, s).read_text()
    assert "the CVPR 2025 challenge&#x27;s scores" in html or "the CVPR 2025 challenge's scores" in html
    assert "DSC-AUC" in html and "2.975" in html
    # rows that do not identify one object per label (components sharing a label): a note, not a crash
    twice = rows + [{**rows[-1], "step": 0}]
    s2 = summarize(twice, ["box", BOX5])
    assert s2["interactive"] == [] and "appears twice" in s2["interactive_note"]


@requires_shared
def test_a_real_run_scores_its_iterative_protocol(tmp_path, predictor):
    protocols = ["box", "iterative:2:farthest-error:start=box:mask"]
    run = run_evaluation([DATA / "busi_breast_us"], tmp_path, protocols, predictor=predictor, limit=1, progress=False)
    recs = interactive_records(run.rows)
    assert len(recs) == 1 and len(recs[0].dice) == 3
    box = next(r for r in run.rows if r["protocol"] == "box")
    assert recs[0].dice[0] == pytest.approx(box["dice"])  # step 0 of start=box is the box prompt
    entry = next(e for e in run.summary["interactive"] if e["dataset"] == "all")
    assert entry["dsc_auc"]["mean"] == pytest.approx(recs[0].dsc_auc, abs=1e-4)
    assert "Interactive protocols" in (tmp_path / "report.html").read_text()
