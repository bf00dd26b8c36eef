"""Background pre-encoding: the slices of an opened volume are encoded while the annotator looks at it, so a click or
a propagation later finds their embeddings in the app's shared cache (as micro-sam precomputes a volume's embeddings).

One worker thread serves every session. Each session with an open volume has at most one :class:`EncodeTask`: the
slices along its working axis (``z`` unless the client says otherwise), taken nearest to the viewed slice first; the
client moves that focus as the annotator scrolls (``POST .../encoding``). The worker encodes one slice at a time,
taking the sessions in turn (two sessions share the CPU slice by slice), and it waits while any segment or propagate
request is running (:meth:`~medsamkit.app.model.ModelService.foreground`), so a request waits at most for the one
encode already under way. Embeddings go through the same :class:`~medsamkit.app.model.SharedPredictor` as the
requests (content-keyed, in-flight de-duplicated), so a request that needs a slice being pre-encoded waits for it
instead of encoding it twice, and whatever is not ready yet is encoded on demand.

A task covers at most ``limit`` slices (the nearest to the focus), bounded so that they fit in three quarters of the
cache; it is dropped when its session is deleted or expires, when the session opens another volume (which starts a
new one), and paused while the session's volume is unloaded from memory (it resumes when the volume is loaded again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import ModelService
    from .sessions import Session, SessionStore

log = logging.getLogger("medsamkit.app")

AXES = ("z", "y", "x")


@dataclass
class EncodeTask:
    """The pre-encoding of one session's volume: slices ``0..n-1`` along ``axis``, at most ``limit`` of them,
    nearest to ``focus`` first. ``done``: slice indices encoded (or found in the cache) by this task."""

    session: Session
    volume_id: str
    axis: str
    n: int
    focus: int
    limit: int
    done: set[int] = field(default_factory=set)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    seconds_encoding: float = 0.0

    def wanted(self) -> list[int]:
        """The ``limit`` slices nearest to the focus, nearest first (ties: the lower index first)."""
        order = sorted(range(self.n), key=lambda k: (abs(k - self.focus), k))
        return order[: self.limit]

    def next_slice(self) -> int | None:
        for k in self.wanted():
            if k not in self.done:
                return k
        return None

    def as_dict(self, paused: bool) -> dict[str, Any]:
        wanted = self.wanted()
        ready = sum(1 for k in wanted if k in self.done)
        return {
            "axis": self.axis,
            "focus": self.focus,
            "done": ready,
            "total": len(wanted),
            "slices": self.n,
            "running": ready < len(wanted) and self.error is None,
            "paused": paused,
            "error": self.error,
            "seconds": round((self.finished or time.time()) - self.started, 1),
        }


class Preencoder:
    """The app's background encoder (see the module docstring). ``max_slices``: slices encoded per volume
    (0: pre-encoding off)."""

    def __init__(self, store: SessionStore, models: ModelService, max_slices: int = 256) -> None:
        self.store = store
        self.models = models
        self.max_slices = max(0, int(max_slices))
        self._tasks: dict[str, EncodeTask] = {}
        self._turns: deque[str] = deque()  # session ids in round-robin order
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.encoded = 0  # slices this worker has encoded or found cached, all sessions (for tests and logs)

    @property
    def enabled(self) -> bool:
        return self.max_slices > 0

    def _slice_limit(self, n: int) -> int:
        per_slice = 4 * 256 * 64 * 64  # a (1, 256, 64, 64) float32 embedding, as every model of the registry has
        room = max(1, (self.models.cache.max_bytes * 3 // 4) // per_slice)
        return max(0, min(n, self.max_slices, room))

    # -- what the routes call ---------------------------------------------------------------------------------
    def start(self, s: Session, axis: str = "z", focus: int | None = None) -> dict[str, Any] | None:
        """(Re)start pre-encoding the session's open volume along ``axis`` from slice ``focus`` (default: the
        middle). Call with ``s.lock`` held and the volume loaded. Returns the task's status (None when off)."""
        if not self.enabled or s.volume is None:
            return None
        vol = s.volume
        a = AXES.index(axis)
        n = 1 if vol.is_2d else vol.shape[a]
        if vol.is_2d:
            axis = "z"
        k = n // 2 if focus is None else min(max(0, int(focus)), n - 1)
        task = EncodeTask(s, str(s.meta.get("volume_id")), axis, n, k, self._slice_limit(n))
        with self._cond:
            self._tasks[s.sid] = task
            if s.sid not in self._turns:
                self._turns.append(s.sid)
            self._ensure_thread()
            self._cond.notify_all()
            return task.as_dict(paused=False)

    def ensure(self, s: Session) -> None:
        """Start pre-encoding the session's loaded volume if no task covers it (a session restored after a
        restart); call with ``s.lock`` held."""
        with self._cond:
            task = self._tasks.get(s.sid)
            if task is not None and task.volume_id == str(s.meta.get("volume_id")):
                return
        self.start(s)

    def focus(self, s: Session, axis: str, k: int, start: bool = True) -> dict[str, Any] | None:
        """Move the session's focus to slice ``k`` of ``axis`` (call with ``s.lock`` held). Another axis, or no
        task yet, starts a new task there when ``start`` (else nothing changes). Returns the status."""
        with self._cond:
            task = self._tasks.get(s.sid)
            same = task is not None and task.axis == axis and task.volume_id == str(s.meta.get("volume_id"))
            if same and task is not None:
                task.focus = min(max(0, int(k)), task.n - 1)
                if task.next_slice() is not None:
                    task.finished, task.error = None, None
                self._cond.notify_all()
                return task.as_dict(paused=s.volume is None)
        return self.start(s, axis, k) if start else None

    def cancel(self, sid: str) -> None:
        """Stop pre-encoding for session ``sid`` (deleted, or about to open another volume)."""
        with self._cond:
            self._tasks.pop(sid, None)
            if sid in self._turns:
                self._turns.remove(sid)

    def status(self, s: Session) -> dict[str, Any]:
        with self._cond:
            task = self._tasks.get(s.sid)
            if task is None:
                idle = {"axis": None, "done": 0, "total": 0, "running": False, "paused": False, "error": None}
                return {**idle, "enabled": self.enabled}
            return {**task.as_dict(paused=s.volume is None), "enabled": True}

    def close(self) -> None:
        """Stop the worker (the slice being encoded finishes first)."""
        with self._cond:
            self._stop = True
            self._tasks.clear()
            self._turns.clear()
            self._cond.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(30)

    # -- the worker ----------------------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="medsamkit-preencode", daemon=True)
            self._thread.start()

    def _pick(self) -> tuple[EncodeTask, int] | None:
        """The next (task, slice) in round-robin order over the sessions with work; drops finished or stale tasks."""
        for _ in range(len(self._turns)):
            sid = self._turns[0]
            self._turns.rotate(-1)
            task = self._tasks.get(sid)
            if task is None:
                self._turns.remove(sid)
                continue
            if self.store.peek(sid) is not task.session:  # deleted or expired
                self.cancel(sid)
                continue
            if task.error is not None or task.session.volume is None:  # failed, or unloaded: paused
                continue
            k = task.next_slice()
            if k is None:
                if task.finished is None:
                    task.finished = time.time()
                continue
            return task, k
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stop:
                    return
                picked = self._pick()
                if picked is None:
                    self._cond.wait(timeout=1.0)
                    continue
            task, k = picked
            self.models.wait_until_idle()  # requests first: wait while any segment or propagate runs
            try:
                self._encode(task, k)
            except Exception as e:  # noqa: BLE001 - a worker must outlive one bad slice; the task records it
                log.warning("pre-encoding slice %d of session %s failed: %s", k, task.session.sid, e)
                task.error = f"slice {k} could not be encoded: {type(e).__name__}"

    def _encode(self, task: EncodeTask, k: int) -> None:
        s = task.session
        from .sessions import slice_index

        if not s.lock.acquire(timeout=0.5):  # a request holds it (briefly): try again next turn
            return
        try:
            vol = s.volume
            if vol is None or str(s.meta.get("volume_id")) != task.volume_id:
                return  # unloaded (paused) or replaced (its new task is already registered)
            picture = vol.display[slice_index(task.axis, k)].copy()
        finally:
            s.lock.release()
        t0 = time.perf_counter()
        self.models.predictor().embed(picture)
        with self._cond:
            task.seconds_encoding += time.perf_counter() - t0
            if self._tasks.get(s.sid) is task:
                task.done.add(k)
                self.encoded += 1
