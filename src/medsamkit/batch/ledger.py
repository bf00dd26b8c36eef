"""The job ledger: one SQLite file (``OUT_DIR/ledger.sqlite``, WAL mode) with the state of every item.

The driver process is its only writer (workers return results; the driver records them), so the ledger never
sees concurrent writers; readers (``medsamkit batch status``, tests) may look at any time.

Item states: ``pending`` (not yet started in this run, or interrupted), ``running`` (a worker has started
it), ``done`` (its output and record are written), ``failed`` (its last attempt raised; ``error`` says why).
``attempts`` counts starts on a worker (a start lost with its worker counts too); ``failures`` counts failed
attempts, which is what ``max_retries`` limits: a failed item is retried by later runs while
``failures <= max_retries``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from .._runs import check_same_settings
from ..errors import OutputError
from .manifest import ManifestItem

STATES = ("pending", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    line INTEGER NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    detail TEXT,
    output TEXT,
    worker TEXT,
    started REAL,
    finished REAL,
    seconds REAL,
    run INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS items_run_line ON items (run, line);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    info TEXT,
    summary TEXT
);
"""


@dataclass
class Registration:
    """What registering a manifest found: new items, changed rows (reset to pending), known items and
    duplicates (ids seen twice in the manifest: ``(id, line, first line)``; the later rows are ignored)."""

    new: int = 0
    changed: int = 0
    known: int = 0
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.new + self.changed + self.known + len(self.duplicates)


class Ledger:
    """The SQLite ledger of one output folder (created on first use)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the job --------------------------------------------------------------------------------------------
    def check_job(self, kind: str, settings: dict[str, Any]) -> None:
        """Record the job's kind and settings, or check them against the ones recorded: a folder holds one job
        (:class:`~medsamkit.errors.OutputError` naming what differs otherwise)."""
        rows = {r["key"]: json.loads(r["value"]) for r in self.db.execute("SELECT key, value FROM job")}
        if not rows:
            with self.db:
                self.db.execute("BEGIN")
                self.db.execute("INSERT INTO job VALUES ('kind', ?)", (json.dumps(kind),))
                self.db.execute("INSERT INTO job VALUES ('settings', ?)", (json.dumps(settings, sort_keys=True),))
                self.db.execute("INSERT INTO job VALUES ('created', ?)", (json.dumps(time.strftime("%Y-%m-%dT%H:%M:%S")),))
            return
        if rows.get("kind") != kind:
            raise OutputError(f"{self.path.parent} holds a batch {rows.get('kind')} job, not {kind}; use another output folder")
        check_same_settings(self.path.parent, f"a batch {kind} job", rows.get("settings", {}), settings, error=OutputError)

    def job(self) -> dict[str, Any]:
        """The recorded kind, settings and creation time."""
        return {r["key"]: json.loads(r["value"]) for r in self.db.execute("SELECT key, value FROM job")}

    # -- runs -----------------------------------------------------------------------------------------------
    def begin_run(self, info: dict[str, Any] | None = None) -> int:
        """Start a run: items a crashed earlier run left ``running`` become ``pending``. Returns the run id."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("UPDATE items SET state = 'pending', worker = NULL WHERE state = 'running'")
            cur = self.db.execute(
                "INSERT INTO runs (started, status, info) VALUES (?, 'running', ?)", (time.time(), json.dumps(info or {}))
            )
        return cast(int, cur.lastrowid)  # an INSERT always sets it

    def end_run(self, run: int, status: str, summary: dict[str, Any] | None = None) -> None:
        """Close a run (``finished``, ``interrupted``, ``failed``): ``running`` items go back to ``pending``."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("UPDATE items SET state = 'pending', worker = NULL WHERE state = 'running'")
            self.db.execute(
                "UPDATE runs SET finished = ?, status = ?, summary = ? WHERE id = ?",
                (time.time(), status, json.dumps(summary or {}, default=str), run),
            )

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM runs ORDER BY id")]

    # -- items ----------------------------------------------------------------------------------------------
    def register(self, items: Iterable[ManifestItem], run: int, chunk: int = 1000) -> Registration:
        """Add the manifest's items to the ledger for ``run`` (streamed, committed every ``chunk`` rows). An
        item whose row changed since an earlier run starts again from ``pending``; rows with an unreadable
        line are recorded as ``failed`` with their error."""
        reg = Registration()
        pending = 0
        self.db.execute("BEGIN")
        try:
            for item in items:
                payload = item.payload()
                old = self.db.execute("SELECT payload, run, line FROM items WHERE id = ?", (item.id,)).fetchone()
                if old is not None and old["run"] == run:
                    reg.duplicates.append((item.id, item.line, int(old["line"])))
                    continue
                # an unreadable row has failed once already (reading it)
                state, error, failures = ("failed", item.error, 1) if item.error else ("pending", None, 0)
                if old is None:
                    self.db.execute(
                        "INSERT INTO items (id, line, payload, state, error, failures, run) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (item.id, item.line, payload, state, error, failures, run),
                    )
                    reg.new += 1
                elif old["payload"] != payload:
                    self.db.execute(
                        "UPDATE items SET line = ?, payload = ?, state = ?, attempts = 0, failures = ?, error = ?, "
                        "detail = NULL, output = NULL, worker = NULL, started = NULL, finished = NULL, seconds = NULL, "
                        "run = ? WHERE id = ?",
                        (item.line, payload, state, failures, error, run, item.id),
                    )
                    reg.changed += 1
                else:
                    self.db.execute("UPDATE items SET line = ?, run = ? WHERE id = ?", (item.line, run, item.id))
                    reg.known += 1
                pending += 1
                if pending >= chunk:
                    self.db.execute("COMMIT")
                    self.db.execute("BEGIN")
                    pending = 0
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return reg

    def todo_condition(self) -> str:
        return "(state IN ('pending', 'running') OR (state = 'failed' AND failures <= ?))"

    def todo(self, run: int, max_retries: int, after_line: int = 0, limit: int = 500) -> list[sqlite3.Row]:
        """The next items of ``run`` to compute, in manifest order after ``after_line``: pending ones and failed
        ones with ``failures <= max_retries``."""
        return self.db.execute(
            f"SELECT id, line, payload, error FROM items WHERE run = ? AND line > ? AND {self.todo_condition()} "
            "ORDER BY line LIMIT ?",
            (run, after_line, max_retries, limit),
        ).fetchall()

    def count_todo(self, run: int, max_retries: int) -> int:
        return int(
            self.db.execute(
                f"SELECT COUNT(*) FROM items WHERE run = ? AND {self.todo_condition()}", (run, max_retries)
            ).fetchone()[0]
        )

    def counts(self, run: int | None = None) -> dict[str, int]:
        """Items per state (of ``run``'s manifest, or of the whole ledger)."""
        where, args = ("WHERE run = ?", (run,)) if run is not None else ("", ())
        out = dict.fromkeys(STATES, 0)
        for r in self.db.execute(f"SELECT state, COUNT(*) AS n FROM items {where} GROUP BY state", args):
            out[r["state"]] = int(r["n"])
        return out

    def output_owner(self, output: str, item_id: str) -> dict[str, Any] | None:
        """The finished item (id, line) other than ``item_id`` whose output is ``output``, or None."""
        r = self.db.execute(
            "SELECT id, line FROM items WHERE state = 'done' AND output = ? AND id != ? LIMIT 1", (output, item_id)
        ).fetchone()
        return dict(r) if r is not None else None

    def mark_started(self, item_id: str, worker: str, when: float) -> None:
        self.db.execute(
            "UPDATE items SET state = 'running', worker = ?, started = ? WHERE id = ? AND state != 'done'",
            (worker, when, item_id),
        )

    def mark_done(self, item_id: str, *, output: str | None, seconds: float | None, starts: int, worker: str | None) -> None:
        self.db.execute(
            "UPDATE items SET state = 'done', attempts = attempts + ?, error = NULL, detail = NULL, output = ?, "
            "seconds = ?, finished = ?, worker = COALESCE(?, worker) WHERE id = ?",
            (starts, output, seconds, time.time(), worker, item_id),
        )

    def mark_failed(
        self,
        item_id: str,
        error: str,
        *,
        detail: str | None = None,
        seconds: float | None = None,
        starts: int = 0,
        worker: str | None = None,
    ) -> None:
        self.db.execute(
            "UPDATE items SET state = 'failed', attempts = attempts + ?, failures = failures + 1, error = ?, detail = ?, "
            "seconds = ?, finished = ?, worker = COALESCE(?, worker) WHERE id = ?",
            (starts, error, detail, seconds, time.time(), worker, item_id),
        )

    def mark_pending(self, item_id: str) -> None:
        self.db.execute("UPDATE items SET state = 'pending', worker = NULL WHERE id = ? AND state != 'done'", (item_id,))

    def item(self, item_id: str) -> dict[str, Any] | None:
        r = self.db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if r is None else dict(r)

    def items(self, state: str | None = None, run: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Items (all columns) in manifest order, optionally of one state and/or one run's manifest."""
        conds: list[str] = []
        args: list[str | int] = []
        if state is not None:
            conds.append("state = ?")
            args.append(state)
        if run is not None:
            conds.append("run = ?")
            args.append(run)
        sql = "SELECT * FROM items" + (" WHERE " + " AND ".join(conds) if conds else "") + " ORDER BY line"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [dict(r) for r in self.db.execute(sql, args)]
