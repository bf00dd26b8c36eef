"""Manifests: one work item per row of a CSV (with a header) or JSONL file, read as a stream.

Every row becomes a :class:`ManifestItem` with a stable id: the row's ``id`` column when it has one, else
``<image stem>-<10 hex digits>`` from a hash of the row's content (the same row gives the same id in every run;
a changed row is a new item). Empty CSV cells count as absent. Relative paths (``image``, ``ground_truth``)
resolve against the manifest's folder; a relative ``output`` is inside the job's output folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io.formats import split_suffix

CSV_SUFFIXES = (".csv", ".tsv")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
UNREADABLE = "__unreadable__"  # payload key of a row that could not be read


@dataclass
class ManifestItem:
    """One manifest row. line: its line in the file (1 = the first line, the CSV header included); fields:
    column -> value (CSV: strings; JSONL: JSON values), empty cells dropped, names lower-cased; base: the
    manifest's folder; error: why the row could not be read (then fields is empty)."""

    id: str
    line: int
    fields: dict[str, Any] = field(default_factory=dict)
    base: Path = Path(".")
    error: str | None = None

    def path(self, key: str) -> Path | None:
        """The path in column ``key`` (relative paths against the manifest's folder), or None."""
        value = self.fields.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise InputError(f"{key}: expected a path, got {value!r}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base / p

    def payload(self) -> str:
        """The row as canonical JSON (what the id hash and the ledger's change detection use)."""
        fields = self.fields if self.error is None else {UNREADABLE: self.error}
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_payload(cls, item_id: str, line: int, payload: str, base: Path) -> ManifestItem:
        """The item a ledger row was registered from (:meth:`payload`)."""
        fields = json.loads(payload)
        if set(fields) == {UNREADABLE}:
            return cls(item_id, line, {}, base, error=fields[UNREADABLE])
        return cls(item_id, line, fields, base)


def safe_stem(item_id: str, max_len: int = 120) -> str:
    """A file name for an item id: other characters than letters, digits and ``-_.+`` become ``_``; a name
    that had to change (or is too long, or starts with a dot) gets a short hash of the id so that two never
    collide."""
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in item_id)
    if safe == item_id and len(safe) <= max_len and not safe.startswith("."):
        return safe
    digest = hashlib.sha1(item_id.encode()).hexdigest()[:8]
    return f"{safe.lstrip('.')[:max_len] or 'item'}-{digest}"


# The endings a content id drops: frozen, since ids are stored in ledgers (a format added to medsamkit.io.formats
# must not change the ids of rows already run); other endings (.bmp, .nhdr, a series folder's) stay in the id.
_ID_SUFFIXES = frozenset((".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nrrd", ".mha", ".npz", ".dcm"))


def _content_id(fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha1(canonical.encode()).hexdigest()[:10]
    image = fields.get("image")
    stem = Path(image).name if isinstance(image, str) and image else "row"
    base, suffix = split_suffix(stem)
    if suffix in _ID_SUFFIXES:
        stem = base
    return f"{stem}-{digest}"


def _normalise(raw: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k is None:  # csv: more cells than header columns
            raise InputError(f"the row has more cells than the header has columns ({len(v)} extra)")
        key = str(k).strip().lower()
        if isinstance(v, str):
            v = v.strip()
        if v is None or v == "" or v == []:
            continue
        if key in out:
            raise InputError(f"column {key!r} appears twice")
        out[key] = v
    return out


def _item(fields: dict[str, Any], line: int, base: Path) -> ManifestItem:
    explicit = fields.get("id")
    if explicit is not None:
        item_id = str(explicit).strip()
        return ManifestItem(item_id, line, fields, base)
    return ManifestItem(_content_id(fields), line, fields, base)


def _bad(line: int, base: Path, raw: str, error: str) -> ManifestItem:
    digest = hashlib.sha1(f"{line}|{raw}".encode()).hexdigest()[:10]
    return ManifestItem(f"line{line}-{digest}", line, {}, base, error=f"line {line}: {error}")


def manifest_format(path: str | os.PathLike[str]) -> str:
    """``csv`` or ``jsonl`` from the file's suffix (``.csv``/``.tsv``, ``.jsonl``/``.ndjson``)."""
    s = Path(path).suffix.lower()
    if s in CSV_SUFFIXES:
        return "csv"
    if s in JSONL_SUFFIXES:
        return "jsonl"
    raise InputError(f"{Path(path).name}: a manifest is a .csv/.tsv (with a header) or .jsonl/.ndjson file")


def read_manifest(path: str | os.PathLike[str]) -> Iterator[ManifestItem]:
    """Stream the rows of a manifest as :class:`ManifestItem` (a row that cannot be read is an item with
    ``error`` set, never an exception; a missing or unreadable file, or a CSV without header, raises
    ``ValueError``)."""
    p = Path(path)
    fmt = manifest_format(p)
    if not p.is_file():
        raise InputError(f"manifest not found: {p}")
    base = p.resolve().parent
    if fmt == "csv":
        yield from _read_csv(p, base)
    else:
        yield from _read_jsonl(p, base)


def _read_csv(p: Path, base: Path) -> Iterator[ManifestItem]:
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        if not header or not any(header):
            raise InputError(f"{p.name}: the manifest is empty or has no header line")
        if "image" not in header:
            raise InputError(f"{p.name}: the header has no 'image' column (columns: {', '.join(header)})")
        for raw in reader:
            line = reader.line_num
            try:
                fields = _normalise(raw)
            except ValueError as e:
                yield _bad(line, base, json.dumps(raw, default=str), str(e))
                continue
            if not fields:
                continue  # an empty line
            yield _item(fields, line, base)


def _read_jsonl(p: Path, base: Path) -> Iterator[ManifestItem]:
    with open(p, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            text = text.strip()
            if not text:
                continue
            try:
                raw = json.loads(text)
            except ValueError as e:
                yield _bad(line, base, text, f"not valid JSON ({e})")
                continue
            if not isinstance(raw, dict):
                yield _bad(line, base, text, f"expected a JSON object, got {type(raw).__name__}")
                continue
            try:
                fields = _normalise(raw)
            except ValueError as e:
                yield _bad(line, base, text, str(e))
                continue
            yield _item(fields, line, base)
