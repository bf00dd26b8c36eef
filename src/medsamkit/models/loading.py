"""Building a model and filling it with weights: ``load("litemedsam")``, a checkpoint path, or both."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .configs import ArchSpec
from .registry import ARCHS, ModelEntry, get_entry, resolve_weights
from .weights import WeightsError, file_digest

if TYPE_CHECKING:
    from .sam import SamModel


@dataclass(frozen=True)
class WeightsRef:
    """Which weights a model carries: registry name (or ``custom``), architecture, file and its sha256.

    For a model made of a base and a weights overlay (:mod:`medsamkit.models.overlay`), ``path`` is the overlay
    file, ``sha256`` identifies base + overlay together, ``base`` is the base's reference and ``encoder_sha256``
    the identity of the image encoder (the base's when the overlay leaves the encoder alone)."""

    name: str
    arch: ArchSpec
    path: Path
    sha256: str
    encoder_sha256: str | None = None
    base: WeightsRef | None = None

    @property
    def encoder_id(self) -> str:
        """Identity of the image encoder's weights (embedding caches key on it): ``encoder_sha256`` when set, else
        ``sha256``."""
        return self.encoder_sha256 or self.sha256


def infer_arch(state_dict: Mapping[str, Any]) -> ArchSpec:
    """Guess the architecture from a checkpoint's keys and shapes (MedSAM and SAM ViT-B share one layout:
    this returns ``sam_vit_b``; pass ``arch="medsam_vit_b"`` for MedSAM's pipeline)."""
    stem = state_dict.get("image_encoder.patch_embed.seq.0.c.weight")
    if stem is not None:
        return ARCHS["litemedsam"] if stem.shape[-1] == 1 else ARCHS["mobilesam"]
    pos = state_dict.get("image_encoder.pos_embed")
    if pos is not None:
        by_dim = {768: "sam_vit_b", 1024: "sam_vit_l", 1280: "sam_vit_h"}
        if pos.shape[-1] in by_dim:
            return ARCHS[by_dim[pos.shape[-1]]]
    raise WeightsError("cannot tell the architecture of this checkpoint from its keys; pass arch=NAME")


def resolve(
    model: str | os.PathLike[str] = "litemedsam",
    checkpoint: str | os.PathLike[str] | None = None,
    arch: str | ArchSpec | None = None,
    download: bool = True,
) -> tuple[WeightsRef, None] | tuple[None, str]:
    """Work out which weight file and architecture ``model``/``checkpoint``/``arch`` mean.

    Returns ``(ref, None)`` when the architecture is known without reading the file, or ``(None, path)``
    when it must be inferred from the checkpoint's keys.
    """
    model_s = str(model)
    if checkpoint is None and (os.sep in model_s or model_s.endswith((".pth", ".pt", ".ckpt", ".bin"))):
        checkpoint, model_s = model_s, ""
    spec: ArchSpec | None
    if isinstance(arch, ArchSpec):
        spec = arch
    elif arch is not None:
        if arch not in ARCHS:
            raise WeightsError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
        spec = ARCHS[arch]
    else:
        spec = None
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise WeightsError(f"checkpoint not found: {path}")
        if spec is None and model_s:
            spec = ARCHS[model_s] if model_s in ARCHS else get_entry(model_s).arch
        if spec is None:
            return None, str(path)
        return WeightsRef("custom", spec, path, file_digest(path)), None
    entry = get_entry(model_s)
    if entry.base is not None:
        return _overlay_ref(entry, spec, download), None
    path = resolve_weights(model_s, download=download)
    return WeightsRef(entry.name, spec or entry.arch, path, entry.sha256 or file_digest(path)), None


def _overlay_ref(entry: ModelEntry, spec: ArchSpec | None, download: bool) -> WeightsRef:
    """The reference of a registered overlay model: its base's (resolved and verified), the overlay file's header
    checked against it (no PyTorch needed), the combined digest and the encoder's identity."""
    from .overlay import overlaid_ref, overlay_info

    assert entry.base is not None
    if spec is not None and spec != entry.arch:
        raise WeightsError(f"{entry.name} is an overlay on {entry.base}: its architecture is {entry.arch.name}, not {spec.name}")
    base_ref = resolve(entry.base, download=download)[0]
    if base_ref is None:  # pragma: no cover - a registry name always resolves to a reference
        raise WeightsError(f"base {entry.base!r} of {entry.name} does not resolve to a registered model")
    path = resolve_weights(entry.name, download=download)
    info = overlay_info(path)
    if info.base_sha256 != base_ref.sha256 or info.arch != base_ref.arch.name:
        raise WeightsError(
            f"overlay file {path} of {entry.name} was made for {info.base} ({info.arch}, sha256 {info.base_sha256[:12]}...), "
            f"not for the registered base {entry.base} ({base_ref.arch.name}, sha256 {base_ref.sha256[:12]}...)"
        )
    return overlaid_ref(base_ref, entry.sha256 or file_digest(path), path, name=entry.name, touches_encoder=info.touches_encoder)


def load(
    model: str | os.PathLike[str] = "litemedsam",
    checkpoint: str | os.PathLike[str] | None = None,
    arch: str | ArchSpec | None = None,
    download: bool = True,
    adapter: str | os.PathLike[str] | None = None,
) -> SamModel:
    """Build a SAM-family model with its weights, in eval mode on the CPU.

    ``model`` is a registry name (``medsamkit models`` lists them) or a checkpoint path; ``checkpoint``
    overrides the weight file of a named model; ``arch`` forces the architecture/pipeline (e.g.
    ``medsam_vit_b`` for a MedSAM checkpoint, or an :class:`ArchSpec` for a custom size). Keys must match
    the architecture exactly; otherwise one
    :class:`~medsamkit.models.weights.WeightsError` lists the missing and unexpected keys.
    The returned :class:`~medsamkit.models.sam.SamModel` has ``weights`` (a :class:`WeightsRef`).

    A registered overlay model (e.g. ``litemedsam-interactive``: an entry with a ``base``) is its base, loaded and
    verified, with the overlay file applied (:func:`medsamkit.models.overlay.apply_overlay`, checked against the
    base's digest); its ``weights.sha256`` identifies base + overlay, ``weights.encoder_id`` the base's encoder.

    ``adapter``: a ``medsamkit finetune`` result (``adapter.pt`` or its run folder) of a prompted mode, loaded on top
    of its base (:func:`medsamkit.models.adapted.load_adapted` with ``prompted=True``): the base is the model the file
    names, or ``checkpoint`` when given (its weight digest must match the file's); ``model`` and ``arch`` are not used.
    Its ``weights`` and architecture are named ``<base>+<mode>``; use it with ``Predictor(model, backend="torch")``.
    """
    if adapter is not None:
        from .adapted import load_adapted

        return load_adapted(adapter, checkpoint, prompted=True)
    from .weights import read_state_dict

    resolved = resolve(model, checkpoint, arch, download)
    if resolved[0] is not None:
        return _load_ref(resolved[0])
    # the architecture is read from the checkpoint's keys
    path = Path(resolved[1])
    state = read_state_dict(path)
    return _build(WeightsRef("custom", infer_arch(state), path, file_digest(path)), state)


def _load_ref(ref: WeightsRef) -> SamModel:
    """The model of a resolved reference: a weight file, or a base with an overlay applied (verified)."""
    if ref.base is None:
        from .weights import read_state_dict

        return _build(ref, read_state_dict(ref.path))
    from .overlay import apply_overlay, read_overlay

    net = _load_ref(ref.base)
    overlay = read_overlay(ref.path)
    apply_overlay(net, overlay, name=ref.name)
    if net.weights.sha256 != ref.sha256:  # the file changed after it was verified
        raise WeightsError(f"overlay file {ref.path} changed while {ref.name} was loading; load it again")
    net.weights = ref
    return net


def _build(ref: WeightsRef, state: Mapping[str, Any]) -> SamModel:
    from .sam import SamModel
    from .weights import load_strict

    net = SamModel(ref.arch)
    load_strict(net, state, str(ref.path), ref.arch.name)
    net.eval()
    net.weights = ref
    return net
