from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsamkit.data import load_case, load_dataset
from medsamkit.evaluate import EvalConfig, evaluate_case, load_masks, read_rows, run_evaluation
from tests.conftest import DATA, disk_image, requires_shared


def two_disks(seed: int) -> tuple[np.ndarray, np.ndarray]:
    img, m1 = disk_image(96, 128, 40, 45, 18, seed=seed)
    _, m2 = disk_image(96, 128, 95, 50, 14, seed=seed)
    img[m2] = 170
    mask = np.zeros(img.shape, np.uint8)
    mask[m1] = 1
    mask[m2] = 2
    return img, mask


@pytest.fixture
def folder_2d(tmp_path: Path) -> Path:
    root = tmp_path / "disks"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        img, mask = two_disks(i)
        Image.fromarray(img).save(root / "images" / f"case{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.fromarray(np.zeros((96, 128), np.uint8)).save(root / "masks" / "broken.png")
    (root / "labels.json").write_text(json.dumps({"1": "big", "2": "small"}))
    return root


PROTOCOLS = ["box", "box-jitter:0.1", "iterative:2:random-error:start=box"]


def test_run_writes_rows_summary_report_and_resumes(folder_2d, tmp_path, predictor):
    out = tmp_path / "run"
    run = run_evaluation([folder_2d], out, PROTOCOLS, predictor=predictor, progress=False)
    rows = read_rows(out / "results.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    # 2 cases x 2 objects x (1 + 1 + 3 steps)
    assert len(ok) == 2 * 2 * 5
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == 1 and errors[0]["case"] == "broken" and "broken.png" in errors[0]["error"]
    assert {r["label_name"] for r in ok} == {"big", "small"}
    box = [r for r in ok if r["protocol"] == "box"]
    assert min(r["dice"] for r in box) > 0.85, [r["dice"] for r in box]
    assert {r["step"] for r in ok if r["protocol"].startswith("iterative")} == {0, 1, 2}
    # every row carries metrics, attributes and the prompt it was made from
    for r in ok:
        assert 0 <= r["dice"] <= 1 and r["hd95"] >= 0 and r["size_px"] > 0 and json.loads(r["prompt"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 1 and summary["objects"] == 4
    assert summary["conventions"]["dice_iou"].startswith("both empty")
    assert "iterative:2:random-error:start=box" in summary["dice_vs_clicks"]["all"]
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64") >= 4 and "Worst cases" in report and "broken" in report
    masks = load_masks(out / "masks" / "disks" / "case0.npz")
    assert masks["1/-1/box/0"].shape == (96, 128) and masks["1/-1/box/0"].dtype == bool
    assert run.computed == 3

    # a second run skips the finished cases and retries only the failed one
    again = run_evaluation([folder_2d], out, PROTOCOLS, predictor=predictor, progress=False, report=False)
    assert (again.computed, again.skipped) == (1, 2)
    assert sorted(map(json.dumps, again.rows), key=str) == sorted(map(json.dumps, run.rows), key=str)

    # an added protocol is computed alone; the earlier rows are kept as they were
    more = run_evaluation([folder_2d], out, [*PROTOCOLS, "box-shift:5"], predictor=predictor, progress=False, report=False)
    assert more.computed == 3
    assert len([r for r in more.rows if r["protocol"] == "box-shift:5"]) == 4
    assert [r for r in more.rows if r["protocol"] == "box-jitter:0.1"] == [
        r for r in run.rows if r["protocol"] == "box-jitter:0.1"
    ]
    with open(out / "results.csv") as f:
        assert sum(1 for _ in csv.DictReader(f)) == len(more.rows)

    # other settings into the same folder are refused
    with pytest.raises(ValueError, match="other settings.*seed"):
        run_evaluation([folder_2d], out, PROTOCOLS, predictor=predictor, config=EvalConfig(seed=1), progress=False)


def test_protocols_are_seeded_and_recorded(folder_2d, predictor):
    ds = load_dataset(folder_2d)
    protos = ["box-jitter:0.2", "points:2+1", "iterative:3:random-error:start=box"]
    a = evaluate_case(ds["case0"], protos, predictor, EvalConfig(seed=7)).rows
    b = evaluate_case(ds["case0"], protos, predictor, EvalConfig(seed=7)).rows
    c = evaluate_case(ds["case0"], protos, predictor, EvalConfig(seed=8)).rows
    key = [(r["label"], r["protocol"], r["step"]) for r in a]
    assert key == [(r["label"], r["protocol"], r["step"]) for r in b]
    assert [(r["prompt"], r["dice"], r["seed"]) for r in a] == [(r["prompt"], r["dice"], r["seed"]) for r in b]
    assert [r["prompt"] for r in a] != [r["prompt"] for r in c]
    # the seed depends on the object and protocol, not on what else is evaluated
    alone = evaluate_case(ds["case0"], ["box-jitter:0.2"], predictor, EvalConfig(seed=7)).rows
    assert [r["prompt"] for r in alone] == [r["prompt"] for r in a if r["protocol"] == "box-jitter:0.2"]
    # iterative clicks accumulate: step k carries the box and k clicks
    it = [(r["step"], json.loads(r["prompt"])) for r in a if r["protocol"].startswith("iterative")]
    assert len(it) == 2 * 4
    for step, prompt in it:
        assert len(prompt["boxes"]) == 1
        assert len(prompt["points"]) == step or prompt.get("converged")


def test_bad_protocol_for_an_object_is_an_error_row_not_a_crash(tmp_path, predictor):
    root = tmp_path / "full"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    img, _ = disk_image(64, 64, 32, 32, 10)
    Image.fromarray(img).save(root / "images" / "a.png")
    Image.fromarray(np.ones((64, 64), np.uint8)).save(root / "masks" / "a.png")  # object fills the image
    rows = evaluate_case(load_dataset(root)["a"], ["box", "points:1+2"], predictor).rows
    by = {r["protocol"]: r for r in rows}
    assert by["box"]["status"] == "ok"
    assert by["points:1+2"]["status"] == "invalid" and "no background" in by["points:1+2"]["error"]


@pytest.fixture
def volume_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "vol"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:6, 0:64, 0:64]
    ball = ((x - 30) / 14) ** 2 + ((y - 34) / 12) ** 2 + ((z - 2.5) / 2.6) ** 2 <= 1
    vol = rng.normal(100, 10, ball.shape)
    vol[ball] = 400 + rng.normal(0, 10, int(ball.sum()))
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    # NIfTI arrays are (x, y, z): medsamkit reads them as (z, y, x)
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0).astype(np.int16), affine), root / "images" / "v.nii.gz")
    nib.save(nib.Nifti1Image(ball.transpose(2, 1, 0).astype(np.uint8), affine), root / "masks" / "v.nii.gz")
    return root


def test_volumes_per_slice_and_as_volumes(volume_dataset, predictor):
    case = load_dataset(volume_dataset)["v"]
    res = evaluate_case(case, ["box"], predictor, EvalConfig(mode="slices", min_slice_pixels=20))
    rows = res.rows
    assert all(r["status"] == "ok" and r["mode"] == "slice" for r in rows), rows
    _, mask = load_case(case)
    expected = [int(s) for s in np.flatnonzero(mask.sum(axis=(1, 2)) >= 20)]
    assert [r["slice"] for r in rows] == expected
    counts = mask.sum(axis=(1, 2))
    assert res.notes["slices"]["1"] == {
        "evaluated": len(expected),
        "empty_in_extent": 0,
        "below_min_pixels": int(((counts > 0) & (counts < 20)).sum()),
    }
    assert all(r["spacing"] == "0.8,0.8" for r in rows)
    assert np.median([r["dice"] for r in rows]) > 0.8  # the tiny end caps of the ball are harder
    vol = evaluate_case(case, ["box", "box-jitter:0.1"], predictor, EvalConfig(mode="volume")).rows
    assert [r["mode"] for r in vol] == ["volume", "volume"] and all(r["status"] == "ok" for r in vol)
    assert vol[0]["dice"] > 0.8 and vol[0]["spacing"] == "3,0.8,0.8"
    bad = evaluate_case(case, ["iterative:2:farthest-error"], predictor, EvalConfig(mode="volume")).rows
    assert bad[0]["status"] == "invalid" and "volume mode" in bad[0]["error"]  # final, not retried


@requires_shared
def test_cli_evaluate_on_real_data(tmp_path):
    from medsamkit.cli.main import main

    out = tmp_path / "busi"
    code = main(
        [
            "evaluate",
            str(DATA / "busi_breast_us"),
            "--limit",
            "2",
            "--prompt",
            "box",
            "--prompt",
            "iterative:2:farthest-error:start=box",
            "--modality",
            "US",
            "-o",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    rows = read_rows(out / "results.csv")
    assert len(rows) == 2 * (1 + 3) and all(r["status"] == "ok" and r["modality"] == "US" for r in rows)
    assert np.mean([r["dice"] for r in rows if r["protocol"] == "box"]) > 0.8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["settings"]["model"] == "litemedsam" and summary["protocols"][0] == "box"
    html = (out / "report.html").read_text()
    assert "Dice vs correction clicks" in html and "Worst cases" in html
    assert main(["evaluate", str(DATA / "busi_breast_us"), "--prompt", "lasso", "-o", str(out)]) == 2


def test_a_case_failing_part_way_is_redone_whole(folder_2d, tmp_path, predictor, monkeypatch):
    import medsamkit.evaluate.runner as runner

    real = runner._add_steps

    def flaky(result, base, *args, **kwargs):
        if base["label"] == 2:
            raise RuntimeError("worker lost")
        return real(result, base, *args, **kwargs)

    ds = load_dataset(folder_2d).subset(ids=["case0"])
    out = tmp_path / "run"
    monkeypatch.setattr(runner, "_add_steps", flaky)
    first = run_evaluation([ds], out, ["box"], predictor=predictor, progress=False, report=False)
    assert [(r["protocol"], r["status"]) for r in first.rows] == [("*", "error")]  # no partial rows kept
    monkeypatch.setattr(runner, "_add_steps", real)
    second = run_evaluation([ds], out, ["point:centre"], predictor=predictor, progress=False, report=False)
    assert {(r["protocol"], r["label"]) for r in second.rows} == {("point:centre", 1), ("point:centre", 2)}
    third = run_evaluation([ds], out, ["box", "point:centre"], predictor=predictor, progress=False, report=False)
    assert {(r["protocol"], r["label"]) for r in third.rows if r["status"] == "ok"} == {
        ("box", 1),
        ("box", 2),
        ("point:centre", 1),
        ("point:centre", 2),
    }
    # other inputs (here: the modality) are never served from stored rows
    tagged = load_dataset(folder_2d, modality="US").subset(ids=["case0"])
    fourth = run_evaluation([tagged], out, ["box"], predictor=predictor, progress=False, report=False)
    assert fourth.computed == 1 and {r["modality"] for r in fourth.rows} == {"US"}
    with pytest.raises(ValueError, match="several datasets are named"):
        run_evaluation([ds, ds], out, ["box"], predictor=predictor, progress=False)


def test_report_with_only_error_rows(tmp_path):
    from medsamkit.evaluate import summarize
    from medsamkit.evaluate.report import write_report

    rows = [{"dataset": "d", "case": "x", "label": 0, "slice": -1, "protocol": "*", "step": 0, "status": "error", "error": "bad"}]
    path = write_report(tmp_path, rows, summarize(rows, ["box"]))
    text = path.read_text()
    assert "Errors" in text and "bad" in text and "<img" not in text


def test_cli_no_report_and_modality(folder_2d, tmp_path):
    from medsamkit.cli.main import main

    out = tmp_path / "r"
    args = ["evaluate", str(folder_2d), "--limit", "1", "--modality", "mri", "--no-report", "-o", str(out), "-q"]
    assert main(args) == 3  # the fixture's broken case fails (exit 3: finished, with failed rows)
    assert not (out / "report.html").exists() and (out / "results.csv").exists()
    assert {r["modality"] for r in read_rows(out / "results.csv")} == {"MR"}
    assert main(["evaluate", str(folder_2d), "--modality", "banana", "-o", str(tmp_path / "b"), "-q"]) == 2


def test_evaluate_exit_status_says_when_cases_failed(tmp_path, capsys):
    """Every case failing used to exit 0; now any failed case is exit 3 (the finished rows are kept)."""
    from medsamkit.cli.main import main

    root = tmp_path / "bad"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        (root / "images" / f"c{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        Image.fromarray(np.ones((16, 16), np.uint8)).save(root / "masks" / f"c{i}.png")
    code = main(["evaluate", str(root), "-o", str(tmp_path / "run"), "-q", "--no-report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and "2 result row(s) failed" in err[-1] and "bad/c0" in err[-1] and "Traceback" not in "".join(err)
    assert (tmp_path / "run" / "results.csv").is_file()


def test_report_gives_the_nsd_tolerance_in_the_unit_of_the_data(folder_2d, tmp_path, predictor):
    """PNG data have no physical spacing: the tolerance is in pixels there (it used to say mm)."""
    from medsamkit.evaluate.report import _tolerance

    out = tmp_path / "run"
    run_evaluation([folder_2d], out, ["box"], predictor=predictor, progress=False)
    rows = [r for r in read_rows(out / "results.csv") if r["status"] == "ok"]
    assert rows and {r["spacing_unit"] for r in rows} == {"px"}
    text = (out / "report.html").read_text()
    assert "NSD tolerance 2.0 pixels (the images have no physical spacing)" in text and "2.0 mm" not in text
    assert _tolerance(2.0, [{"spacing_unit": "mm"}]) == "2.0 mm"
    assert "1 of 2 rows" in _tolerance(2.0, [{"spacing_unit": "mm"}, {"spacing_unit": "px"}])


# ------------------------------------------------------------------------------- segmenters and object selection


class Bright:
    """A segmenter: foreground where the picture is brighter than ``level`` (records the pictures it sees)."""

    def __init__(self, level: int = 128) -> None:
        self.level = level
        self.seen: list[tuple[int, ...]] = []

    def segment(self, picture: np.ndarray) -> np.ndarray:
        self.seen.append(picture.shape)
        return np.asarray(picture) > self.level


def test_a_segmenter_is_scored_against_the_union_of_the_targets(folder_2d):
    from medsamkit.evaluate import AUTO, Segmenter
    from medsamkit.metrics import dice, iou

    case = load_dataset(folder_2d)["case0"]
    seg = Bright()
    assert isinstance(seg, Segmenter)
    res = evaluate_case(case, [AUTO], seg, EvalConfig(objects="union"))
    (row,) = res.rows
    image, mask = load_case(case)
    pred, gt = image.array > 128, mask > 0
    assert row["protocol"] == "auto" and row["status"] == "ok" and row["label"] == -1 and row["step"] == 0
    assert row["dice"] == dice(pred, gt) and row["iou"] == iou(pred, gt) and row["size_px"] == gt.sum()
    assert row["prompt"] == "{}" and row["predicted_iou"] is None and row["encode_s"] is None
    assert np.array_equal(res.masks["-1/-1/auto/0"], pred) and seg.seen == [(96, 128)]  # one picture, segmented once
    # one label: its mask is the target, the row carries the label
    (one,) = evaluate_case(case, ["auto"], seg, EvalConfig(objects="union", label=2)).rows
    assert one["label"] == 2 and one["dice"] == dice(pred, mask == 2)
    # per label: the one mask against each label
    per_label = evaluate_case(case, ["auto"], seg, EvalConfig()).rows
    assert [r["label"] for r in per_label] == [1, 2] and per_label[1]["dice"] == dice(pred, mask == 2)
    assert len(seg.seen) == 3


def test_segmenters_and_predictors_take_their_own_protocols(folder_2d, predictor):
    case = load_dataset(folder_2d)["case0"]
    with pytest.raises(ValueError, match="segmenter takes no prompt"):
        evaluate_case(case, ["auto", "box"], Bright())
    with pytest.raises(ValueError, match="for segmenters"):
        evaluate_case(case, ["auto"], predictor)


def test_objects_as_components_label_filter_and_min_pixels(tmp_path):
    root = tmp_path / "parts"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((40, 60), np.uint8)
    mask[25:35, 5:15] = 1  # lower left: second in raster order
    mask[5:15, 40:50] = 1  # upper right: first in raster order, and larger than ...
    mask[2:4, 2:4] = 1  # ... this 4-pixel speck, the very first
    mask[20:30, 30:45] = 2
    image = np.where(mask > 0, 200, 30).astype(np.uint8)
    Image.fromarray(image).save(root / "images" / "a.png")
    Image.fromarray(mask).save(root / "masks" / "a.png")
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(root / "images" / "empty.png")
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(root / "masks" / "empty.png")
    ds = load_dataset(root)
    rows = evaluate_case(ds["a"], ["auto"], Bright(), EvalConfig(objects="component")).rows
    assert [(r["label"], r["size_px"]) for r in rows] == [(1, 4), (1, 100), (1, 100), (2, 150)]
    rows = evaluate_case(ds["a"], ["auto"], Bright(), EvalConfig(objects="component", min_pixels=5, label=1)).rows
    assert [(r["label"], r["size_px"]) for r in rows] == [(1, 100), (1, 100)]
    assert rows[0]["seed"] != rows[1]["seed"]  # each component draws from its own generator
    # a case without any target: an error row, or nothing to score; with min_pixels=0 the union is scored
    (err,) = evaluate_case(ds["empty"], ["auto"], Bright(), EvalConfig(objects="union")).rows
    assert err["status"] == "error" and "no labelled object" in err["error"]
    assert evaluate_case(ds["empty"], ["auto"], Bright(), EvalConfig(objects="union"), errors="raise").rows == []
    (scored,) = evaluate_case(ds["empty"], ["auto"], Bright(), EvalConfig(objects="union", min_pixels=0)).rows
    assert scored["status"] == "ok" and scored["dice"] == 1.0 and scored["size_px"] == 0  # both empty
    with pytest.raises(ValueError, match="objects must be"):
        EvalConfig(objects="instance")
    with pytest.raises(ValueError, match="volume mode"):
        EvalConfig(mode="volume", objects="union")


def test_errors_raise_instead_of_rows(folder_2d):
    ds = load_dataset(folder_2d)
    (row,) = evaluate_case(ds["broken"], ["auto"], Bright(), EvalConfig(objects="union")).rows
    assert row["status"] == "error" and row["protocol"] == "*"
    with pytest.raises(ValueError, match="broken.png"):
        evaluate_case(ds["broken"], ["auto"], Bright(), EvalConfig(objects="union"), errors="raise")
    with pytest.raises(ValueError, match="errors must be"):
        evaluate_case(ds["case0"], ["auto"], Bright(), errors="ignore")


def test_segmenters_on_slices_a_few_per_case_or_refused(volume_dataset):
    case = load_dataset(volume_dataset)["v"]
    _, mask = load_case(case)
    seg = Bright(level=200)
    cfg = EvalConfig(objects="union", min_slice_pixels=20)
    rows = evaluate_case(case, ["auto"], seg, cfg).rows
    expected = [int(z) for z in np.flatnonzero(mask.sum(axis=(1, 2)) >= 20)]
    assert [r["slice"] for r in rows] == expected and all(r["mode"] == "slice" and r["label"] == -1 for r in rows)
    assert len(seg.seen) == len(expected) and all(r["dice"] > 0.9 for r in rows)
    few = evaluate_case(case, ["auto"], seg, EvalConfig(objects="union", min_slice_pixels=20, slices_per_case=2)).rows
    assert [r["slice"] for r in few] == [expected[0], expected[-1]]  # evenly spaced: the first and the last

    class Flat(Bright):
        slices = False  # a model of 2D images only

    (row,) = evaluate_case(case, ["auto"], Flat(), cfg).rows
    assert row["status"] == "error" and "takes 2D images" in row["error"]
    with pytest.raises(ValueError, match="takes 2D images"):
        evaluate_case(case, ["auto"], Flat(), cfg, errors="raise")
    (vol,) = evaluate_case(case, ["auto"], seg, EvalConfig(mode="volume")).rows
    assert vol["status"] == "error" and "slice by slice" in vol["error"]


def test_run_evaluation_with_a_segmenter(folder_2d, tmp_path):
    out = tmp_path / "auto"
    cfg = EvalConfig(objects="union")
    run = run_evaluation([folder_2d], out, ["auto"], model="bright", predictor=Bright(), config=cfg, progress=False)
    rows = read_rows(out / "results.csv")
    assert [(r["case"], r["protocol"], r["status"]) for r in rows] == [
        ("broken", "*", "error"),
        ("case0", "auto", "ok"),
        ("case1", "auto", "ok"),
    ]
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["model"] == "bright" and settings["objects"] == "union" and "min_pixels" not in settings
    assert (out / "report.html").is_file() and run.summary["objects"] == 2
    again = run_evaluation([folder_2d], out, ["auto"], model="bright", predictor=Bright(), config=cfg, progress=False)
    assert (again.computed, again.skipped) == (1, 2)
    with pytest.raises(ValueError, match="other settings.*objects"):
        run_evaluation([folder_2d], out, ["auto"], model="bright", predictor=Bright(), progress=False)
