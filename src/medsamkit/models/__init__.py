"""SAM-family networks in plain PyTorch, the model registry and weight handling.

``load("litemedsam")`` returns the bundled LiteMedSAM as a :class:`SamModel`; ``list_models()`` lists what is
registered; :mod:`.overlay` reads, writes and applies weights overlays (``litemedsam-interactive``). Importing this
package does not import PyTorch; the network classes are imported on use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .configs import ArchSpec
from .loading import WeightsRef, infer_arch, load, resolve
from .overlay import Overlay, apply_overlay, overlay_from_adapter, overlay_info, read_overlay, save_overlay
from .registry import ARCHS, ModelEntry, availability, get_entry, list_models, register, resolve_weights
from .weights import WeightsError, cache_dir

if TYPE_CHECKING:
    from .sam import SamModel

__all__ = [
    "ARCHS",
    "ArchSpec",
    "ModelEntry",
    "Overlay",
    "SamModel",
    "WeightsError",
    "WeightsRef",
    "apply_overlay",
    "availability",
    "cache_dir",
    "get_entry",
    "infer_arch",
    "list_models",
    "load",
    "overlay_from_adapter",
    "overlay_info",
    "read_overlay",
    "register",
    "resolve",
    "resolve_weights",
    "save_overlay",
]


def __getattr__(name: str) -> Any:
    if name == "SamModel":
        from .sam import SamModel

        return SamModel
    raise AttributeError(name)
