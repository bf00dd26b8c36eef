"""Embedding cache: an image's encoder output keyed by what determines it.

Key = sha256 of (the image encoder's identity, pipeline, model input size, the uint8 slice bytes, shape). A changed
pixel, encoder or preprocessing gives another key, so a stale entry can never be used. The encoder's identity is the
engine's ``encoder_id`` (:func:`encoder_id_of`): its ``weights_id`` for an ordinary model (so keys are those of
earlier versions), the base's for a weights overlay that keeps its base's encoder (``litemedsam-interactive`` shares
``litemedsam``'s embeddings). Entries live in memory (LRU, bounded in bytes) and optionally on disk (one ``.npz``
per key, written atomically), so a second command on the same volume skips the encoder. The disk folder is bounded in
bytes too (``disk_max_bytes``, default 4 GiB; ``None`` for no bound): when a write takes it past the budget, the
least recently used entries (file modification time, refreshed on every disk hit) are deleted.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..preprocess.transforms import Geometry


def encoder_id_of(engine: Any) -> str:
    """The identity an embedding cache keys ``engine``'s embeddings on: its ``encoder_id``, or its ``weights_id``
    for an engine without one (written against the older Engine protocol)."""
    return str(getattr(engine, "encoder_id", None) or engine.weights_id)


def embedding_key(encoder_id: str, pipeline: str, input_size: int, image_u8: np.ndarray) -> str:
    """Content key (sha256 hex) for the embedding of ``image_u8`` (the uint8 picture given to the model, any shape)
    by the encoder ``encoder_id`` (:func:`encoder_id_of` an engine) with the ``pipeline`` at ``input_size``."""
    a = np.ascontiguousarray(image_u8)
    h = hashlib.sha256()
    h.update(f"{encoder_id}|{pipeline}|{input_size}|{a.dtype}|{a.shape}|".encode())
    h.update(a.data.cast("B"))  # the array's bytes in C order (a.data: its memoryview)
    return h.hexdigest()


#: default byte budget of a disk cache folder
DEFAULT_DISK_BYTES = 4 << 30


class EmbeddingCache:
    """LRU cache of embeddings (and their image geometry) in memory, optionally backed by a folder."""

    def __init__(
        self,
        max_bytes: int = 1 << 30,
        disk_dir: str | os.PathLike[str] | None = None,
        disk_max_bytes: int | None = DEFAULT_DISK_BYTES,
    ) -> None:
        self.max_bytes = max_bytes
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self.disk_max_bytes = disk_max_bytes
        self._disk_bytes: int | None = None  # this process's running total of the folder (scanned on first write)
        self._items: OrderedDict[str, tuple[np.ndarray, Geometry]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.disk_hits = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> tuple[np.ndarray, Geometry] | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        if self.disk_dir is not None:
            f = self.disk_dir / f"{key}.npz"
            if f.is_file():
                try:
                    with np.load(f, allow_pickle=False) as z:
                        emb = z["embedding"]
                        geom = _geometry_from(z["geometry"])
                except (OSError, ValueError, KeyError):
                    f.unlink(missing_ok=True)  # unreadable entry: drop it, recompute
                else:
                    if self.disk_max_bytes is not None:  # age matters only to a bounded cache's eviction
                        try:
                            os.utime(f)  # recently used: evicted last
                        except OSError:
                            pass
                    self.disk_hits += 1
                    self._put_memory(key, emb, geom)
                    return emb, geom
        self.misses += 1
        return None

    def put(self, key: str, embedding: np.ndarray, geometry: Geometry) -> None:
        self._put_memory(key, embedding, geometry)
        if self.disk_dir is not None:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            f = self.disk_dir / f"{key}.npz"
            if not f.exists():
                tmp = self.disk_dir / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp.npz"
                np.savez(tmp, embedding=embedding, geometry=_geometry_array(geometry))
                os.replace(tmp, f)
                self._account_disk(f)

    @property
    def disk_nbytes(self) -> int:
        """Bytes of the ``.npz`` entries in the disk folder (a scan; 0 without a folder)."""
        return sum(size for _, _, size in self._disk_entries())

    def _disk_entries(self) -> list[tuple[float, Path, int]]:
        """(mtime, path, bytes) of every disk entry, oldest first."""
        out = []
        if self.disk_dir is not None and self.disk_dir.is_dir():
            for f in self.disk_dir.glob("*.npz"):
                try:
                    st = f.stat()
                except OSError:  # deleted meanwhile by another process
                    continue
                out.append((st.st_mtime, f, st.st_size))
        return sorted(out)

    def _account_disk(self, written: Path) -> None:
        """Count a new disk entry; past ``disk_max_bytes`` delete the least recently used others."""
        if self.disk_max_bytes is None:
            return
        with self._lock:
            if self._disk_bytes is None:
                self._disk_bytes = self.disk_nbytes
            else:
                self._disk_bytes += written.stat().st_size
            if self._disk_bytes <= self.disk_max_bytes:
                return
            entries = self._disk_entries()  # a fresh scan: other processes may share the folder
            total = sum(size for _, _, size in entries)
            for _, f, size in entries:
                if total <= self.disk_max_bytes:
                    break
                if f == written:
                    continue
                f.unlink(missing_ok=True)
                total -= size
            self._disk_bytes = total

    def _put_memory(self, key: str, embedding: np.ndarray, geometry: Geometry) -> None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return
            self._items[key] = (embedding, geometry)
            self._bytes += embedding.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, (old, _) = self._items.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def _geometry_array(g: Geometry) -> np.ndarray:
    """float64 ``(7,)``: original (H, W), resized (h, w), input size, scale (sx, sy), as a disk entry stores it."""
    return np.array([*g.original, *g.resized, g.input_size, *g.scale], dtype=np.float64)


def _geometry_from(a: np.ndarray) -> Geometry:
    """The :class:`Geometry` of :func:`_geometry_array`'s array."""
    from ..preprocess.transforms import Geometry

    v = a.tolist()
    return Geometry((int(v[0]), int(v[1])), (int(v[2]), int(v[3])), int(v[4]), (float(v[5]), float(v[6])))
