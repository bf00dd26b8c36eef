"""The undo and redo history of a session's labels, kept on disk so that it survives a server restart and the
unloading of the session's volume.

A step (:class:`Change`) is a box of the label volume and the values to write back there, zlib-compressed. Undo
writes a step's values and keeps what they replaced as a redo step; redo does the reverse; any new change of the
labels drops the redo steps. Each step is one file of ``folder`` (``u-<seq>.bin`` undo, ``r-<seq>.bin`` redo;
a JSON header line, then the compressed voxels), written atomically, so a new :class:`History` on the same folder
finds the same stacks. Steps of another volume (``volume_id``) are ignored and removed.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_write_bytes

log = logging.getLogger("medsamkit.app")

Region = tuple[slice, slice, slice]


@dataclass
class Change:
    """One history step: ``region`` of the ``(Z, Y, X)`` labels (explicit bounds) and the uint8 ``values`` to write
    there, zlib-compressed (``shape`` = the region's shape). ``kind`` names the change it takes back (segment,
    edit, propagate, a slice tool...)."""

    kind: str
    region: Region
    data: bytes
    shape: tuple[int, ...]
    seq: int = field(default=0, compare=False)
    extra: dict[str, Any] | None = None  # what else the change did (JSON), e.g. a deleted segment's settings

    @classmethod
    def of(cls, kind: str, region: Region, values: np.ndarray, extra: dict[str, Any] | None = None) -> Change:
        data = zlib.compress(np.ascontiguousarray(values, np.uint8).tobytes(), 1)
        return cls(kind, region, data, values.shape, extra=extra)

    @property
    def values(self) -> np.ndarray:
        return np.frombuffer(zlib.decompress(self.data), np.uint8).reshape(self.shape)

    # the values an undo step writes back are the labels before the change
    before = values

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def region_zyx(self) -> list[list[int]]:
        """The region as inclusive ``[[z0, z1], [y0, y1], [x0, x1]]``."""
        return [[int(r.start), int(r.stop) - 1] for r in self.region]


class History:
    """Undo and redo stacks of one session, persisted under ``folder`` (None: in memory only). ``steps`` and
    ``max_bytes`` bound the undo stack (oldest steps go first); the redo stack is bounded by what was undone."""

    def __init__(self, folder: Path | None, steps: int, max_bytes: int, volume_id: str | None = None) -> None:
        self.folder = folder
        self.steps = steps
        self.max_bytes = max_bytes
        self.volume_id = volume_id
        self.undo: deque[Change] = deque()
        self.redo: list[Change] = []
        self._seq = 0
        if folder is not None and folder.is_dir():
            self._load()

    # -- stacks ---------------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.undo) + sum(c.nbytes for c in self.redo)

    def record(self, change: Change) -> bool:
        """A new change of the labels: keep its previous values as an undo step (False when the step alone is
        larger than ``max_bytes``: it cannot be undone) and drop every redo step."""
        for c in self.redo:
            self._remove(c, "r")
        self.redo.clear()
        if change.nbytes > self.max_bytes:
            return False
        self._push(self.undo, change, "u")
        while len(self.undo) > self.steps or sum(c.nbytes for c in self.undo) > self.max_bytes:
            self.drop_oldest()
        return True

    def pop_undo(self) -> Change | None:
        """The last undo step, taken off the stack (None: there is none)."""
        return self._pop(self.undo, "u")

    def pop_redo(self) -> Change | None:
        """The last redo step, taken off the stack (None: there is none)."""
        return self._pop(self.redo, "r")

    def _pop(self, stack: deque[Change] | list[Change], tag: str) -> Change | None:
        if not stack:
            return None
        c = stack.pop()
        self._remove(c, tag)
        return c

    def push_undo(self, change: Change) -> None:
        """Keep an undo step without touching the redo stack (what a redo replaced)."""
        self._push(self.undo, change, "u")

    def push_redo(self, change: Change) -> None:
        """Keep a redo step (what an undo replaced)."""
        self._push(self.redo, change, "r")

    def drop_oldest(self) -> int:
        """Forget the oldest undo step; returns its compressed bytes (0 when there is none)."""
        if not self.undo:
            return 0
        c = self.undo.popleft()
        self._remove(c, "u")
        return c.nbytes

    def clear(self, volume_id: str | None = None) -> None:
        """Forget every step (a new volume: ``volume_id``)."""
        for c in self.undo:
            self._remove(c, "u")
        for c in self.redo:
            self._remove(c, "r")
        self.undo.clear()
        self.redo.clear()
        self.volume_id = volume_id

    # -- files ----------------------------------------------------------------------------------------------
    def _push(self, stack: deque[Change] | list[Change], change: Change, tag: str) -> None:
        self._seq += 1
        change.seq = self._seq
        stack.append(change)
        if self.folder is None:
            return
        self.folder.mkdir(mode=0o700, exist_ok=True)
        head = {
            "kind": change.kind,
            "region": change.region_zyx(),
            "shape": list(change.shape),
            "volume_id": self.volume_id,
            "extra": change.extra,
        }
        f = self._file(change, tag)
        atomic_write_bytes(f, json.dumps(head).encode() + b"\n" + change.data)
        os.chmod(f, 0o600)  # the session's files are the owner's only

    def _file(self, change: Change, tag: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{tag}-{change.seq:09d}.bin"

    def _remove(self, change: Change, tag: str) -> None:
        if self.folder is not None:
            self._file(change, tag).unlink(missing_ok=True)

    def _load(self) -> None:
        assert self.folder is not None
        found: list[tuple[int, str, Change]] = []
        for f in sorted(self.folder.glob("[ur]-*.bin")):
            try:
                seq = int(f.stem[2:])
                raw = f.read_bytes()
                head_raw, data = raw.split(b"\n", 1)
                head = json.loads(head_raw)
                if head.get("volume_id") != self.volume_id:
                    f.unlink(missing_ok=True)
                    continue
                region = tuple(slice(int(a), int(b) + 1) for a, b in head["region"])
                shape = tuple(int(n) for n in head["shape"])
                if len(region) != 3 or tuple(r.stop - r.start for r in region) != shape:
                    raise ValueError("region and shape disagree")
                found.append((seq, f.name[0], Change(str(head["kind"]), region, data, shape, seq, head.get("extra"))))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("skipping history step %s: %s", f.name, e)
        for seq, tag, c in sorted(found, key=lambda t: t[0]):
            (self.undo if tag == "u" else self.redo).append(c)
            self._seq = max(self._seq, seq)
