"""Annotation sessions: one volume, its label mask, label names, an undo stack and saved files per session.

A session lives in ``state_dir/<id>/``: ``session.json`` (source, intensity options, label names, exports),
``labels.npz`` (the label volume, cropped to its non-zero box), a copy of an uploaded source file and an
``exports/`` folder. Both state files are rewritten atomically (temp file + ``os.replace``) after every change,
so a new store on the same folder finds every session as it was (its undo history excepted). Volumes are
loaded lazily and unloaded when more than ``max_loaded`` sessions hold one.

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
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .._files import atomic_write, atomic_write_bytes
from ..io import ImageReadError, MedicalImage, read_image
from ..preprocess.intensity import IntensityPreset, resolve_preset

log = logging.getLogger("medsamkit.app")

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{32}$")
AXES = ("z", "y", "x")
UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".png", ".jpg", ".jpeg", ".npz")
SAVE_FORMATS = {"nii.gz": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "dcm": ".dcm", "png": ".png"}
MAX_VOXELS = 1 << 29  # ~537 M voxels, e.g. 512 x 512 x 2048
_AXIS_POS = {"z": 0, "y": 1, "x": 2}


class AppError(Exception):
    """An error shown to the client as ``{"error": message}`` with HTTP ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def suffix_of(name: str) -> str:
    """Lower-case extension of a file name, ``.nii.gz`` counted as one."""
    low = name.lower()
    return ".nii.gz" if low.endswith(".nii.gz") else PurePosixPath(low).suffix


def slice_index(axis: str, k: int) -> tuple[Any, ...]:
    """Index of slice ``k`` along ``axis`` in a ``(Z, Y, X)`` array (2D result in the slice frame)."""
    return {"z": (k,), "y": (slice(None), k), "x": (slice(None), slice(None), k)}[axis]


def slice_region(axis: str, k: int, shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    """The one-slice 3D region of slice ``k`` along ``axis`` (explicit bounds, for the undo stack)."""
    r = [slice(0, n) for n in shape[:3]]
    r[_AXIS_POS[axis]] = slice(k, k + 1)
    return tuple(r)  # type: ignore[return-value]


@dataclass
class Change:
    """One undo step: ``before`` = the label voxels of ``region`` before the change."""

    kind: str
    region: tuple[slice, slice, slice]
    before: np.ndarray


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
    undo: deque[Change] = field(default_factory=deque)

    @property
    def is_2d(self) -> bool:
        return not self.image.is_volume

    @property
    def rgb(self) -> bool:
        return self.display.ndim == 4

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.labels.shape  # type: ignore[return-value]

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
        return {
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
        }


class Session:
    """One client's annotation state. ``lock`` guards ``meta`` and ``volume``; ``job`` is read without it."""

    def __init__(self, sid: str, folder: Path, meta: dict[str, Any]) -> None:
        self.sid = sid
        self.folder = folder
        self.meta = meta
        self.volume: Volume | None = None
        self.lock = threading.RLock()
        self.job = Job()
        self.last_used = time.monotonic()

    @property
    def names(self) -> dict[int, str]:
        return {int(k): v for k, v in self.meta.get("names", {}).items()}

    @property
    def exports_dir(self) -> Path:
        return self.folder / "exports"


def _new_meta() -> dict[str, Any]:
    return {"version": 1, "created": time.time(), "volume_id": None, "source": None, "options": {}, "names": {}, "exports": []}


class SessionStore:
    """All sessions of an app, persisted under ``state_dir``; ``data_dir`` is the folder clients may open
    volumes from by relative path (None: none)."""

    def __init__(
        self,
        state_dir: Path,
        data_dir: Path | None = None,
        *,
        max_loaded: int = 8,
        undo_steps: int = 20,
        undo_bytes: int = 256 << 20,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.max_loaded = max_loaded
        self.undo_steps = undo_steps
        self.undo_bytes = undo_bytes
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._restore()

    # -- registry -----------------------------------------------------------------------------------------
    def _restore(self) -> None:
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
            self._sessions[folder.name] = Session(folder.name, folder, {**_new_meta(), **meta})

    def create(self) -> Session:
        sid = secrets.token_urlsafe(24)
        folder = self.state_dir / sid
        folder.mkdir()
        s = Session(sid, folder, _new_meta())
        self.save_meta(s)
        with self._lock:
            self._sessions[sid] = s
        return s

    def get(self, sid: str) -> Session:
        with self._lock:
            s = self._sessions.get(sid)
        if s is None:
            raise AppError(404, "unknown session")
        s.last_used = time.monotonic()
        return s

    def delete(self, sid: str) -> None:
        s = self.get(sid)
        with s.lock:
            if s.job.running:
                raise AppError(409, "a propagation is running in this session")
            with self._lock:
                self._sessions.pop(sid, None)
            s.volume = None
            shutil.rmtree(s.folder, ignore_errors=True)

    def __len__(self) -> int:
        return len(self._sessions)

    # -- persistence --------------------------------------------------------------------------------------
    def save_meta(self, s: Session) -> None:
        atomic_write_bytes(s.folder / "session.json", (json.dumps(s.meta, indent=1) + "\n").encode())

    def save_labels(self, s: Session) -> None:
        """Write the label volume (cropped to its non-zero box, compressed) atomically."""
        if s.volume is None:
            return
        lab = s.volume.labels
        nz = [np.flatnonzero(lab.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
        if nz[0].size:
            offset = np.array([ix[0] for ix in nz])
            block = lab[tuple(slice(ix[0], ix[-1] + 1) for ix in nz)]
        else:
            offset, block = np.zeros(3, np.int64), np.zeros((0, 0, 0), np.uint8)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file handle: np.savez would add ".npz" to a bare name
                np.savez_compressed(f, shape=np.array(lab.shape), offset=offset, block=block, volume_id=str(s.meta["volume_id"]))

        atomic_write(s.folder / "labels.npz", write)

    def _load_labels(self, s: Session, shape: tuple[int, int, int]) -> np.ndarray:
        lab = np.zeros(shape, np.uint8)
        f = s.folder / "labels.npz"
        if not f.is_file():
            return lab
        with np.load(f, allow_pickle=False) as z:
            if tuple(int(v) for v in z["shape"]) != shape or str(z["volume_id"]) != str(s.meta["volume_id"]):
                # only after a crash between the two writes of opening a new volume: these are the old volume's
                log.warning("session %s: saved labels belong to a previous volume; starting empty", s.sid)
                return lab
            block, off = z["block"], [int(v) for v in z["offset"]]
        if block.size:
            lab[tuple(slice(o, o + n) for o, n in zip(off, block.shape))] = block
        return lab

    # -- volumes ------------------------------------------------------------------------------------------
    def volume(self, s: Session) -> Volume:
        """The session's volume, loaded if needed (call with ``s.lock`` held)."""
        if s.volume is not None:
            return s.volume
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
        image, display, preset = load_source(path, s.meta.get("options", {}), src.get("name"))
        labels = self._load_labels(s, display.shape[:3])  # type: ignore[arg-type]
        s.volume = make_volume(image, display, labels, preset, self.undo_steps)
        self._evict(keep=s)
        return s.volume

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
        s.meta.update(volume_id=secrets.token_hex(8), source=source, options=options, exports=[], names={})
        s.volume = make_volume(image, display, np.zeros(display.shape[:3], np.uint8), preset, self.undo_steps)
        self.save_labels(s)
        self.save_meta(s)
        self._evict(keep=s)
        return s.volume

    def _evict(self, keep: Session) -> None:
        with self._lock:
            loaded = sorted(
                (x for x in self._sessions.values() if x.volume is not None and x is not keep), key=lambda x: x.last_used
            )
        excess = len(loaded) + 1 - self.max_loaded
        for other in loaded:
            if excess <= 0:
                break
            if other.job.running or not other.lock.acquire(blocking=False):
                continue
            try:
                other.volume = None  # its labels are on disk; only the undo history goes
                excess -= 1
            finally:
                other.lock.release()

    def resolve_data_path(self, rel: Any) -> Path:
        """A client's relative path resolved inside the data folder; 403 for anything that would leave it."""
        if self.data_dir is None:
            raise AppError(403, "this server has no data folder (start it with --data DIR)")
        if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
            raise AppError(422, "path must be a non-empty relative path")
        p = PurePosixPath(rel)
        if p.is_absolute() or rel.startswith(("/", "\\", "~")) or ".." in p.parts or ".." in rel.split("\\"):
            raise AppError(403, "path must be relative to the data folder, without '..'")
        root = self.data_dir
        target = (root / p).resolve()
        if not target.is_relative_to(root):
            raise AppError(403, "path leads outside the data folder")
        if not target.exists():
            raise AppError(404, f"{rel}: no such file or folder in the data folder")
        if target.is_dir():  # a DICOM series: every file read must stay inside too
            for f in target.iterdir():
                if not f.resolve().is_relative_to(root):
                    raise AppError(403, f"{rel}: the folder links to files outside the data folder")
        return target

    # -- changes ------------------------------------------------------------------------------------------
    def commit(self, s: Session, region: tuple[slice, slice, slice], new: np.ndarray, kind: str) -> bool:
        """Write ``new`` into ``region`` of the labels (call with ``s.lock`` held), keep the changed voxels'
        previous values for undo (only their bounding box), autosave. False when nothing changed."""
        vol = self.volume(s)
        old = vol.labels[region]
        diff = old != new
        if not diff.any():
            return False
        idx = [np.flatnonzero(diff.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
        sub = tuple(slice(int(r.start + ix[0]), int(r.start + ix[-1] + 1)) for r, ix in zip(region, idx))
        before = vol.labels[sub].copy()
        vol.labels[region] = new
        vol.undo.append(Change(kind, sub, before))  # type: ignore[arg-type]
        while len(vol.undo) > 1 and sum(c.before.nbytes for c in vol.undo) > self.undo_bytes:
            vol.undo.popleft()
        self.save_labels(s)
        return True

    def set_slice_label(self, s: Session, axis: str, k: int, label: int, mask: np.ndarray, kind: str) -> bool:
        """Replace label ``label`` on slice ``k`` by ``mask`` (2D bool in the slice frame); the mask paints
        over other labels, pixels of ``label`` outside it become background."""
        vol = self.volume(s)
        cur = vol.labels[slice_index(axis, k)]
        if mask.shape != cur.shape:
            raise AppError(422, f"mask is {mask.shape[1]}x{mask.shape[0]} pixels, the slice is {cur.shape[1]}x{cur.shape[0]}")
        new = cur.copy()
        new[new == label] = 0
        new[mask] = label
        return self.commit(s, slice_region(axis, k, vol.shape), np.expand_dims(new, _AXIS_POS[axis]), kind)

    def undo(self, s: Session) -> Change:
        vol = self.volume(s)
        if not vol.undo:
            raise AppError(409, "nothing to undo")
        c = vol.undo.pop()
        vol.labels[c.region] = c.before
        self.save_labels(s)
        return c


def make_volume(image: MedicalImage, display: np.ndarray, labels: np.ndarray, preset: IntensityPreset, undo_steps: int) -> Volume:
    if image.is_volume:
        geom3d = image
    else:
        d = np.eye(3)
        d[:2, :2] = np.asarray(image.direction, float)
        grey = display[..., 0] if display.ndim == 4 else display
        geom3d = MedicalImage(
            grey, (*image.spacing, 1.0), (*image.origin, 0.0), d, image.modality, image.modality_source, image.source, "array"
        )
    return Volume(image, geom3d, display, labels, preset, deque(maxlen=undo_steps))


def check_upload(path: Path, suffix: str) -> None:
    """Refuse uploads that would make the readers open other files (MetaImage/NRRD with a detached data file)
    or expand past :data:`MAX_VOXELS` (checked from the header, before reading the voxels)."""
    if suffix in (".mha", ".nrrd"):
        with path.open("rb") as f:
            head = f.read(1 << 16).decode("latin-1")
        for line in head.splitlines():
            if suffix == ".nrrd" and not line.strip():
                break
            key, _, value = line.partition("=" if suffix == ".mha" else ":")
            key = key.strip().lower()
            if suffix == ".mha" and key == "elementdatafile":
                if value.strip().upper() != "LOCAL":
                    raise AppError(422, "MetaImage uploads must hold their voxels (ElementDataFile = LOCAL)")
                break
            if suffix == ".nrrd" and key in ("data file", "datafile"):
                raise AppError(422, "NRRD uploads must hold their voxels (no detached 'data file')")
    if suffix in (".nii", ".nii.gz", ".mha", ".nrrd"):
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return  # read_image reports the problem
        n = int(np.prod(reader.GetSize(), dtype=np.float64)) * reader.GetNumberOfComponents()
        if n > MAX_VOXELS:
            raise AppError(413, f"the image has {n} voxels; the server accepts at most {MAX_VOXELS}")
    elif suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as z:
                total = sum(i.file_size for i in z.infolist())
        except (zipfile.BadZipFile, OSError):
            return
        if total > MAX_VOXELS * 4:
            raise AppError(413, f"the npz expands to {total} bytes; too large")


def load_source(path: Path, options: dict[str, Any], name: str | None = None) -> tuple[MedicalImage, np.ndarray, IntensityPreset]:
    """Read an image and map it to the display picture with the session's intensity options
    (``preset``, ``window`` [level, width], ``modality``). Errors are :class:`AppError` 422."""
    try:
        img = read_image(path, modality=options.get("modality"))
    except ImageReadError as e:
        msg = str(e).strip().splitlines()[0].replace(str(path.parent) + os.sep, "")
        raise AppError(422, msg.replace(path.name, name or "the image")) from None
    except (ValueError, OSError) as e:  # unexpected reader failures on hostile files
        raise AppError(422, f"cannot read the image: {type(e).__name__}") from None
    except Exception as e:  # noqa: BLE001 - e.g. PIL's DecompressionBombError
        raise AppError(422, f"cannot read the image ({type(e).__name__})") from None
    arr = np.asarray(img.array)
    if img.is_volume:
        if arr.ndim != 3:
            raise AppError(422, f"expected a 3D volume, got array shape {arr.shape}")
        zyx = arr
    elif arr.ndim == 2:
        zyx = arr[None]
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        zyx = arr[None, ..., :3]
    else:
        raise AppError(422, f"unsupported image layout {arr.shape}")
    if 0 in zyx.shape or zyx.size > MAX_VOXELS:
        raise AppError(422, f"unsupported image size {arr.shape}")
    if not (np.issubdtype(zyx.dtype, np.integer) or np.issubdtype(zyx.dtype, np.floating)):
        raise AppError(422, f"unsupported voxel type {zyx.dtype}")
    window = options.get("window")
    try:
        preset = resolve_preset(zyx, img.modality, options.get("preset") or "auto", tuple(window) if window else None)
        display = np.ascontiguousarray(preset.apply(zyx))
    except ValueError as e:
        raise AppError(422, str(e)) from None
    shown = Path(name) if name else None
    image = img.with_array(display[0] if not img.is_volume else display, source=shown)
    return image, display, preset
