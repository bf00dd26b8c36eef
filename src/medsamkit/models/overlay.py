"""Weights overlays: part of a ``SamModel``'s weights, shipped as a small file and loaded on top of a base model.

An overlay file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file holding a **partial state
dict** of :class:`~medsamkit.models.sam.SamModel` (keys exactly as ``SamModel.state_dict()``, e.g.
``mask_decoder.*`` and perhaps ``prompt_encoder.*``; floating tensors stored as float16 or float32) and string
metadata:

==================  ===================================================================================
``format``          :data:`OVERLAY_FORMAT` (``"medsamkit.overlay/1"``)
``base``            the base model's registry name (informative: the digest below is what is checked)
``base_sha256``     the base weights' sha256 as ``models.load(base).weights.sha256`` reports it (for a
                    registered model: the sha256 of its weight file)
``arch``            the architecture name (:attr:`ArchSpec.name <medsamkit.models.configs.ArchSpec.name>`)
anything else       free keys: recipe, seed, data, ... (strings)
==================  ===================================================================================

:func:`apply_overlay` copies the tensors into a model whose weights are the base (checked by digest), and names the
result's weights by a digest of base and overlay together (:func:`combined_sha256`). An overlay that leaves the
image encoder alone keeps the base's **encoder identity** (``WeightsRef.encoder_id``), so image embeddings are
shared with the base model. :func:`overlay_info` reads a file's header without PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FileInputError, MissingFileError, OptionError
from .weights import WeightsError

if TYPE_CHECKING:
    import torch

    from .loading import WeightsRef
    from .sam import SamModel

#: the ``format`` metadata value of an overlay file
OVERLAY_FORMAT = "medsamkit.overlay/1"
#: metadata every overlay file carries (see the module docstring)
REQUIRED_METADATA = ("format", "base", "base_sha256", "arch")
OVERLAY_SUFFIX = ".safetensors"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_HEADER = 100 << 20  # safetensors' own bound on the JSON header
_ENCODER_PREFIX = "image_encoder."


def combined_sha256(base_sha256: str, overlay_sha256: str) -> str:
    """The weights identity of base + overlay: sha256 (hex) of ``"<base_sha256>+<overlay_sha256>"``."""
    return hashlib.sha256(f"{base_sha256}+{overlay_sha256}".encode()).hexdigest()


class _OverlayMetadata:
    """What the header of an overlay says, shared by :class:`OverlayInfo` (header only) and :class:`Overlay`."""

    metadata: dict[str, str]
    shapes: dict[str, tuple[int, ...]]

    @property
    def base(self) -> str:
        return self.metadata["base"]

    @property
    def base_sha256(self) -> str:
        return self.metadata["base_sha256"]

    @property
    def arch(self) -> str:
        return self.metadata["arch"]

    @property
    def touches_encoder(self) -> bool:
        """True when the overlay replaces image-encoder weights (then embeddings are not the base's)."""
        return any(k.startswith(_ENCODER_PREFIX) for k in self.shapes)


@dataclass(frozen=True)
class OverlayInfo(_OverlayMetadata):
    """An overlay file's header (no tensor data): ``shapes`` and safetensors ``dtypes`` (``"F16"``, ``"F32"``, ...)
    by state-dict key, and its ``metadata``."""

    path: Path
    metadata: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]


@dataclass(frozen=True)
class Overlay(_OverlayMetadata):
    """An overlay read by :func:`read_overlay`: ``tensors`` by state-dict key (as stored: float16 or float32),
    ``metadata`` (strings), ``sha256`` of the file's bytes and the file's ``path`` (None for one built in memory)."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    sha256: str
    path: Path | None = None
    shapes: dict[str, tuple[int, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", {k: tuple(int(n) for n in v.shape) for k, v in self.tensors.items()})

    @property
    def source(self) -> str:
        """How errors name it: the file, or ``"the overlay"``."""
        return str(self.path) if self.path is not None else "the overlay"


# ----------------------------------------------------------------------------------------------------- reading


def _parse_header(head: bytes, size: int, where: str) -> tuple[dict[str, str], dict[str, tuple[int, ...]], dict[str, str]]:
    """(metadata, shapes, dtypes) of a safetensors file of ``size`` bytes starting with ``head`` (its first
    ``8 + header length`` bytes, or more); FileInputError naming ``where`` when it is not an overlay file."""
    not_st = f"{where} is not a safetensors file"
    if size < 8 or len(head) < 8:
        raise FileInputError(f"{not_st} (only {size} bytes)")
    n = int.from_bytes(head[:8], "little")
    if n < 2 or n > _MAX_HEADER or 8 + n > size or len(head) < 8 + n:
        raise FileInputError(f"{not_st} (no valid header length)")
    try:
        header = json.loads(head[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise FileInputError(f"{not_st} (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise FileInputError(f"{not_st} (its header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    end = 0
    for k, v in header.items():
        try:
            shapes[k] = tuple(int(d) for d in v["shape"])
            dtypes[k] = str(v["dtype"])
            end = max(end, int(v["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise FileInputError(f"{not_st} (bad header entry {k!r})") from None
    if 8 + n + end != size:
        raise FileInputError(f"{not_st} (its size, {size} bytes, does not match its header: truncated or padded)")
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise FileInputError(f"{where}: its metadata is not a mapping of strings")
    fmt = meta.get("format")
    if fmt != OVERLAY_FORMAT:
        got = "no format tag" if fmt is None else f"format {fmt!r}"
        raise FileInputError(f"{where} is not a medsamkit weights overlay (format {OVERLAY_FORMAT!r}; it has {got})")
    missing = [k for k in REQUIRED_METADATA if not meta.get(k)]
    if missing:
        raise FileInputError(f"{where}: overlay metadata lacks {', '.join(missing)}")
    if not _SHA256.match(meta["base_sha256"]):
        raise FileInputError(f"{where}: base_sha256 {meta['base_sha256']!r} is not a sha256 (64 lowercase hex digits)")
    if not shapes:
        raise FileInputError(f"{where}: the overlay holds no tensors")
    return dict(meta), shapes, dtypes


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingFileError(f"overlay file not found: {p}" + (" (it is a folder)" if p.is_dir() else ""))
    return p


def overlay_info(path: str | os.PathLike[str]) -> OverlayInfo:
    """The header of an overlay file (keys, shapes, dtypes, metadata) without reading its tensors or importing
    PyTorch; errors as :func:`read_overlay`."""
    p = _existing(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            n = int.from_bytes(head, "little")
            if 2 <= n <= _MAX_HEADER:
                head += f.read(n)
    meta, shapes, dtypes = _parse_header(head, size, str(p))
    return OverlayInfo(p, meta, shapes, dtypes)


def read_overlay(path: str | os.PathLike[str]) -> Overlay:
    """Read an overlay file: its tensors (CPU, dtype as stored), metadata and sha256.

    Raises :class:`~medsamkit.errors.MissingFileError` when there is no such file and
    :class:`~medsamkit.errors.FileInputError` naming the file when it is not a safetensors file, carries another
    format tag, lacks required metadata (:data:`REQUIRED_METADATA`) or holds no tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    p = _existing(path)
    data = p.read_bytes()
    meta, _, _ = _parse_header(data, len(data), str(p))
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise FileInputError(f"{p} is not a valid safetensors file ({' '.join(str(e).split())[:160]})") from None
    return Overlay(dict(tensors), meta, hashlib.sha256(data).hexdigest(), p)


# ----------------------------------------------------------------------------------------------------- writing


def save_overlay(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    *,
    base: str,
    base_sha256: str,
    arch: str,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` (state-dict key -> tensor) as an overlay file for the base model ``base`` (registry name)
    whose weights have sha256 ``base_sha256`` (``model.weights.sha256``) and architecture ``arch``; returns the path.

    Floating tensors are stored as ``dtype`` (``torch.float16``, the default, or ``torch.float32``); others as they
    are. ``metadata``: free string keys (recipe, seed, ...); the required keys cannot be given there. The file is
    written atomically (a reader never sees half of it). OptionError for an empty mapping, a reserved or non-string
    metadata key, a value that does not fit float16, or another dtype."""
    import torch

    from .._files import atomic_write_bytes

    dtype = torch.float16 if dtype is None else dtype
    if dtype not in (torch.float16, torch.float32):
        raise OptionError(f"overlay dtype must be torch.float16 or torch.float32, got {dtype}")
    if not tensors:
        raise OptionError("an overlay needs at least one tensor")
    if not _SHA256.match(str(base_sha256)):
        raise OptionError(f"base_sha256 {base_sha256!r} is not a sha256 (64 lowercase hex digits)")
    for what, value in (("base", base), ("arch", arch)):
        if not isinstance(value, str) or not value:
            raise OptionError(f"overlay {what} must be a non-empty string, got {value!r}")
    extra = dict(metadata or {})
    reserved = sorted(set(extra) & set(REQUIRED_METADATA))
    if reserved:
        raise OptionError(f"overlay metadata may not set {', '.join(reserved)} (given as arguments)")
    bad = sorted(repr(k) for k, v in extra.items() if not isinstance(k, str) or not isinstance(v, str))
    if bad:
        raise OptionError(f"overlay metadata must map strings to strings; not so for {', '.join(bad)}")
    meta = {**dict(sorted(extra.items())), "format": OVERLAY_FORMAT, "base": base, "base_sha256": base_sha256, "arch": arch}
    out: dict[str, torch.Tensor] = {}
    for k, t in tensors.items():
        if not isinstance(k, str) or not isinstance(t, torch.Tensor):
            raise OptionError(f"overlay tensors must map state-dict keys to tensors; not so for {k!r}")
        v = t.detach().to("cpu")
        if v.is_floating_point():
            cast = v.to(dtype)
            if not bool(torch.isfinite(cast).all()) and bool(torch.isfinite(v).all()):
                raise OptionError(f"{k}: values beyond the range of {dtype} (save with dtype=torch.float32)")
            v = cast
        out[k] = v
    return atomic_write_bytes(path, _serialize(out, meta))


def _serialize(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The safetensors bytes of ``tensors`` (CPU) with ``metadata``, **deterministic**: metadata and tensors in
    sorted key order (the safetensors library orders metadata by a hash map, so the same overlay could get another
    sha256). Layout: 8-byte little-endian header length, the JSON header padded with spaces to a multiple of 8,
    then each tensor's little-endian C-order bytes back to back."""
    import sys

    import torch

    tags = {
        torch.float16: "F16",
        torch.float32: "F32",
        torch.float64: "F64",
        torch.bfloat16: "BF16",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
    }
    if sys.byteorder != "little":  # pragma: no cover - every platform PyTorch ships wheels for is little-endian
        raise OptionError("writing an overlay needs a little-endian machine")
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks: list[bytes] = []
    offset = 0
    for k in sorted(tensors):
        t = tensors[k]
        if t.dtype not in tags:
            raise OptionError(f"{k}: dtype {t.dtype} cannot be stored in an overlay")
        data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[k] = {"dtype": tags[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


# ----------------------------------------------------------------------------------------------------- applying


def overlaid_ref(base: WeightsRef, overlay_sha256: str, path: Path, *, name: str, touches_encoder: bool) -> WeightsRef:
    """The :class:`~medsamkit.models.loading.WeightsRef` of ``base`` + an overlay file: sha256 from
    :func:`combined_sha256`, the base's encoder identity unless the overlay replaces encoder weights."""
    from .loading import WeightsRef

    sha = combined_sha256(base.sha256, overlay_sha256)
    return WeightsRef(name, base.arch, path, sha, encoder_sha256=sha if touches_encoder else base.encoder_id, base=base)


def check_overlay_fits(model: SamModel, overlay: Overlay | OverlayInfo) -> None:
    """WeightsError unless every key of ``overlay`` is in ``model``'s state dict with the same shape, its
    architecture is ``model.spec.name`` and its base digest is ``model.weights.sha256``."""
    src = overlay.source if isinstance(overlay, Overlay) else str(overlay.path)
    ref = getattr(model, "weights", None)
    if ref is None:
        raise WeightsError(
            f"cannot apply {src}: the model carries no weights identity (model.weights); load its base with medsamkit.models.load"
        )
    if overlay.arch != model.spec.name:
        raise WeightsError(f"{src} is an overlay for the {overlay.arch} architecture, not {model.spec.name}")
    if overlay.base_sha256 != ref.sha256:
        raise WeightsError(
            f"{src} is an overlay for {overlay.base} (weights sha256 {overlay.base_sha256[:12]}...), not for the "
            f"model's weights {ref.name} (sha256 {ref.sha256[:12]}...)"
        )
    own = model.state_dict()
    unknown = sorted(k for k in overlay.shapes if k not in own)
    shapes = sorted(
        f"{k}: overlay {overlay.shapes[k]} vs model {tuple(own[k].shape)}"
        for k in overlay.shapes
        if k in own and overlay.shapes[k] != tuple(own[k].shape)
    )
    if unknown or shapes:

        def fmt(title: str, items: list[str]) -> str:
            if not items:
                return ""
            shown = ", ".join(items[:10]) + (f", ... ({len(items) - 10} more)" if len(items) > 10 else "")
            return f"; {title} ({len(items)}): {shown}"

        raise WeightsError(
            f"{src} does not fit the {model.spec.name} model" + fmt("unknown keys", unknown) + fmt("shape mismatches", shapes)
        )


def apply_overlay(model: SamModel, overlay: Overlay | str | os.PathLike[str], *, name: str | None = None) -> SamModel:
    """Copy an overlay's tensors into ``model`` in place (cast to each parameter's dtype and device) and return it.

    ``overlay``: an :class:`Overlay` or a file path (:func:`read_overlay`). The model must carry the base weights:
    ``model.weights.sha256`` equal to the overlay's ``base_sha256``, ``model.spec.name`` its ``arch``, and every
    overlay key a state-dict key of the same shape; otherwise WeightsError listing unknown keys and shape mismatches
    (nothing is changed). Afterwards ``model.weights`` names base + overlay (:func:`overlaid_ref`; ``name``, default
    ``"<base name>+<file stem>"``), so applying the same overlay twice is refused."""
    import torch

    ov = overlay if isinstance(overlay, Overlay) else read_overlay(overlay)
    check_overlay_fits(model, ov)
    ref = model.weights
    own = model.state_dict()
    with torch.no_grad():
        for k, t in ov.tensors.items():
            own[k].copy_(t)  # copy_ casts to the parameter's dtype and device
    stem = ov.path.name.removesuffix(OVERLAY_SUFFIX) if ov.path is not None else "overlay"
    model.weights = overlaid_ref(
        ref, ov.sha256, ov.path or ref.path, name=name or f"{ref.name}+{stem}", touches_encoder=ov.touches_encoder
    )
    return model


# ----------------------------------------------------------------------------------------------------- conversion

#: finetune modes whose trained parameters are plain ``SamModel`` state-dict entries
_PLAIN_MODES = ("decoder", "full")


def overlay_from_adapter(
    adapter_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Turn a ``medsamkit finetune --mode decoder`` (or ``full``) result (``adapter.pt`` or its run folder) into an
    overlay file at ``out_path`` (float16 unless ``dtype``); returns its path.

    The overlay holds the run's trained parameters (the file's ``sam`` entry) and names the run's base model; its
    ``base_sha256`` is the base's weight digest recorded by the run (older files without it: the base is loaded and
    checked against the run's digest). Metadata also records the run (mode, epoch, validation Dice, options, the
    adapter file's sha256); ``metadata`` adds or overrides free keys. OptionError for other modes (their parameters
    are not plain ``SamModel`` weights) or a run on an in-memory model; FileInputError for a file with no trained
    parameters."""
    from .adapted import arch_from_dict, build_base_for, read_adapter
    from .weights import file_digest

    doc = read_adapter(adapter_path)
    src = doc["path"]
    mode = doc.get("mode")
    if mode not in _PLAIN_MODES:
        raise OptionError(
            f"{src}: a {mode!r} run cannot become an overlay (only decoder or full runs hold plain model weights); "
            "load it with --adapter instead"
        )
    state = doc.get("sam") or {}
    if not state:
        raise FileInputError(f"{src}: the adapter file holds no trained parameters")
    info = doc.get("base") or {}
    try:
        arch = arch_from_dict(info["arch"]).name
        base = str(info["model"])
    except (KeyError, TypeError):
        raise FileInputError(f"{src}: the adapter file does not describe its base model") from None
    base_sha = info.get("weights_sha256")
    if not base_sha:  # written before the weight digest was recorded: load the base the run names, check it
        ref = getattr(build_base_for(doc, None), "weights", None)
        if ref is None:
            raise OptionError(f"{src}: its base model {base!r} has no weight file digest to name in an overlay")
        base_sha = ref.sha256
    run: dict[str, Any] = {
        "source": "medsamkit finetune",
        "mode": mode,
        "adapter_sha256": file_digest(src),
        "epoch": doc.get("epoch"),
        "val_dice": doc.get("val_dice"),
        "options": doc.get("options"),
    }
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in run.items() if v is not None}
    meta.update(metadata or {})
    return save_overlay(out_path, state, base=base, base_sha256=str(base_sha), arch=arch, dtype=dtype, metadata=meta)
