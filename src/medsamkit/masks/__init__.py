"""Operations on label masks an annotator applies by hand: filling between annotated slices, filling holes,
keeping the largest island or removing small ones, smoothing (:mod:`medsamkit.masks.tools`). numpy/scipy only;
the app's slice tools and scripts call the same functions."""

from .tools import fill_between_slices, fill_holes, keep_largest, remove_small, smooth

__all__ = ["fill_between_slices", "fill_holes", "keep_largest", "remove_small", "smooth"]
