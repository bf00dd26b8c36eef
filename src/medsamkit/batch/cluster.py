"""The cluster that runs batch items: a local Dask cluster or an existing scheduler, one model per worker, streamed items.

* :class:`DaskEngine` starts a ``dask.distributed.LocalCluster`` (worker processes with one Dask thread each,
  bound to 127.0.0.1, dashboard off unless asked) or connects to ``scheduler`` (``tcp://HOST:PORT``), lazily:
  nothing starts until there is work.
* On a worker, :func:`worker_predictor` keeps the model loaded for every later item of that process (a pool
  keyed by model, checkpoint, backend and threads; one predictor per concurrently running task), and sets the
  process's torch/OpenCV/ONNX Runtime threads to the worker's share of the cores.
* :meth:`DaskEngine.stream` keeps at most ``max_in_flight`` futures alive and refills as they complete
  (``distributed.as_completed``), so a manifest of any length never builds more futures than that.
* :func:`run_item` is what a worker runs for one item: it announces the start (an event the driver records in
  the ledger), runs the job and returns its record, or the error as text: a bad item never raises out of the
  worker.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import MedsamkitError, OptionError

log = logging.getLogger("medsamkit")


@dataclass(frozen=True)
class ModelSpec:
    """The model a job loads on each worker. threads: CPU threads of one predictor; None = the worker's
    cores divided by its Dask threads. adapter: a ``medsamkit finetune`` result (``adapter.pt`` or its run
    folder, a prompted mode) loaded on top of the base it names (``checkpoint``: that base's weights; ``name`` is
    then unused), run on PyTorch unless ``backend`` names another engine. device / precision: where each worker runs
    the model and the encoder's arithmetic (:class:`~medsamkit.predict.Predictor`; a GPU is each worker's own)."""

    name: str = "litemedsam"
    checkpoint: str | None = None
    backend: str = "auto"
    threads: int | None = None
    adapter: str | None = None
    device: str = "cpu"
    precision: str = "fp32"

    def settings(self) -> dict[str, Any]:
        """What decides the results (recorded in the ledger; threads and the device do not)."""
        out: dict[str, Any] = {"model": self.name, "checkpoint": self.checkpoint, "backend": self.backend}
        if self.adapter is not None:
            out["adapter"] = self.adapter
        if self.precision != "fp32":
            out["precision"] = self.precision
        return out

    @property
    def record_name(self) -> str | None:
        """The model name results record: ``name``, or None with an adapter (the adapted model's own name,
        ``<base>+<mode>``, as ``medsamkit segment --adapter`` records)."""
        return None if self.adapter is not None else self.name

    def predictor(self, threads: int | None = None) -> Any:
        """A new :class:`~medsamkit.predict.Predictor` of this model."""
        from ..predict.predictor import Predictor

        if self.adapter is not None:
            from ..models.adapted import load_adapted

            model = load_adapted(self.adapter, self.checkpoint, prompted=True)
            backend = "torch" if self.backend == "auto" else self.backend
            return Predictor(model, backend=backend, threads=threads, device=self.device, precision=self.precision)
        return Predictor(
            self.name,
            checkpoint=self.checkpoint,
            backend=self.backend,
            threads=threads,
            device=self.device,
            precision=self.precision,
        )


@dataclass
class EngineOptions:
    """Where items run. scheduler: address of an existing Dask scheduler (``tcp://HOST:PORT``); otherwise a
    local cluster of ``workers`` processes (default: cores / threads_per_worker), each running one item at a
    time with ``threads_per_worker`` CPU threads (default 1). dashboard: serve the Dask dashboard (local
    cluster, a free port on 127.0.0.1). max_in_flight: futures alive at once (default: 2 per worker thread)."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    dashboard: bool = False
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "threads_per_worker", "max_in_flight"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise OptionError(f"{name.replace('_', '-')} must be at least 1, got {v}")
        if self.scheduler is not None and self.workers is not None:
            raise OptionError("give either a scheduler address or a number of local workers, not both")

    def local_layout(self) -> tuple[int, int]:
        """(workers, threads per worker) of the local cluster."""
        from ..models.backends import default_threads

        cores = default_threads()
        threads = self.threads_per_worker or 1
        workers = self.workers or max(1, cores // threads)
        return workers, threads


# -- on the workers ----------------------------------------------------------------------------------------

_POOL: dict[tuple[ModelSpec, int], list[Any]] = {}
_POOL_LOCK = threading.Lock()
_CONFIGURED: dict[str, int] = {}
LOADS = {"count": 0, "seconds": 0.0}


def _worker_threads(spec: ModelSpec) -> int:
    if spec.threads:
        return spec.threads
    from ..models.backends import default_threads

    nthreads = 1
    try:
        from distributed import get_worker

        nthreads = max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        pass
    return max(1, default_threads() // nthreads)


def _configure_threads(threads: int) -> None:
    """Give the libraries of this process ``threads`` threads (torch when loaded, OpenCV, medsamkit's default)."""
    os.environ["MEDSAMKIT_THREADS"] = str(threads)
    if _CONFIGURED.get("threads") != threads:
        import cv2

        cv2.setNumThreads(threads)
        _CONFIGURED["threads"] = threads
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class PredictorLease:
    """A predictor from this process's pool, taken on first :meth:`get` (so an item that fails before it
    needs the model loads nothing) and given back by :meth:`release`."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.threads = _worker_threads(spec)
        self._predictor: Any = None
        self.load_s = 0.0

    def get(self) -> Any:
        if self._predictor is None:
            _configure_threads(self.threads)
            key = (self.spec, self.threads)
            with _POOL_LOCK:
                idle = _POOL.setdefault(key, [])
                predictor = idle.pop() if idle else None
            if predictor is None:
                t0 = time.perf_counter()
                predictor = self.spec.predictor(self.threads)
                self.load_s = time.perf_counter() - t0
                with _POOL_LOCK:
                    LOADS["count"] += 1
                    LOADS["seconds"] += self.load_s
                _configure_threads(self.threads)  # the torch backend may have just imported torch
            self._predictor = predictor
        return self._predictor

    def release(self) -> None:
        if self._predictor is not None:
            with _POOL_LOCK:
                _POOL.setdefault((self.spec, self.threads), []).append(self._predictor)
            self._predictor = None


def worker_predictor(spec: ModelSpec) -> Any:
    """A predictor for ``spec`` from this process's pool, created on first use (the caller keeps it; for
    code that runs one task at a time per process)."""
    lease = PredictorLease(spec)
    predictor = lease.get()
    lease.release()
    return predictor


def warm_worker(spec: ModelSpec) -> float:
    """On a worker: import what items need and load the model into the pool; returns the seconds it took."""
    t0 = time.perf_counter()
    from ..io import read_image  # noqa: F401 - the imports every item needs, paid once per worker
    from ..predict import jobs  # noqa: F401

    worker_predictor(spec)
    return round(time.perf_counter() - t0, 3)


def error_text(e: BaseException) -> str:
    """One readable line: ``Type: first line of the message`` (at most 500 characters)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:500]


def _announce(topic: str | None, item_id: str) -> str | None:
    if topic is None:
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    worker.log_event(topic, {"id": item_id, "worker": worker.address, "pid": os.getpid(), "t": time.time()})
    return worker.address


def run_item(job: Any, item_id: str, payload: Any, topic: str | None = None) -> dict[str, Any]:
    """Run one item of ``job`` on this worker: ``{"ok": True, "record": ...}`` or ``{"ok": False, "error": one
    line, "detail": traceback tail}``, with ``seconds`` (worker-side) and the worker's address and pid."""
    address = _announce(topic, item_id)
    t0 = time.perf_counter()
    lease = PredictorLease(job.model)
    out: dict[str, Any] = {"worker": address, "pid": os.getpid()}
    try:
        out["record"] = job.run(item_id, payload, lease)
        out["ok"] = True
    except Exception as e:  # noqa: BLE001 - a bad item is a failed row, never a crashed job
        out.update(ok=False, error=job.error_text(e) if hasattr(job, "error_text") else error_text(e))
        out["detail"] = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:]
    finally:
        lease.release()
    out["seconds"] = round(time.perf_counter() - t0, 4)
    out["model_load_s"] = round(lease.load_s, 4)
    return out


# -- on the driver -----------------------------------------------------------------------------------------


def _wait_ready(ac: Any, timeout: float) -> None:
    """Block until ``ac`` (an ``as_completed``) has a completed future or ``timeout`` seconds pass."""
    cond = getattr(ac, "thread_condition", None)  # notified by as_completed on every completion
    if cond is None:  # pragma: no cover - another distributed version
        time.sleep(timeout)
        return
    with cond:
        if not ac.has_ready():
            cond.wait(timeout=timeout)


class DaskEngine:
    """A Dask client, started on first use and closed by :meth:`close` (or the ``with`` block)."""

    def __init__(self, options: EngineOptions | None = None, client: Any = None) -> None:
        self.options = options or EngineOptions()
        self._client = client
        self._own: list[Any] = []  # what this engine started and must close
        self.startup_s = 0.0
        self.warm_s = 0.0
        self.started = client is not None
        self.external = client is not None  # a client given by the caller (not closed here)

    def __enter__(self) -> DaskEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> Any:
        if self._client is None:
            self._start()
        return self._client

    def _start(self) -> None:
        from distributed import Client, LocalCluster

        t0 = time.perf_counter()
        o = self.options
        if o.scheduler is not None:
            try:
                self._client = Client(o.scheduler, timeout="30s")
            except (OSError, TimeoutError) as e:
                raise MedsamkitError(f"cannot reach the Dask scheduler at {o.scheduler}: {e}") from e
            self._own.append(self._client)
            try:
                self._client.wait_for_workers(1, timeout=120)
            except TimeoutError as e:
                raise MedsamkitError(f"no Dask worker joined the scheduler at {o.scheduler} within 120 s") from e
        else:
            workers, threads = o.local_layout()
            from ..models.backends import default_threads

            cores = default_threads()
            if workers * threads > cores:
                log.warning(
                    "%d workers x %d threads = %d threads on %d cores: they will compete",
                    workers,
                    threads,
                    workers * threads,
                    cores,
                )
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,  # one item at a time per process; the model uses `threads` cores
                processes=True,
                host="127.0.0.1",
                # the scheduler's HTTP server (health routes; the dashboard only when asked) on 127.0.0.1 too
                dashboard_address="127.0.0.1:8787" if o.dashboard else "127.0.0.1:0",
                scheduler_kwargs={"dashboard": o.dashboard},
                silence_logs=logging.ERROR,
            )
            self._own.append(cluster)
            self._client = Client(cluster)
            self._own.insert(0, self._client)
            if o.dashboard:
                log.info("Dask dashboard: %s", self._client.dashboard_link)
        self.startup_s = time.perf_counter() - t0
        self.started = True

    def warm(self, spec: ModelSpec) -> dict[str, float]:
        """Load ``spec`` on every connected worker now (per-worker start-up, kept out of the items' timings; a
        worker that joins later loads it on its first item). Returns seconds per worker address."""
        t0 = time.perf_counter()
        out = self.client.run(warm_worker, spec)
        self.warm_s = time.perf_counter() - t0
        return out

    def model_threads(self) -> int | None:
        """Threads per predictor: ``threads_per_worker`` for a local cluster (default 1); with a scheduler or a
        given client the given value, else None (each worker divides its cores by its Dask threads)."""
        if self.options.scheduler is None and not self.external:
            return self.options.local_layout()[1]
        return self.options.threads_per_worker

    def total_threads(self) -> int:
        """Dask threads (concurrent items) over all workers now connected."""
        return max(1, sum(self.client.nthreads().values()))

    def max_in_flight(self) -> int:
        return self.options.max_in_flight or max(2, 2 * self.total_threads())

    def stream(
        self,
        fn: Callable[..., Any],
        tasks: Iterable[tuple[Any, str, tuple[Any, ...]]],
        *,
        idle: Callable[[], None] | None = None,
    ) -> Iterator[tuple[Any, Any]]:
        """Submit ``fn(*args)`` for each ``(tag, key, args)`` of ``tasks`` with at most :meth:`max_in_flight`
        futures alive; yield ``(tag, future)`` as each completes (finished, error or cancelled). ``idle()`` is
        called at least every 50 ms while nothing completes. Closing the generator cancels what is in flight."""
        from distributed import as_completed

        client = self.client
        limit = self.max_in_flight()
        ac = as_completed(loop=client.loop)
        in_flight: dict[str, tuple[Any, Any]] = {}
        source = iter(tasks)
        exhausted = False

        def refill() -> None:
            nonlocal exhausted
            while not exhausted and len(in_flight) < limit:
                try:
                    tag, key, args = next(source)
                except StopIteration:
                    exhausted = True
                    return
                fut = client.submit(fn, *args, key=key, pure=False)
                in_flight[fut.key] = (tag, fut)
                ac.add(fut)

        try:
            refill()
            while in_flight:
                batch = ac.next_batch(block=False)
                if not batch:
                    if idle is not None:
                        idle()
                    _wait_ready(ac, 0.05)
                    continue
                for fut in batch:
                    tag, _ = in_flight.pop(fut.key)
                    yield tag, fut
                    fut.release()
                refill()
        finally:
            if in_flight:
                client.cancel([f for _, f in in_flight.values()])

    def close(self) -> None:
        for thing in self._own:
            try:
                thing.close()
            except Exception:  # noqa: BLE001 - closing after an interrupt may find it half gone
                pass
        self._own = []
        self._client = None
