"""The driver of a batch job: manifest -> ledger -> Dask workers -> ledger, resumable.

Output folder (``OUT_DIR``): ``ledger.sqlite`` (item states, see :mod:`.ledger`), ``records/<id>.json`` (one
per finished item, written atomically by the worker after its output), the outputs (``masks/`` unless rows
name their own) and ``summary.json`` (the last run: counts, failures with reasons, throughput).

A run registers the manifest's rows, then computes the items that are pending or failed fewer than
``max_retries + 1`` times. When nothing is left to do no cluster starts and no model loads. Ctrl-C cancels what
is in flight and leaves those items ``pending``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .._files import atomic_write_text
from ..errors import FileInputError, InputError, OptionError, OutputError
from .cluster import DaskEngine, EngineOptions, run_item
from .kinds import future_error
from .ledger import Ledger, Registration
from .manifest import ManifestItem, manifest_format, read_manifest, safe_stem

log = logging.getLogger("medsamkit")

MAX_FAILURES_IN_SUMMARY = 1000


@dataclass
class BatchSummary:
    """What one run did.

    rows/items/duplicates: manifest rows, distinct items, rows whose id was already used. already_done: items
    finished by earlier runs (skipped); exhausted: failed items past ``max_retries`` (skipped); attempted: items
    computed (or re-validated) now, of which done/failed; pending: items left pending (interrupted run).
    states: every item of the manifest by state after the run. failures: failed items (id, line, image, error,
    attempts, failures). Timings in seconds: wall (the whole run), startup (cluster start), warm (imports and
    model load on every worker), processing (first submission to last completion); items_per_s = finished items /
    processing; item_s_mean: worker-side seconds per computed item; model_loads/model_load_s: predictors
    created on workers while running items (not by the warm-up) and the time they took.
    """

    job: str
    out_dir: str
    run: int
    status: str = "finished"
    rows: int = 0
    items: int = 0
    duplicates: int = 0
    already_done: int = 0
    exhausted: int = 0
    attempted: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    states: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    cluster_started: bool = False
    workers: int = 0
    threads: int = 0
    wall_s: float = 0.0
    startup_s: float = 0.0
    warm_s: float = 0.0
    processing_s: float = 0.0
    items_per_s: float | None = None
    item_s_mean: float | None = None
    model_loads: int = 0
    model_load_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Unused:
    """Collects manifest columns a job does not read (reported once)."""

    def __init__(self, known: tuple[str, ...]) -> None:
        self.known = set(known)
        self.seen: set[str] = set()

    def watch(self, items: Iterator[ManifestItem]) -> Iterator[ManifestItem]:
        for item in items:
            self.seen.update(k for k in item.fields if k not in self.known)
            yield item


def run_batch(
    job: Any,
    manifest: str | os.PathLike[str] | Sequence[ManifestItem],
    *,
    engine: DaskEngine | EngineOptions | None = None,
    max_retries: int = 2,
    progress: bool = False,
) -> BatchSummary:
    """Run ``job`` (e.g. :class:`~.kinds.SegmentJob`) over ``manifest`` (a CSV/JSONL file, or items such as
    :func:`~.kinds.dataset_items` with absolute paths) into ``job.out_dir``; see the module docstring.
    ``engine``: a :class:`DaskEngine` (kept open; e.g. one shared by several calls) or the options of one to start
    (closed at the end). Raises ``InputError`` (a ``ValueError``) for a missing manifest or an output folder
    holding another job; a bad row is a failed item, never an exception. Returns the :class:`BatchSummary` (also in
    ``OUT_DIR/summary.json``)."""
    if max_retries < 0:
        raise OptionError("max_retries must be >= 0")
    if isinstance(manifest, (str, os.PathLike)):
        manifest = Path(manifest)
        manifest_format(manifest)
        if not manifest.is_file():
            raise FileInputError(f"manifest not found: {manifest}")
        next(iter(read_manifest(manifest)), None)  # a bad header fails here, before the output folder is made
        base = manifest.resolve().parent
        source = str(manifest.resolve())
    else:
        items = list(manifest)
        base = items[0].base if items else Path(".")
        source = f"{len(items)} items"
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_run = time.perf_counter()
    lock = _lock(out)
    own_engine = not isinstance(engine, DaskEngine)
    eng = engine if isinstance(engine, DaskEngine) else DaskEngine(engine)
    ledger = Ledger(out / "ledger.sqlite")
    try:
        ledger.check_job(job.name, job.settings())
        run = ledger.begin_run({"manifest": source, "max_retries": max_retries})
        summary = BatchSummary(job.name, str(out), run)
        status = "failed"
        try:
            unused = _Unused(job.columns)
            rows = read_manifest(manifest) if isinstance(manifest, Path) else iter(items)
            reg = ledger.register(unused.watch(rows), run)
            summary.ignored_columns = sorted(unused.seen)
            if unused.seen:
                log.warning("manifest columns not used by batch %s: %s", job.name, ", ".join(sorted(unused.seen)))
            _count_start(ledger, run, max_retries, reg, summary)
            if summary.attempted:
                _process(job, base, ledger, run, max_retries, eng, summary, progress)
            status = "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            summary.status = status
            summary.wall_s = round(time.perf_counter() - t_run, 3)
            ledger.end_run(run, status, {k: v for k, v in summary.to_dict().items() if k != "failures"})
            _finish(ledger, run, summary)
            atomic_write_text(out / "summary.json", json.dumps(summary.to_dict(), indent=1, default=str) + "\n")
    finally:
        ledger.close()
        if own_engine:
            eng.close()
        lock.close()
    return summary


def _lock(out: Path) -> TextIO:
    """An exclusive lock on ``OUT_DIR/.batch.lock`` for the run: two drivers never share a ledger."""
    f = open(out / ".batch.lock", "a+")  # noqa: SIM115 - held open for the run, closed by run_batch
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise OutputError(f"another batch run is using {out}") from None
    return f


def _count_start(ledger: Ledger, run: int, max_retries: int, reg: Registration, summary: BatchSummary) -> None:
    counts = ledger.counts(run)
    summary.rows = reg.rows
    summary.duplicates = len(reg.duplicates)
    for item_id, line, first in reg.duplicates[:20]:
        log.warning("manifest line %d: id %r was already used on line %d; the row is ignored", line, item_id, first)
    summary.items = sum(counts.values())
    summary.already_done = counts["done"]
    summary.attempted = ledger.count_todo(run, max_retries)
    summary.exhausted = summary.items - summary.already_done - summary.attempted


def _finish(ledger: Ledger, run: int, summary: BatchSummary) -> None:
    summary.states = ledger.counts(run)
    summary.pending = summary.states["pending"]
    failures = []
    for r in ledger.items(state="failed", run=run, limit=MAX_FAILURES_IN_SUMMARY):
        try:
            image = json.loads(r["payload"]).get("image")
        except ValueError:
            image = None
        failures.append(
            {
                "id": r["id"],
                "line": r["line"],
                "image": image,
                "error": r["error"],
                "attempts": r["attempts"],
                "failures": r["failures"],
            }
        )
    summary.failures = failures


def _claim_output(job: Any, payload: Any, item: ManifestItem, claimed: dict[str, tuple[str, int]], ledger: Ledger) -> None:
    """Refuse a row whose named output is another item's (of this run, or finished earlier): the later row would
    overwrite finished work."""
    planned = job.planned_output(payload) if hasattr(job, "planned_output") else None
    if planned is None:
        return
    key = str(Path(planned).resolve())
    other = claimed.get(key)
    if other is not None and other[0] != item.id:
        raise OutputError(f"output {planned} is also the output of item {other[0]} (line {other[1]}); give each row its own")
    owner = ledger.output_owner(key, item.id)
    if owner is not None:
        raise OutputError(
            f"output {planned} is the finished output of item {owner['id']} (line {owner['line']}); give this row another one"
        )
    claimed[key] = (item.id, item.line)


def _process(
    job: Any,
    base: Path,
    ledger: Ledger,
    run: int,
    max_retries: int,
    eng: DaskEngine,
    summary: BatchSummary,
    progress: bool,
) -> None:
    client = eng.client
    summary.cluster_started = True
    eng.warm(job.model)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=summary.attempted, unit="item", desc=f"batch {job.name}")
    summary.startup_s = round(eng.startup_s, 3)
    summary.warm_s = round(eng.warm_s, 3)
    summary.workers = len(client.nthreads())
    summary.threads = eng.model_threads() or 0
    topic = f"medsamkit-batch-{uuid.uuid4().hex[:12]}"
    events: queue.SimpleQueue = queue.SimpleQueue()
    client.subscribe_topic(topic, events.put)
    active: set[str] = set()
    claimed: dict[str, tuple[str, int]] = {}  # output path -> (item id, line) in this run
    starts: dict[str, int] = {}
    computed, computed_s = 0, 0.0  # items computed on workers, their seconds
    loads, loads_s = 0, 0.0  # predictor loads on workers, their seconds

    def drain() -> None:
        while True:
            try:
                _, msg = events.get_nowait()
            except queue.Empty:
                return
            item_id = msg.get("id")
            if item_id in active:
                starts[item_id] = starts.get(item_id, 0) + 1
                ledger.mark_started(item_id, str(msg.get("worker")), float(msg.get("t", time.time())))

    def tick(failed: bool) -> None:
        if failed:
            summary.failed += 1
        else:
            summary.done += 1
        if bar is not None:
            bar.update(1)
            if summary.failed:
                bar.set_postfix(failed=summary.failed)

    def tasks() -> Iterator[tuple[str, str, tuple[Any, ...]]]:
        after = 0
        while True:
            rows = ledger.todo(run, max_retries, after_line=after)
            if not rows:
                return
            for r in rows:
                after = r["line"]
                if r["id"] in active:
                    continue
                item = ManifestItem.from_payload(r["id"], r["line"], r["payload"], base)
                try:
                    if item.error:
                        raise InputError(item.error)
                    payload = job.prepare(item)
                    _claim_output(job, payload, item, claimed, ledger)
                except (ValueError, OSError) as e:
                    ledger.mark_failed(item.id, job.error_text(e) if hasattr(job, "error_text") else str(e))
                    tick(failed=True)
                    continue
                active.add(item.id)
                yield item.id, f"{job.name}-{safe_stem(item.id)}-{uuid.uuid4().hex[:8]}", (job, item.id, payload, topic)

    t0 = time.perf_counter()
    try:
        for item_id, fut in eng.stream(run_item, tasks(), idle=drain):
            drain()
            active.discard(item_id)
            n = starts.pop(item_id, 0)
            if fut.status == "finished":
                res = fut.result()
                computed += 1
                computed_s += float(res.get("seconds") or 0.0)
                if res.get("model_load_s"):
                    loads += 1
                    loads_s += float(res["model_load_s"])
                if res["ok"]:
                    output = res["record"].get("output") if isinstance(res["record"], dict) else None
                    output = str(Path(output).resolve()) if output else output
                    ledger.mark_done(item_id, output=output, seconds=res["seconds"], starts=max(1, n), worker=res.get("worker"))
                else:
                    ledger.mark_failed(
                        item_id,
                        res["error"],
                        detail=res.get("detail"),
                        seconds=res["seconds"],
                        starts=max(1, n),
                        worker=res.get("worker"),
                    )
                tick(failed=not res["ok"])
            else:
                ledger.mark_failed(item_id, future_error(fut), starts=n)
                tick(failed=True)
    finally:
        summary.processing_s = round(time.perf_counter() - t0, 3)
        try:
            client.unsubscribe_topic(topic)
        except Exception:  # noqa: BLE001 - the client may be closing after an interrupt
            pass
        if bar is not None:
            bar.close()
    finished = summary.done + summary.failed
    if finished and summary.processing_s > 0:
        summary.items_per_s = round(finished / summary.processing_s, 4)
    if computed:
        summary.item_s_mean = round(computed_s / computed, 4)
    summary.model_loads, summary.model_load_s = loads, round(loads_s, 3)
