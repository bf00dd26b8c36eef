"""Batch jobs on a real local Dask cluster (2 worker processes x 1 thread) over real files from ../shared.

A manifest of real 2D images and a 3D MR volume plus bad rows (a missing file, a truncated NIfTI, a box
outside the image, an unparseable box): good rows are written once, bad rows fail with their reasons, a rerun
skips finished items without starting a cluster or loading a model, outputs equal the single-process
``medsamkit segment``, a worker killed mid-item loses only that item, Ctrl-C leaves a consistent ledger, and
``medsamkit evaluate --scheduler`` gives the in-process results.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsamkit.batch import BatchSummary, DaskEngine, EngineOptions, Ledger, ModelSpec, SegmentJob, run_batch
from medsamkit.cli.main import main
from medsamkit.io import read_image
from tests.conftest import DATA, box_of, requires_shared

pytestmark = [requires_shared, pytest.mark.xdist_group("dask")]

IMAGES_2D = [
    ("busi_breast_us/images/malignant_10.png", "busi_breast_us/masks/malignant_10.png", None),
    ("busi_breast_us/images/malignant_11.png", "busi_breast_us/masks/malignant_11.png", None),
    ("kvasir_seg/images/cju0sxqiclckk08551ycbwhno.jpg", "kvasir_seg/masks/cju0sxqiclckk08551ycbwhno.png", "kvasir 1/a"),
]
VOLUME = ("msd_hippocampus_mri_3d/images/hippocampus_035.nii.gz", "6,27,10,26,41,13", "hippo-035")
BAD = {  # id -> (row, fragment of the reason)
    "missing": ({"image": "nope.png", "box": "1,1,5,5"}, "image not found"),
    "truncated": ({"image": "trunc.nii.gz", "box3d": "1,1,1,5,5,5"}, "truncated or corrupt"),
    "outside": ({"image": str(DATA / IMAGES_2D[0][0]), "box": "0,0,5000,10"}, "lies outside the 462x393 image"),
    "unparseable": ({"image": str(DATA / IMAGES_2D[0][0]), "box": "a,b,c,d"}, "box: 'a,b,c,d' is not X0,Y0,X1,Y1"),
}
FIELDS = ["id", "image", "box", "box3d", "label", "ground_truth"]


def _good_rows() -> list[dict[str, str]]:
    rows = []
    for image, mask, item_id in IMAGES_2D:
        m = np.asarray(Image.open(DATA / mask)) > 0
        box = ",".join(map(str, box_of(m)))
        rows.append({"id": item_id or "", "image": str(DATA / image), "box": box, "ground_truth": str(DATA / mask)})
    rows.append({"id": VOLUME[2], "image": str(DATA / VOLUME[0]), "box3d": VOLUME[1], "label": "hippocampus"})
    return rows


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def _shared_root(tmp_path_factory) -> Path:
    """A folder every xdist worker of this session sees (the session's own base folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _exclusive(path: Path):
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


# Built once per session even when xdist workers split these tests (xdist_group does not group them with
# pytest 9): the first worker builds the files under a lock, the others wait and read them.
@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> dict:
    """The manifest (good rows first, then the bad ones) and the folder it lives in."""
    folder = _shared_root(tmp_path_factory) / "batch-cohort"
    good = _good_rows()
    with _exclusive(folder.parent / "batch-cohort.lock"):
        if not (folder / "manifest.csv").is_file():
            folder.mkdir(exist_ok=True)
            data = (DATA / "msd_hippocampus_mri_3d/images/hippocampus_039.nii.gz").read_bytes()
            (folder / "trunc.nii.gz").write_bytes(data[: len(data) // 2])  # relative in the manifest
            bad = [{"id": k, **row} for k, (row, _) in BAD.items()]
            _write_manifest(folder / "manifest.tmp", good + bad).rename(folder / "manifest.csv")
    return {"folder": folder, "good": good, "manifest": folder / "manifest.csv"}


def _spec() -> ModelSpec:
    return ModelSpec("litemedsam", threads=1)


@pytest.fixture(scope="session")
def first_run(cohort, tmp_path_factory, request) -> dict:
    """The batch over the cohort, run once; tests that run it again work on a copy of its folder."""
    root = _shared_root(tmp_path_factory) / "batch-first-run"
    out, saved = root / "out", root / "first_run.json"
    with _exclusive(root.parent / "batch-first-run.lock"):
        if not saved.is_file():
            engine = request.getfixturevalue("dask_engine")
            summary = run_batch(SegmentJob(str(out), _spec()), cohort["manifest"], engine=engine)
            with Ledger(out / "ledger.sqlite") as led:
                items = {r["id"]: r for r in led.items()}
            saved.write_text(json.dumps({"summary": summary.to_dict(), "items": items}))
    data = json.loads(saved.read_text())
    return {"out": out, "summary": BatchSummary(**data["summary"]), "items": data["items"]}


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_good_rows_are_written_once_and_bad_rows_fail_with_reasons(first_run, cohort) -> None:
    s, items, out = first_run["summary"], first_run["items"], first_run["out"]
    n_good = len(cohort["good"])
    assert (s.items, s.done, s.failed, s.pending, s.already_done) == (n_good + len(BAD), n_good, len(BAD), 0, 0)
    assert s.cluster_started and s.workers == 2 and s.model_loads == 0  # the warm-up loaded the model on each worker
    errors = {f["id"]: f["error"] for f in s.failures}
    for item_id, (_, fragment) in BAD.items():
        assert fragment in errors[item_id], errors[item_id]
        assert items[item_id]["state"] == "failed" and items[item_id]["failures"] == 1
    assert items["unparseable"]["attempts"] == 0  # rejected by the driver, never sent to a worker
    done = [r for r in items.values() if r["state"] == "done"]
    assert len(done) == n_good and all(r["attempts"] == 1 for r in done)
    records = sorted((out / "records").glob("*.json"))
    assert len(records) == n_good  # one record per good row, none for bad rows
    for path in records:
        rec = json.loads(path.read_text())
        assert items[rec["id"]]["output"] == rec["output"] and Path(rec["output"]).is_file()
        assert rec["model"]["name"] == "litemedsam" and rec["versions"]["medsamkit"] and rec["worker"]["threads"] == 1
        assert rec["timings"]["total_s"] > 0
        if rec["kind"] == "2d":
            assert rec["metrics"]["1"]["dice"] > 0.6  # scored against the ground truth given in the row
    hippo = json.loads((out / "records" / "hippo-035.json").read_text())
    assert hippo["kind"] == "volume" and Path(hippo["output"]).name == "hippo-035.nii.gz"
    assert hippo["objects"][0]["name"] == "hippocampus" and hippo["objects"][0]["slices"] == [10, 13]
    assert any(p.name.startswith("kvasir_1_a-") for p in records)  # an id with / and space, made a safe file name
    leftovers = [p for p in out.rglob("*") if p.name != ".batch.lock" and (p.name.startswith(".") or p.name.endswith(".tmp"))]
    assert not leftovers, leftovers  # every write was temp file + rename
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == n_good and len(summary["failures"]) == len(BAD)


def test_rerun_skips_finished_items_without_cluster_or_model(first_run, cohort, dask_engine, tmp_path, capsys) -> None:
    out, manifest = tmp_path / "out", cohort["manifest"]
    shutil.copytree(first_run["out"], out)  # the shared first run stays as it was
    before = _files(out / "masks") | _files(out / "records")
    fresh = DaskEngine(EngineOptions(workers=2, threads_per_worker=1))
    t0 = time.perf_counter()
    s = run_batch(SegmentJob(str(out), _spec()), manifest, engine=fresh, max_retries=0)
    assert time.perf_counter() - t0 < 10
    assert not fresh.started and not s.cluster_started and s.attempted == 0 and s.model_loads == 0
    assert (s.already_done, s.exhausted, s.done, s.failed) == (len(cohort["good"]), len(BAD), 0, 0)
    # the command says so too, and exits 3 (finished with failed items) while failed items remain
    rc = main(["batch", "segment", str(manifest), "-o", str(out), "--max-retries", "0", "--workers", "2"])
    err = capsys.readouterr().err
    assert rc == 3 and "nothing to compute" in err and "4 item(s) failed" in err
    # with retries left, only the failed rows run again; finished outputs are not touched
    s = run_batch(SegmentJob(str(out), _spec()), manifest, engine=dask_engine, max_retries=2)
    assert (s.attempted, s.done, s.failed, s.already_done) == (len(BAD), 0, len(BAD), len(cohort["good"]))
    with Ledger(out / "ledger.sqlite") as led:
        assert all(led.item(k)["failures"] == 2 for k in BAD)
        assert len(led.runs()) == 4
    assert _files(out / "masks") | _files(out / "records") == before


def test_outputs_equal_the_single_process_cli(first_run, cohort, tmp_path, capsys) -> None:
    with Ledger(first_run["out"] / "ledger.sqlite") as led:
        outputs = {json.loads(r["payload"])["image"]: r["output"] for r in led.items(state="done")}
    for row in cohort["good"]:
        cli_out = tmp_path / ("cli.nii.gz" if "box3d" in row else "cli.png")
        args = ["segment", row["image"], "-o", str(cli_out), "-q"]
        args += ["--box3d", row["box3d"], "--label", row["label"]] if "box3d" in row else ["--box", row["box"]]
        assert main(args) == 0, capsys.readouterr().err
        a, b = read_image(cli_out).array, read_image(outputs[row["image"]]).array
        assert a.shape == b.shape and a.any() and np.array_equal(a, b), row["image"]


def _ledger_row(path: Path, item_id: str) -> dict | None:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            db.row_factory = sqlite3.Row
            r = db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
            return None if r is None else dict(r)
        finally:
            db.close()
    except sqlite3.OperationalError:  # not created yet
        return None


def _wait_running(ledger: Path, item_id: str, timeout: float = 120, proc: subprocess.Popen | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended first: {proc.communicate()}")
        row = _ledger_row(ledger, item_id)
        if row is not None and row["state"] == "running" and row["worker"]:
            return row
        time.sleep(0.05)
    raise AssertionError(f"{item_id} never ran")


def test_a_killed_worker_loses_only_its_item(first_run, cohort, dask_engine, tmp_path) -> None:
    rows = [cohort["good"][3], *cohort["good"][:3]]  # the volume first: it runs longest
    manifest = _write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    result: dict = {}

    def go() -> None:
        try:
            result["summary"] = run_batch(SegmentJob(str(out), _spec()), manifest, engine=dask_engine)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    thread = threading.Thread(target=go)
    thread.start()
    try:
        running = _wait_running(out / "ledger.sqlite", VOLUME[2])
        pids = dask_engine.client.run(os.getpid)
        os.kill(pids[running["worker"]], signal.SIGKILL)  # mid-item, as a crash or the OOM killer would
    finally:
        thread.join(timeout=300)
    assert "error" not in result, result.get("error")
    s = result["summary"]
    assert (s.done, s.failed, s.pending) == (len(rows), 0, 0)
    with Ledger(out / "ledger.sqlite") as led:
        hippo = led.item(VOLUME[2])
        assert hippo["state"] == "done" and hippo["attempts"] == 2  # the lost start counts; the retry finished it
        assert all(r["state"] == "done" for r in led.items())
    first = read_image(first_run["out"] / "masks" / "hippo-035.nii.gz").array
    assert np.array_equal(read_image(out / "masks" / "hippo-035.nii.gz").array, first)
    assert len(list((out / "records").glob("*.json"))) == len(rows)
    dask_engine.client.wait_for_workers(2, timeout=120)  # the nanny restarted the killed worker


def test_ctrl_c_leaves_a_consistent_ledger(cohort, dask_engine, tmp_path) -> None:
    two_d = [r for r in cohort["good"] if "box" in r][:2]
    rows = [{**r, "id": f"{i}"} for i, r in enumerate(two_d + two_d)]  # 4 2D items
    manifest = _write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medsamkit.cli.main", "batch", "segment", str(manifest), "-o", str(out), "-q"]
    cmd += ["--scheduler", dask_engine.client.scheduler.address, "--threads-per-worker", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_running(out / "ledger.sqlite", "0", proc=proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in err, err
    with Ledger(out / "ledger.sqlite") as led:
        counts = led.counts()
        assert counts["running"] == 0 and counts["failed"] == 0 and counts["done"] + counts["pending"] == len(rows)
        assert led.runs()[-1]["status"] == "interrupted"
    s = run_batch(SegmentJob(str(out), _spec()), manifest, engine=dask_engine)
    assert s.already_done + s.done == len(rows) and s.failed == 0 and s.states["done"] == len(rows)


def test_evaluate_on_a_scheduler_equals_the_in_process_run(dask_engine, tmp_path, capsys) -> None:
    from medsamkit.evaluate import read_rows

    dataset = str(DATA / "busi_breast_us")
    base = ["evaluate", dataset, "--limit", "2", "-q", "--no-report", "--prompt", "box", "--prompt", "point:centre"]
    assert main([*base, "-o", str(tmp_path / "local"), "--threads", "1"]) == 0, capsys.readouterr().err
    remote = [*base, "-o", str(tmp_path / "dask"), "--scheduler", dask_engine.client.scheduler.address]
    assert main([*remote, "--threads-per-worker", "1"]) == 0, capsys.readouterr().err
    timing = {"time_s", "encode_s"}
    a = [{k: v for k, v in r.items() if k not in timing} for r in read_rows(tmp_path / "local" / "results.csv")]
    b = [{k: v for k, v in r.items() if k not in timing} for r in read_rows(tmp_path / "dask" / "results.csv")]
    assert len(a) == 4 and a == b
    capsys.readouterr()
    assert main([*remote, "--threads-per-worker", "1"]) == 0
    assert "(0 evaluated, 2 already done)" in capsys.readouterr().err


def test_rows_cannot_write_outside_out_dir_over_inputs_or_over_each_other(dask_engine, tmp_path, capsys) -> None:
    """Manifest outputs: '../../escaped.png', an absolute path, '~/x.png', the row's own image, a symlink inside
    OUT_DIR that leads out, and two rows naming one output - each a failed row with its reason; the good row
    is written; nothing appears outside OUT_DIR; no input changes; the command exits 3."""
    src = DATA / IMAGES_2D[0][0]
    m = np.asarray(Image.open(DATA / IMAGES_2D[0][1])) > 0
    box = ",".join(map(str, box_of(m)))
    work = tmp_path / "work"
    work.mkdir()
    image = work / "img.png"
    shutil.copy(src, image)
    out = tmp_path / "out"
    out.mkdir()
    (out / "leak").symlink_to(tmp_path, target_is_directory=True)
    rows = [
        {"id": "good", "image": str(image), "box": box, "output": "sub/good.png"},
        {"id": "dotdot", "image": str(image), "box": box, "output": "../../escaped.png"},
        {"id": "absolute", "image": str(image), "box": box, "output": str(tmp_path / "abs.png")},
        {"id": "home", "image": str(image), "box": box, "output": "~/x.png"},
        {"id": "link", "image": str(image), "box": box, "output": "leak/through-link.png"},
        {"id": "twice", "image": str(image), "box": box, "output": "sub/good.png"},
        {"id": "self", "image": "../out/sub/self.png", "box": box, "output": "sub/self.png"},
        {"id": "default-of-another", "image": str(image), "box": box, "output": "masks/good.png"},
        {"id": "ledger", "image": str(image), "box": box, "output": "ledger.sqlite"},
    ]
    (out / "sub").mkdir()
    shutil.copy(src, out / "sub" / "self.png")
    manifest = work / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = {p: p.read_bytes() for p in (image, out / "sub" / "self.png")}
    s = run_batch(SegmentJob(str(out), _spec()), manifest, engine=dask_engine, max_retries=0)
    assert s.done == 1 and s.failed == len(rows) - 1
    reasons = {f["id"]: f["error"] for f in s.failures}
    assert "leads outside the output folder" in reasons["dotdot"] and "relative to the output folder" in reasons["absolute"]
    assert "relative to the output folder" in reasons["home"] and "leads outside" in reasons["link"]
    assert "also the output of item good" in reasons["twice"] or "finished output of item good" in reasons["twice"]
    assert "is the input file" in reasons["self"]
    assert "is the run's own" in reasons["default-of-another"] and "is the run's own" in reasons["ledger"]
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path.parent / "escaped.png").exists()
    assert not (tmp_path / "abs.png").exists() and not (tmp_path / "through-link.png").exists()
    assert all(p.read_bytes() == b for p, b in before.items())
    assert (out / "sub" / "good.png").is_file()
    # a later run cannot take the finished item's output either, and the command says so with exit 3
    (work / "m2.jsonl").write_text(json.dumps({"id": "later", "image": str(image), "box": box, "output": "sub/good.png"}) + "\n")
    rc = main(["batch", "segment", str(work / "m2.jsonl"), "-o", str(out), "--scheduler", dask_engine.client.scheduler.address])
    err = capsys.readouterr().err
    assert rc == 3 and "finished output of item good" in err and "1 item(s) failed" in err
