"""Annotation sessions: one volume, its label mask, label names, an undo history and saved files per session.

A session lives in ``state_dir/<id>/`` (mode 0700, its files 0600): ``session.json`` (source, intensity options,
segment names and settings, exports), ``labels/`` (the label volume in chunks of z slices, each cropped to its
non-zero box), ``history/`` (undo and redo steps, see :mod:`medsamkit.app.history`), a copy of an uploaded source
file and an ``exports/`` folder. Every file is written atomically (temp file + ``os.replace``) after every change,
and a change rewrites only the label chunks it touched, so a new store on the same folder finds every session as
it was, undo and redo included. Volumes are loaded lazily and unloaded when more than ``max_loaded`` sessions
hold one (or their arrays together pass ``Limits.max_volume_bytes``); the history is kept apart from the volume,
so unloading a volume never loses it. Sessions idle for longer than ``Limits.session_ttl_s`` are removed, and
their number and disk use are capped (see :class:`~medsamkit.app.limits.Limits`).

Arrays: ``display`` is the intensity-mapped picture the model and viewer see, ``(Z, Y, X)`` uint8, or
``(1, Y, X, 3)`` for a colour 2D image; ``labels`` is ``(Z, Y, X)`` uint8. A 2D image is a one-slice volume.
Slices along ``axis`` z, y, x are ``array[k]``, ``array[:, k]``, ``array[:, :, k]``: their (column, row) pixel
coordinates are (x, y), (x, z), (y, z), as in :mod:`medsamkit.predict.volume`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .._files import atomic_write_bytes
from ..errors import FileInputError, GeometryError, InputError, MedsamkitError
from ..io import MedicalImage, Segment, read_image, read_mask
from ..io.formats import split_suffix
from ..io.geometry import grid_problem, resample_uniform
from ..preprocess.intensity import IntensityPreset
from ..preprocess.picture import fit_picture, volume_pictures
from .detached import detached_files
from .history import Change, History, Region
from .limits import Limits, footprint, volume_cost_limit
from .refine import LastSegment

log = logging.getLogger("medsamkit.app")

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{32}$")
AXES = ("z", "y", "x")
# what the app accepts and saves, among the endings of medsamkit.io.formats (split_suffix tells a name's)
UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".png", ".jpg", ".jpeg", ".npz")
MASK_UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".png", ".dcm")  # a mask to review: these, on the volume's grid
SAVE_FORMATS = {"nii.gz": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "dcm": ".dcm", "png": ".png"}
_AXIS_POS = {"z": 0, "y": 1, "x": 2}
LABEL_CHUNK = 16  # z slices per saved label file
PROMPT_LOG_BYTES = 2 * 2**20  # a session's prompt log keeps its newest lines within this size


class AppError(MedsamkitError):
    """An error of the app's own (unknown session, a conflict, a refused path), shown to the client as
    ``{"error": message}`` with HTTP ``status``; library errors (:class:`MedsamkitError`) are shown the same way
    with their own status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def slice_index(axis: str, k: int) -> tuple[Any, ...]:
    """Index of slice ``k`` along ``axis`` in a ``(Z, Y, X)`` array (2D result in the slice frame)."""
    return {"z": (k,), "y": (slice(None), k), "x": (slice(None), slice(None), k)}[axis]


def slice_region(axis: str, k: int, shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    """The one-slice 3D region of slice ``k`` along ``axis`` (explicit bounds, for the undo history)."""
    r = [slice(0, n) for n in shape[:3]]
    r[_AXIS_POS[axis]] = slice(k, k + 1)
    return tuple(r)  # type: ignore[return-value]  # one slice per axis of the (Z, Y, X) shape: three


def private(path: Path) -> None:
    """Owner-only permissions: 0700 for a folder, 0600 for a file (best effort)."""
    try:
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    except OSError:  # pragma: no cover - a file removed meanwhile
        pass


@dataclass
class Job:
    """Progress of a session's long job (propagation); ``done``/``total`` counts slices."""

    kind: str = ""
    done: int = 0
    total: int = 0
    running: bool = False
    error: str | None = None
    started: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.kind or None,
            "running": self.running,
            "done": self.done,
            "total": self.total,
            "error": self.error,
            "seconds": round(time.time() - self.started, 1) if self.running else None,
        }


@dataclass
class Volume:
    """A loaded volume. image: the source's geometry and modality (its array replaced by the display picture);
    geom3d: the same as a 3D grid (a 2D image as one slice) for NIfTI/NRRD/MHA writing."""

    image: MedicalImage
    geom3d: MedicalImage
    display: np.ndarray
    labels: np.ndarray
    preset: IntensityPreset
    _zcounts: np.ndarray | None = None

    @property
    def slice_counts(self) -> np.ndarray:
        """Voxels of each label value on each z slice: ``(Z, 256)`` int64, counted once (one pass over the
        volume) and then kept up to date by :meth:`write`, so label statistics never need another pass."""
        if self._zcounts is None:
            z = self.labels.shape[0]
            self._zcounts = np.stack([np.bincount(self.labels[k].ravel(), minlength=256) for k in range(z)]).astype(np.int64)
        return self._zcounts

    @property
    def counts(self) -> np.ndarray:
        """Voxels of each label value 0..255 (int64, 256)."""
        return self.slice_counts.sum(axis=0)

    def write(self, region: Region, values: np.ndarray) -> None:
        """Write ``values`` (the region's shape, uint8) into ``region`` of the labels, keeping the counts exact."""
        values = np.asarray(values, np.uint8)
        if self._zcounts is not None:
            z0 = region[0].start
            for k in range(values.shape[0]):
                self._zcounts[z0 + k] -= np.bincount(self.labels[(z0 + k, *region[1:])].ravel(), minlength=256)
                self._zcounts[z0 + k] += np.bincount(values[k].ravel(), minlength=256)
        self.labels[region] = values

    @property
    def voxel_mm3(self) -> float:
        """Volume of one voxel in mm³ (a 2D image: the pixel's area in mm², its slice taken as 1 mm)."""
        return float(np.prod(self.geom3d.spacing))

    @property
    def is_2d(self) -> bool:
        return not self.image.is_volume

    @property
    def rgb(self) -> bool:
        return self.display.ndim == 4

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.labels.shape

    @property
    def nbytes(self) -> int:
        """Memory of the arrays the volume keeps (display + labels)."""
        return int(self.display.nbytes + self.labels.nbytes)

    def check_slice(self, axis: str, k: int) -> tuple[int, int]:
        """Validate slice ``k`` along ``axis``; returns the slice's (height, width) = (rows, columns)."""
        if axis not in AXES:
            raise AppError(422, f"axis must be one of {', '.join(AXES)}, got {axis!r}")
        if self.is_2d and axis != "z":
            raise AppError(422, "a 2D image has only axis z (slice 0)")
        n = self.shape[_AXIS_POS[axis]]
        if not 0 <= k < n:
            raise AppError(422, f"slice {k} is outside 0..{n - 1} along {axis}")
        h, w = self.labels[slice_index(axis, k)].shape
        return h, w

    def picture(self, axis: str, k: int) -> np.ndarray:
        """The model's input for slice ``k``: ``(H, W)`` uint8, or ``(H, W, 3)`` for colour."""
        return self.display[slice_index(axis, k)]

    def info(self) -> dict[str, Any]:
        img = self.image
        z, y, x = self.shape
        spacing = list(img.spacing) if img.is_volume else [*img.spacing, 1.0]
        out = {
            "shape": [z, y, x],
            "shape_order": "z,y,x",
            "spacing": [float(s) for s in spacing],
            "spacing_order": "x,y,z",
            "is_2d": self.is_2d,
            "rgb": self.rgb,
            "modality": img.modality,
            "modality_source": img.modality_source,
            "format": img.format,
            "preset": self.preset.describe(),
            "slice_frames": {"z": "x,y", "y": "x,z", "x": "y,z"} if not self.is_2d else {"z": "x,y"},
            "resampled": None,
        }
        r = img.meta.get("resampled")
        if r:
            out["resampled"] = {
                "why": r.get("source_problem"),
                "slices_before": len(r.get("source_positions_mm", [])),
                "slices_after": len(r.get("positions_mm", [])),
                "spacing_mm": r.get("spacing_mm"),
                "interpolated_slices": r.get("interpolated_slices"),
                "method": r.get("method"),
            }
        return out


class Session:
    """One client's annotation state. ``lock`` guards ``meta``, ``volume``, ``undo`` and ``last_segment``; ``job``
    is read without it. ``last_seen``: wall-clock time of the last request (for idle expiry). ``last_segment``: the
    last segment request and its low-res logits, in memory only (see :mod:`medsamkit.app.refine`); every change
    of the labels, an undo and a new volume drop it, and the segment route records its own after its change."""

    def __init__(self, sid: str, folder: Path, meta: dict[str, Any], undo_steps: int = 20, undo_bytes: int = 32 * 2**20) -> None:
        self.sid = sid
        self.folder = folder
        self.meta = meta
        self.volume: Volume | None = None
        self.history = History(folder / "history", undo_steps, undo_bytes, meta.get("volume_id"))
        self.last_segment: LastSegment | None = None
        self.lock = threading.RLock()
        self.job = Job()
        self.last_used = time.monotonic()
        self.last_seen = time.time()

    @property
    def names(self) -> dict[int, str]:
        return {int(k): v for k, v in self.meta.get("names", {}).items()}

    @property
    def segments(self) -> dict[int, dict[str, Any]]:
        """Per label value, its settings besides the name: ``color``, ``visible``, ``locked``, ``reviewed``
        (those set)."""
        return {int(k): dict(v) for k, v in self.meta.get("segments", {}).items()}

    @property
    def exports_dir(self) -> Path:
        return self.folder / "exports"

    @property
    def undo(self) -> deque[Change]:
        """The undo steps, oldest first (see :class:`~medsamkit.app.history.History`)."""
        return self.history.undo

    @property
    def undo_nbytes(self) -> int:
        return sum(c.nbytes for c in self.history.undo)

    @property
    def unsaved(self) -> bool:
        """Whether the labels changed since the session last saved them (or were never saved while not empty)."""
        return int(self.meta.get("generation", 0)) != int(self.meta.get("saved_generation", 0))

    def disk_used(self) -> int:
        """Bytes of the session's files."""
        total = 0
        for f in self.folder.rglob("*"):
            try:
                if f.is_file() and not f.is_symlink():
                    total += f.stat().st_size
            except OSError:  # removed meanwhile
                pass
        return total


def _new_meta() -> dict[str, Any]:
    return {
        "version": 1,
        "created": time.time(),
        "volume_id": None,
        "source": None,
        "options": {},
        "names": {},
        "segments": {},
        "exports": [],
    }


class SessionStore:
    """All sessions of an app, persisted under ``state_dir``; ``data_dir`` is the folder clients may open
    volumes from by relative path (None: none). ``limits``: the bounds of :class:`Limits`."""

    def __init__(
        self, state_dir: Path, data_dir: Path | None = None, *, max_loaded: int = 8, limits: Limits | None = None
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.max_loaded = max_loaded
        self.limits = limits or Limits()
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.load_lock = threading.Lock()  # one volume is decoded at a time: its working copies are bounded once
        self._restore()

    # -- registry -----------------------------------------------------------------------------------------
    def _restore(self) -> None:
        now = time.time()
        for folder in sorted(self.state_dir.iterdir()):
            if not (folder.is_dir() and SESSION_ID.match(folder.name) and (folder / "session.json").is_file()):
                continue
            try:
                meta = json.loads((folder / "session.json").read_text())
                if not isinstance(meta, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as e:
                log.warning("skipping session %s: unreadable session.json (%s)", folder.name, e)
                continue
            seen = max((f.stat().st_mtime for f in folder.iterdir() if f.is_file()), default=folder.stat().st_mtime)
            if now - seen > self.limits.session_ttl_s:
                log.info("removing session %s: idle for %.1f hours", folder.name, (now - seen) / 3600)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            private(folder)
            s = Session(folder.name, folder, {**_new_meta(), **meta}, self.limits.undo_steps, self.limits.undo_bytes)
            s.last_seen = seen
            self._sessions[folder.name] = s

    def create(self) -> Session:
        """A new empty session; idle sessions past the time limit are removed first. 503 when the server holds
        ``max_sessions`` sessions."""
        self.expire_idle()
        with self._lock:
            if len(self._sessions) >= self.limits.max_sessions:
                raise AppError(
                    503,
                    f"the server holds its maximum of {self.limits.max_sessions} sessions; delete one "
                    f"(DELETE /api/sessions/ID) or wait until idle ones expire",
                )
            sid = secrets.token_urlsafe(24)
            folder = self.state_dir / sid
            folder.mkdir(mode=0o700)
            private(folder)
            s = Session(sid, folder, _new_meta(), self.limits.undo_steps, self.limits.undo_bytes)
            self._sessions[sid] = s
        self.save_meta(s)
        return s

    def get(self, sid: str) -> Session:
        with self._lock:
            s = self._sessions.get(sid)
        if s is None:
            raise AppError(404, "unknown session")
        s.last_used = time.monotonic()
        s.last_seen = time.time()
        return s

    def peek(self, sid: str) -> Session | None:
        """The session ``sid`` if the store holds it, without counting as a use (for background work)."""
        with self._lock:
            return self._sessions.get(sid)

    def delete(self, sid: str) -> None:
        s = self.get(sid)
        with s.lock:
            if s.job.running:
                raise AppError(409, "a propagation is running in this session")
            self._drop(s)

    def _drop(self, s: Session) -> None:
        with self._lock:
            self._sessions.pop(s.sid, None)
        s.volume = None
        s.history.clear()
        s.last_segment = None
        shutil.rmtree(s.folder, ignore_errors=True)

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Remove the sessions idle for longer than ``session_ttl_s`` (not those busy now); returns their ids."""
        now = time.time() if now is None else now
        with self._lock:
            idle = [s for s in self._sessions.values() if now - s.last_seen > self.limits.session_ttl_s]
        gone = []
        for s in idle:
            if s.job.running or not s.lock.acquire(blocking=False):
                continue
            try:
                log.info("removing session %s: idle for %.1f hours", s.sid, (now - s.last_seen) / 3600)
                self._drop(s)
                gone.append(s.sid)
            finally:
                s.lock.release()
        return gone

    def __len__(self) -> int:
        return len(self._sessions)

    # -- disk ---------------------------------------------------------------------------------------------
    def disk_used(self) -> int:
        """Bytes of every session's files."""
        with self._lock:
            sessions = list(self._sessions.values())
        return sum(s.disk_used() for s in sessions)

    def upload_room(self, s: Session) -> int:
        """The largest upload session ``s`` may send now: the upload limit, or less when the session's or the
        server's disk quota is nearly used (what a new volume replaces is not counted)."""
        others = self.disk_used() - s.disk_used()
        return max(0, min(self.limits.max_upload_bytes, self.limits.max_session_disk, self.limits.max_disk - others))

    def check_disk(self, s: Session, new_files: list[Path]) -> None:
        """After writing ``new_files`` into the session: remove them again and answer 507 when the session or
        the server is over its disk quota."""
        mine, total = s.disk_used(), self.disk_used()
        if mine <= self.limits.max_session_disk and total <= self.limits.max_disk:
            for f in new_files:
                private(f)
            return
        for f in new_files:
            f.unlink(missing_ok=True)
        if mine > self.limits.max_session_disk:
            raise AppError(507, f"this session's files would take more than its quota of {self.limits.max_session_disk} bytes")
        raise AppError(507, f"the sessions' files would take more than the server's quota of {self.limits.max_disk} bytes")

    # -- persistence --------------------------------------------------------------------------------------
    def log_prompt(self, s: Session, prompt: dict[str, Any]) -> None:
        """Append a segment request's prompts to ``prompts.jsonl`` with the time and the intensity mapping the
        model saw (:meth:`IntensityPreset.describe`): the record of how the labels were made. The file is kept
        under :data:`PROMPT_LOG_BYTES` (past it, the older half of the lines is dropped)."""
        vol = self.volume(s)
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **prompt, "intensity": vol.preset.describe()}
        f = s.folder / "prompts.jsonl"
        with open(f, "a") as out:
            out.write(json.dumps(line) + "\n")
        private(f)
        if f.stat().st_size > PROMPT_LOG_BYTES:
            lines = f.read_text().splitlines(keepends=True)
            atomic_write_bytes(f, "".join(lines[len(lines) // 2 :]).encode())
            private(f)

    def prompts(self, s: Session, last: int = 1000) -> list[dict[str, Any]]:
        """The last ``last`` logged prompts of the session's volume (oldest first)."""
        f = s.folder / "prompts.jsonl"
        if not f.is_file():
            return []
        out = []
        for line in f.read_text().splitlines()[-last:]:
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut short by a crash
                continue
        return out

    def save_meta(self, s: Session) -> None:
        atomic_write_bytes(s.folder / "session.json", (json.dumps(s.meta, indent=1) + "\n").encode())
        private(s.folder / "session.json")

    def save_labels(self, s: Session, zs: tuple[int, int] | None = None) -> None:
        """Write the label volume, or only its chunks holding z slices ``zs`` = [first, last) (what a change
        touched): ``labels/z<first>.bin`` per :data:`LABEL_CHUNK` z slices, each cropped to its non-zero box and
        compressed, written atomically; an empty chunk has no file. A change's save costs what it touched, not
        the volume."""
        if s.volume is None:
            return
        lab = s.volume.labels
        folder = s.folder / "labels"
        folder.mkdir(mode=0o700, exist_ok=True)
        first, last = (0, lab.shape[0]) if zs is None else zs
        for z0 in range(first // LABEL_CHUNK * LABEL_CHUNK, last, LABEL_CHUNK):
            chunk = lab[z0 : z0 + LABEL_CHUNK]
            f = folder / f"z{z0:05d}.bin"
            nz = [np.flatnonzero(chunk.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
            if not nz[0].size:
                f.unlink(missing_ok=True)
                continue
            offset = [z0 + int(nz[0][0]), int(nz[1][0]), int(nz[2][0])]
            block = np.ascontiguousarray(chunk[tuple(slice(ix[0], ix[-1] + 1) for ix in nz)])
            head = {"volume_id": str(s.meta["volume_id"]), "shape": list(lab.shape), "offset": offset, "block": list(block.shape)}
            atomic_write_bytes(f, json.dumps(head).encode() + b"\n" + zlib.compress(block.tobytes(), 1))
            private(f)
        if zs is None:  # every chunk is written: an older version's single file is no longer needed
            (s.folder / "labels.npz").unlink(missing_ok=True)

    def _load_labels(self, s: Session, shape: tuple[int, int, int]) -> np.ndarray:
        lab = np.zeros(shape, np.uint8)
        vid = str(s.meta["volume_id"])
        old = s.folder / "labels.npz"  # written by an older version: one file, cropped to the non-zero box
        if old.is_file():
            with np.load(old, allow_pickle=False) as z:
                if tuple(int(v) for v in z["shape"]) == shape and str(z["volume_id"]) == vid:
                    block, off = z["block"], [int(v) for v in z["offset"]]
                    if block.size:
                        lab[tuple(slice(o, o + n) for o, n in zip(off, block.shape))] = block
        for f in sorted((s.folder / "labels").glob("z*.bin")):
            try:
                head_raw, data = f.read_bytes().split(b"\n", 1)
                head = json.loads(head_raw)
                if tuple(head["shape"]) != shape or head["volume_id"] != vid:
                    # only after a crash between the writes of opening a new volume: these are the old volume's
                    log.warning("session %s: saved labels %s belong to a previous volume; skipped", s.sid, f.name)
                    continue
                block = np.frombuffer(zlib.decompress(data), np.uint8).reshape(head["block"])
                lab[tuple(slice(o, o + n) for o, n in zip(head["offset"], block.shape))] = block
            except (OSError, ValueError, KeyError, TypeError, zlib.error) as e:
                log.warning("session %s: unreadable saved labels %s (%s); skipped", s.sid, f.name, e)
        return lab

    # -- volumes ------------------------------------------------------------------------------------------
    def load(self, path: Path, options: dict[str, Any], name: str | None) -> tuple[MedicalImage, np.ndarray, IntensityPreset]:
        """:func:`load_source` with this store's volume limit, one volume at a time."""
        with self.load_lock:
            return load_source(path, options, name, max_volume_bytes=self.limits.max_volume_bytes)

    def volume(self, s: Session) -> Volume:
        """The session's volume, loaded if needed (call with ``s.lock`` held)."""
        if s.volume is not None:
            return s.volume
        path, src = self._source(s)
        image, display, preset = self.load(path, s.meta.get("options", {}), src.get("name"))
        labels = self._load_labels(s, display.shape[:3])
        s.volume = make_volume(image, display, labels, preset)
        if (s.folder / "labels.npz").is_file():  # saved by an older version: rewrite it as chunks once
            self.save_labels(s)
        self._evict(keep=s)
        return s.volume

    def remap(self, s: Session, preset: str, window: tuple[float, float] | None) -> Volume:
        """Map the session's volume with another intensity ``preset`` / ``window`` (call with ``s.lock`` held): the
        picture the viewer and the model see changes; labels, undo/redo and saved files are kept. The choice is
        kept in the session's options (a reload maps the volume the same way)."""
        vol = self.volume(s)
        if s.job.running:
            raise AppError(409, "a propagation is running in this session")
        path, src = self._source(s)
        options = {**s.meta.get("options", {}), "preset": preset, "window": list(window) if window else None}
        image, display, new_preset = self.load(path, options, src.get("name"))
        if display.shape[:3] != vol.shape:
            raise AppError(409, "the volume's file changed on disk since it was opened; open it again")
        vol.image, vol.display, vol.preset = image, display, new_preset
        vol.geom3d = make_volume(image, display, vol.labels, new_preset).geom3d
        s.meta["options"] = options
        s.last_segment = None
        (s.folder / "display.nii.gz").unlink(missing_ok=True)
        self.save_meta(s)
        return vol

    def _source(self, s: Session) -> tuple[Path, dict[str, Any]]:
        """The file of the session's volume and its source record; 409 when there is none or it is gone."""
        src = s.meta.get("source")
        if not src:
            raise AppError(409, "no volume is open in this session: POST one to /volume first")
        if src["kind"] == "upload":
            path = s.folder / src["file"]
            if not path.is_file():
                raise AppError(409, "this session's uploaded volume is missing from the server's state folder")
        else:
            try:
                path = self.resolve_data_path(src["path"])
            except AppError as e:
                raise AppError(409, f"this session's volume {src['path']!r} is not available: {e.message}") from None
        return path, src

    def install(
        self, s: Session, loaded: tuple[MedicalImage, np.ndarray, IntensityPreset], source: dict, options: dict
    ) -> Volume:
        """Make a freshly read volume the session's (call with ``s.lock`` held): labels start empty, undo and
        saved files are cleared."""
        image, display, preset = loaded
        if s.job.running:
            raise AppError(409, "a propagation is running in this session")
        old = s.meta.get("source") or {}
        if old.get("kind") == "upload" and old.get("file") != source.get("file"):
            (s.folder / old["file"]).unlink(missing_ok=True)
        shutil.rmtree(s.exports_dir, ignore_errors=True)
        (s.folder / "display.nii.gz").unlink(missing_ok=True)
        (s.folder / "prompts.jsonl").unlink(missing_ok=True)
        s.meta.update(
            volume_id=secrets.token_hex(8),
            source=source,
            options=options,
            exports=[],
            names={},
            segments={},
            generation=0,
            saved_generation=0,
        )
        s.volume = make_volume(image, display, np.zeros(display.shape[:3], np.uint8), preset)
        s.history.clear(s.meta["volume_id"])
        s.last_segment = None
        self.save_labels(s)
        self.save_meta(s)
        self._evict(keep=s)
        return s.volume

    def _evict(self, keep: Session) -> None:
        """Unload the least recently used volumes (not ``keep``'s) while more than ``max_loaded`` are loaded or
        their arrays together take more than ``max_volume_bytes``. Labels are on disk, undo stays in memory."""
        with self._lock:
            loaded = sorted(
                (x for x in self._sessions.values() if x.volume is not None and x is not keep), key=lambda x: x.last_used
            )
        count = len(loaded) + 1
        resident = sum(x.volume.nbytes for x in loaded if x.volume is not None) + (keep.volume.nbytes if keep.volume else 0)
        for other in loaded:
            if count <= self.max_loaded and resident <= self.limits.max_volume_bytes:
                break
            if other.job.running or not other.lock.acquire(blocking=False):
                continue
            try:
                if other.volume is not None:
                    resident -= other.volume.nbytes
                    other.volume = None
                    count -= 1
            finally:
                other.lock.release()

    def resolve_data_path(self, rel: Any) -> Path:
        """A client's relative path resolved inside the data folder; 403 for anything that would leave it,
        including the detached data files a MetaImage/NRRD header names (see :mod:`medsamkit.app.detached`)."""
        if self.data_dir is None:
            raise AppError(403, "this server has no data folder (start it with --data DIR)")
        if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
            raise AppError(422, "path must be a non-empty relative path")
        target = self._inside(rel, self.data_dir, rel)
        if not target.exists():
            raise AppError(404, f"{rel}: no such file or folder in the data folder")
        if target.is_dir():  # a DICOM series: every file read must stay inside too
            for f in target.iterdir():
                if not f.resolve().is_relative_to(self.data_dir):
                    raise AppError(403, f"{rel}: the folder links to files outside the data folder")
        elif target.is_file():
            for ref in detached_files(target):
                self._inside(ref, target.parent, f"{rel}: its header's data file {ref!r}", header=True)
        return target

    def _inside(self, rel: str, base: Path, what: str, header: bool = False) -> Path:
        """``base / rel`` resolved (symlinks followed); 403 when ``rel`` is absolute, has ``..`` or leads out of
        the data folder."""
        root = self.data_dir
        assert root is not None
        p = PurePosixPath(rel.replace("\\", "/")) if header else PurePosixPath(rel)
        if p.is_absolute() or rel.startswith(("/", "\\", "~")) or ".." in p.parts or ".." in rel.split("\\"):
            if header:
                raise AppError(403, f"{what} is not a relative path inside the data folder; refused")
            raise AppError(403, "path must be relative to the data folder, without '..'")
        target = (base / p).resolve()
        if not target.is_relative_to(root):
            raise AppError(403, f"{what} leads outside the data folder" if header else "path leads outside the data folder")
        return target

    # -- changes ------------------------------------------------------------------------------------------
    def commit(
        self, s: Session, region: Region, new: np.ndarray, kind: str, extra: dict[str, Any] | None = None
    ) -> Region | None:
        """Write ``new`` into ``region`` of the labels (call with ``s.lock`` held), keep the changed voxels'
        previous values for undo (only their bounding box, compressed, on disk), drop the redo steps, autosave.
        Returns the box of the voxels that changed (None: nothing changed). Drops the session's ``last_segment``
        either way (a segment request records its own afterwards)."""
        s.last_segment = None
        vol = self.volume(s)
        old = vol.labels[region]
        diff = old != new
        if not diff.any():
            return None
        idx = [np.flatnonzero(diff.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
        del diff
        sub: Region = tuple(slice(int(r.start + ix[0]), int(r.start + ix[-1] + 1)) for r, ix in zip(region, idx))  # type: ignore[assignment]
        change = Change.of(kind, sub, vol.labels[sub], extra)
        inner = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(sub, region))
        vol.write(sub, np.asarray(new)[inner])
        if not s.history.record(change):
            log.info("session %s: a %s change too large to undo (%d compressed bytes)", s.sid, kind, change.nbytes)
        self._trim_undo(keep=s)
        self._changed(s, sub)
        return sub

    def _changed(self, s: Session, region: Region) -> None:
        s.meta["generation"] = int(s.meta.get("generation", 0)) + 1
        self.save_labels(s, (region[0].start, region[0].stop))
        self.save_meta(s)

    def _trim_undo(self, keep: Session) -> None:
        """Drop the oldest undo steps of the least recently used sessions while all sessions' undo history
        together is over ``undo_total_bytes`` (``keep``'s last step is kept). Call with ``keep.lock`` held;
        another session's history is read and trimmed only under its own lock, and a session busy with a
        request of its own is left alone this time (it trims when it finishes)."""
        with self._lock:
            sessions = sorted(self._sessions.values(), key=lambda x: x.last_used)
        held = [x for x in sessions if x is not keep and x.lock.acquire(blocking=False)]
        try:
            mine = [x for x in sessions if x is keep or x in held]
            total = sum(x.undo_nbytes for x in mine)
            for x in mine:
                while total > self.limits.undo_total_bytes and len(x.undo) > (1 if x is keep else 0):
                    total -= x.history.drop_oldest()
                if total <= self.limits.undo_total_bytes:
                    break
        finally:
            for x in held:
                x.lock.release()

    def set_slice_label(self, s: Session, axis: str, k: int, label: int, mask: np.ndarray, kind: str) -> Region | None:
        """Replace label ``label`` on slice ``k`` by ``mask`` (2D bool in the slice frame); the mask paints
        over other labels, pixels of ``label`` outside it become background. Returns the box that changed (None:
        nothing)."""
        vol = self.volume(s)
        cur = vol.labels[slice_index(axis, k)]
        if mask.shape != cur.shape:
            raise AppError(422, f"mask is {mask.shape[1]}x{mask.shape[0]} pixels, the slice is {cur.shape[1]}x{cur.shape[0]}")
        self.check_unlocked(s, label)
        new = cur.copy()
        new[new == label] = 0
        new[mask & ~self.locked_pixels(s, cur, label)] = label
        return self.commit(s, slice_region(axis, k, vol.shape), np.expand_dims(new, _AXIS_POS[axis]), kind)

    def recolor(self, s: Session, label: int, into: int, kind: str) -> Region | None:
        """Turn every voxel of ``label`` into ``into`` (0: erase it) and forget ``label``'s name and settings, as
        one undo step ``kind`` (call with ``s.lock`` held; undo brings both back); only the z slices holding
        ``label`` are looked at. Returns the box that changed."""
        self.check_unlocked(s, label)
        if into:
            self.check_unlocked(s, into)
        vol = self.volume(s)
        zs = np.flatnonzero(vol.slice_counts[:, label])
        forgotten = {
            "forget": label,
            "name": s.meta.get("names", {}).get(str(label)),
            "settings": s.meta.get("segments", {}).get(str(label)),
        }
        region = None
        if zs.size:
            where: Region = (slice(int(zs[0]), int(zs[-1]) + 1), slice(0, vol.shape[1]), slice(0, vol.shape[2]))
            new = vol.labels[where].copy()
            new[new == label] = into
            region = self.commit(s, where, new, kind, forgotten)
        self._forget(s, label)
        return region

    def _forget(self, s: Session, label: int) -> None:
        s.meta["names"] = {k: v for k, v in s.meta.get("names", {}).items() if k != str(label)}
        s.meta["segments"] = {k: v for k, v in s.meta.get("segments", {}).items() if k != str(label)}
        self.save_meta(s)

    def _remember(self, s: Session, extra: dict[str, Any]) -> None:
        """Give a segment back the name and settings a delete or merge forgot (its undo)."""
        key = str(extra["forget"])
        if extra.get("name"):
            s.meta["names"] = {**s.meta.get("names", {}), key: extra["name"]}
        if extra.get("settings"):
            s.meta["segments"] = {**s.meta.get("segments", {}), key: extra["settings"]}

    def reshape_segment(self, s: Session, label: int, fn: Any, kind: str, only_slice: int | None = None) -> Region | None:
        """Replace segment ``label`` by ``fn(mask)`` as one undo step ``kind`` (call with ``s.lock`` held): ``fn``
        takes and returns a bool ``(Z, Y, X)`` mask of the segment's bounding box (or of z slice ``only_slice``,
        as one slice) and may not grow it past that box. Voxels it adds take ``label`` only where the labels are
        background (other segments are never overwritten); voxels it drops become background. Returns the box
        that changed (None: nothing; 422 when the segment is empty)."""
        self.check_unlocked(s, label)
        vol = self.volume(s)
        zs = np.flatnonzero(vol.slice_counts[:, label])
        if only_slice is not None:
            vol.check_slice("z", only_slice)
            zs = zs[zs == only_slice]
        if not zs.size:
            where = f" on slice {only_slice}" if only_slice is not None else ""
            raise AppError(422, f"segment {label} has no voxels{where}")
        zr = slice(int(zs[0]), int(zs[-1]) + 1)
        inside = vol.labels[zr] == label
        ys, xs = np.flatnonzero(inside.any(axis=(0, 2))), np.flatnonzero(inside.any(axis=(0, 1)))
        region: Region = (zr, slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1))
        cur = vol.labels[region]
        old = cur == label
        new_mask = np.asarray(fn(old), bool)
        if new_mask.shape != old.shape:  # pragma: no cover - a tool keeps the shape
            raise AssertionError("a mask tool changed the mask's shape")
        new = cur.copy()
        new[old & ~new_mask] = 0
        new[new_mask & ~old & (cur == 0)] = label
        return self.commit(s, region, new, kind)

    def read_mask(
        self, image: MedicalImage, geom3d: MedicalImage, path: Path, name: str
    ) -> tuple[np.ndarray, dict[int, Segment]]:
        """Read the mask file ``path`` for a volume whose source geometry is ``image`` (``geom3d``: the same as a
        3D grid, for a 2D image saved as a one-slice NIfTI/NRRD/MHA): labels ``(Z, Y, X)`` uint8 and segments.
        Nothing of the session changes; 422 naming what differs when it is not on the volume's grid
        (:func:`medsamkit.io.read_mask`), or for a DICOM-SEG of a resampled series."""
        suffix = split_suffix(path)[1]
        if "resampled" in image.meta and suffix == ".dcm":
            raise AppError(422, "this volume was resampled onto a uniform grid: a DICOM-SEG of the series does not lie on it")
        like = geom3d if not image.is_volume and suffix not in (".png", ".dcm") else image
        try:
            labels, segments = read_mask(path, like, max_bytes=self.limits.max_volume_bytes)
        except InputError as e:
            raise type(e)(f"{name}: {e}" if name not in str(e) else str(e)) from None
        return labels.reshape(geom3d.spatial_shape), segments

    def load_mask(self, s: Session, path: Path, name: str) -> Region | None:
        """Replace the session's labels by the mask file ``path`` (call with ``s.lock`` held), which must lie on
        the volume's grid (:meth:`read_mask`: NIfTI, NRRD, MHA, PNG for a 2D image, DICOM-SEG of the series; 422
        naming what differs otherwise). One undo step ``load mask``; the file's segment names, colours and codes
        become the session's (a segment's lock and review status start unset). Returns the box that changed."""
        vol = self.volume(s)
        return self.apply_mask(s, *self.read_mask(vol.image, vol.geom3d, path, name), name)

    def apply_mask(self, s: Session, labels: np.ndarray, segments: dict[int, Segment], name: str) -> Region | None:
        """Make ``labels`` (``(Z, Y, X)``, read by :meth:`read_mask`) and their ``segments`` the session's, as one
        undo step ``load mask`` (call with ``s.lock`` held). 409 while a propagation runs or a segment is locked."""
        vol = self.volume(s)
        if s.job.running:
            raise AppError(409, "a propagation is running in this session")
        locked = sorted(v for v, seg in s.segments.items() if seg.get("locked"))
        if locked:
            raise AppError(409, f"segment {locked[0]} is locked: unlock every segment before loading a mask over them")
        region: Region = (slice(0, vol.shape[0]), slice(0, vol.shape[1]), slice(0, vol.shape[2]))
        changed = self.commit(s, region, labels, "load mask")
        names = dict(s.meta.get("names", {}))
        settings = dict(s.meta.get("segments", {}))
        for v, seg in segments.items():
            if seg.name:
                names[str(v)] = seg.name
            kept = {k: x for k, x in settings.get(str(v), {}).items() if k in ("visible", "locked", "reviewed")}
            settings[str(v)] = {**kept, **{k: x for k, x in seg.as_json().items() if k != "name"}}
        s.meta.update(names=names, segments=settings, mask_source=name)
        self.save_meta(s)
        return changed

    def check_unlocked(self, s: Session, label: int) -> None:
        """409 when segment ``label`` is locked (nothing may change it until it is unlocked)."""
        if s.segments.get(label, {}).get("locked"):
            raise AppError(409, f"segment {label} is locked: unlock it to change it")

    def locked_pixels(self, s: Session, values: np.ndarray, label: int) -> np.ndarray:
        """Where ``values`` hold a locked segment other than ``label`` (bool, ``values``' shape): a new
        prediction or brush stroke of ``label`` leaves those pixels as they are."""
        locked = [v for v, seg in s.segments.items() if seg.get("locked") and v != label]
        return np.isin(values, locked) if locked else np.zeros(values.shape, bool)

    def merge_propagation(
        self, s: Session, axis: str, k: int, first: int, last: int, label: int, obj: np.ndarray
    ) -> tuple[list[int], int, Region | None]:
        """Merge a propagated object into the labels (call with ``s.lock`` held) as one undo step "propagate".

        ``obj``: the object as propagated from slice ``k`` through slices ``first..last`` (inclusive) of
        ``axis``, a bool array of that window (the volume's shape with ``last - first + 1`` along ``axis``; not
        used after the merge). Inside the window ``label`` is re-derived: its old pixels become background,
        ``obj`` paints over other labels, and slice ``k`` keeps its pixels exactly as they were; outside the
        window nothing changes. Returns the first and last slice of the window holding ``label`` after the merge
        (``[]`` when none), its voxel count inside the window and the box of the voxels that changed (None: none)."""
        self.check_unlocked(s, label)
        vol = self.volume(s)
        a = _AXIS_POS[axis]
        region = tuple(slice(first, last + 1) if i == a else slice(0, m) for i, m in enumerate(vol.shape))
        cur = vol.labels[region]
        new = cur.copy()
        keep = slice_index(axis, k - first)
        new[new == label] = 0  # the object is re-derived from slice k, which keeps its pixels as they are
        new[obj & ~self.locked_pixels(s, cur, label)] = label
        new[keep] = cur[keep]
        del obj
        changed = self.commit(s, region, new, "propagate")  # type: ignore[arg-type]  # region: one slice per axis of vol.shape, three
        del new
        inside = vol.labels[region] == label
        covered = np.flatnonzero(inside.any(axis=tuple(i for i in range(3) if i != a))) + first
        return ([int(covered[0]), int(covered[-1])] if covered.size else []), int(inside.sum()), changed

    def undo(self, s: Session) -> Change:
        """Take back the last change (call with ``s.lock`` held); what it replaces becomes a redo step. Returns the
        step taken back (its ``region`` is what changed now). 409 when there is nothing to undo."""
        return self._step(s, redo=False)

    def redo(self, s: Session) -> Change:
        """Make the last undone change again (call with ``s.lock`` held). 409 when there is nothing to redo."""
        return self._step(s, redo=True)

    def _step(self, s: Session, redo: bool) -> Change:
        vol = self.volume(s)
        s.last_segment = None
        c = s.history.pop_redo() if redo else s.history.pop_undo()
        if c is None:
            raise AppError(409, "nothing to redo" if redo else "nothing to undo")
        back = Change.of(c.kind, c.region, vol.labels[c.region], c.extra)
        vol.write(c.region, c.values)
        if c.extra and "forget" in c.extra:  # a delete or merge: its segment's name and settings go with it
            if redo:
                self._forget(s, int(c.extra["forget"]))
            else:
                self._remember(s, c.extra)
        if redo:
            s.history.push_undo(back)
        else:
            s.history.push_redo(back)
        self._changed(s, c.region)
        return c


def grid3d(image: MedicalImage, display: np.ndarray) -> MedicalImage:
    """``image``'s grid as 3D: a volume as it is, a 2D image as one slice of 1 mm (for NIfTI/NRRD/MHA)."""
    if image.is_volume:
        return image
    d = np.eye(3)
    d[:2, :2] = np.asarray(image.direction, float)
    grey = display[..., 0] if display.ndim == 4 else display
    return MedicalImage(
        grey, (*image.spacing, 1.0), (*image.origin, 0.0), d, image.modality, image.modality_source, image.source, "array"
    )


def make_volume(image: MedicalImage, display: np.ndarray, labels: np.ndarray, preset: IntensityPreset) -> Volume:
    return Volume(image, grid3d(image, display), display, labels, preset)


def check_upload(path: Path) -> None:
    """Refuse uploads that would make the readers open other files (a MetaImage/NRRD header naming a detached
    data file): an upload is one file."""
    refs = detached_files(path)
    if refs:
        raise FileInputError(
            "MetaImage/NRRD uploads must hold their voxels (ElementDataFile = LOCAL, no detached 'data file'); "
            "this header names another file"
        )


def load_source(
    path: Path, options: dict[str, Any], name: str | None = None, *, max_volume_bytes: int | None = None
) -> tuple[MedicalImage, np.ndarray, IntensityPreset]:
    """Read an image and map it to the display picture with the session's intensity options
    (``preset``, ``window`` [level, width], ``modality``, ``resample``).

    Before any voxel is decoded, the memory the volume takes (:meth:`Footprint.cost`) is checked against
    ``max_volume_bytes`` (:class:`~medsamkit.errors.LimitError`, 413). A volume whose slices are not on one
    uniform grid (a DICOM series with gaps or tilt, ``meta["grid_problem"]``) is refused
    (:class:`~medsamkit.errors.GeometryError`, 422) unless ``options["resample"]``: then it is resampled with
    :func:`medsamkit.io.geometry.resample_uniform` (uneven spacing only) and ``meta["resampled"]`` says so.
    Returns (image with the display array, display ``(Z, Y, X)`` or ``(1, Y, X, 3)`` uint8, preset). Library
    errors propagate as they are (the server maps them)."""
    shown = name or path.name
    resample = bool(options.get("resample"))
    if max_volume_bytes is not None:
        fp = footprint(path)
        if fp is not None:
            volume_cost_limit(fp, max_volume_bytes, shown, resample)
    img = read_image(path, modality=options.get("modality"), max_bytes=max_volume_bytes)  # a bad file: ImageReadError
    problem = grid_problem(img)
    if problem is not None:
        if img.meta.get("grid_problem_kind") == "tilt":
            raise GeometryError(
                f"{problem}; this server cannot place such a series on one grid: correct the tilt first (e.g. dcm2niix) "
                "and open the result"
            )
        if not resample:
            raise GeometryError(
                f'{problem}; the viewer and NIfTI/NRRD/MHA masks need one uniform grid: open it with "resample": true '
                "to interpolate the missing positions (a DICOM-SEG is then not available)"
            )
        img = resample_uniform(img, max_bytes=max_volume_bytes)
    window = options.get("window")
    how = (options.get("preset") or "auto", tuple(window) if window else None, img.modality)
    try:  # the pictures the model sees (medsamkit.preprocess.picture), the volume's mapped block by block
        if img.is_volume:
            pictures = volume_pictures(img.array, *how)
            preset, display = pictures.preset, pictures.all()
        else:
            plane, preset = fit_picture(img.array, *how)
            display = np.ascontiguousarray(preset.apply(plane)[None])
    except InputError as e:
        raise type(e)(f"{shown}: {e}") from None
    image = img.with_array(display[0] if not img.is_volume else display, source=Path(shown))
    return image, display, preset
