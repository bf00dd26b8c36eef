"""Pictures: mask overlays for people to look at."""

from .overlay import label_colors, overlay_masks

__all__ = ["label_colors", "overlay_masks"]
