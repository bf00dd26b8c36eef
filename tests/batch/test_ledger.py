"""The SQLite ledger: registration, changed rows, duplicates, retry limits, runs (no cluster)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from medsamkit.batch import Ledger
from medsamkit.batch.manifest import ManifestItem


def _items(*specs: tuple[str, int, dict]) -> list[ManifestItem]:
    return [ManifestItem(i, line, fields, Path(".")) for i, line, fields in specs]


def test_register_new_known_changed_duplicate(tmp_path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as led:
        assert led.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        run1 = led.begin_run()
        reg = led.register(_items(("a", 2, {"image": "a"}), ("b", 3, {"image": "b"}), ("a", 4, {"image": "z"})), run1)
        assert (reg.new, reg.known, reg.changed, reg.duplicates) == (2, 0, 0, [("a", 4, 2)])
        assert reg.rows == 3
        led.mark_done("a", output="a.png", seconds=1.0, starts=1, worker="w")
        led.end_run(run1, "finished")
        run2 = led.begin_run()
        reg = led.register(_items(("a", 2, {"image": "a"}), ("b", 3, {"image": "b2"})), run2)
        assert (reg.new, reg.known, reg.changed) == (0, 1, 1)
        assert led.item("a")["state"] == "done"  # unchanged row: stays done
        assert led.item("b")["state"] == "pending" and led.item("b")["payload"] == '{"image":"b2"}'
        assert [r["id"] for r in led.todo(run2, max_retries=2)] == ["b"]


def test_failures_are_retried_up_to_the_limit(tmp_path) -> None:
    with Ledger(tmp_path / "l.sqlite") as led:
        run = led.begin_run()
        led.register(_items(("a", 2, {"image": "a"})), run)
        for n in range(1, 4):
            assert led.count_todo(run, max_retries=1) == (1 if n <= 2 else 0)
            led.mark_failed("a", f"boom {n}", starts=1)
            assert led.item("a")["failures"] == n
        row = led.item("a")
        assert row["state"] == "failed" and row["attempts"] == 3 and row["error"] == "boom 3"
        assert led.count_todo(run, max_retries=3) == 1


def test_unreadable_rows_count_as_failed_once(tmp_path) -> None:
    with Ledger(tmp_path / "l.sqlite") as led:
        run = led.begin_run()
        bad = ManifestItem("line3-x", 3, {}, Path("."), error="line 3: not valid JSON")
        led.register([bad], run)
        row = led.item("line3-x")
        assert row["state"] == "failed" and row["failures"] == 1 and row["attempts"] == 0
        assert led.count_todo(run, max_retries=0) == 0 and led.count_todo(run, max_retries=1) == 1


def test_running_items_return_to_pending(tmp_path) -> None:
    path = tmp_path / "l.sqlite"
    led = Ledger(path)
    run = led.begin_run()
    led.register(_items(("a", 2, {"image": "a"}), ("b", 3, {"image": "b"})), run)
    led.mark_started("a", "tcp://127.0.0.1:1", 0.0)
    led.mark_done("b", output=None, seconds=0.1, starts=1, worker=None)
    led.mark_started("b", "tcp://127.0.0.1:1", 0.0)  # a late start event never undoes 'done'
    # another reader sees the driver's writes while the run goes on (WAL)
    reader = sqlite3.connect(path)
    assert dict(reader.execute("SELECT id, state FROM items").fetchall()) == {"a": "running", "b": "done"}
    led.close()  # the driver died: 'a' is left running
    with Ledger(path) as led2:
        led2.begin_run()
        assert led2.item("a")["state"] == "pending" and led2.item("b")["state"] == "done"
    reader.close()


def test_one_job_per_folder(tmp_path) -> None:
    with Ledger(tmp_path / "l.sqlite") as led:
        led.check_job("segment", {"model": "litemedsam", "backend": "auto"})
        led.check_job("segment", {"backend": "auto", "model": "litemedsam"})
        with pytest.raises(ValueError, match="other settings \\(model\\)"):
            led.check_job("segment", {"model": "sam_vit_b", "backend": "auto"})
        with pytest.raises(ValueError, match="holds a batch segment job, not everything"):
            led.check_job("everything", {})
        assert led.job()["kind"] == "segment"


def test_one_driver_per_folder(tmp_path) -> None:
    import fcntl

    from medsamkit.batch import ModelSpec, SegmentJob, run_batch

    manifest = tmp_path / "m.csv"
    manifest.write_text('image,box\na.png,"1,2,3,4"\n')
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".batch.lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # another driver is running
        with pytest.raises(ValueError, match="another batch run is using"):
            run_batch(SegmentJob(str(out), ModelSpec()), manifest)
    assert not (out / "ledger.sqlite").exists()
