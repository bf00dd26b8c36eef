"""SAMAug: prior maps from everything-mode masks (segmentation prior, boundary prior), the augmented image built
from them, and preparation of whole datasets (priors + augmented images + masks, cached by content key).

``medsamkit.samaug.priors`` needs only numpy/scipy; :mod:`medsamkit.samaug.prepare` (loaded on first use of its
names) runs the model.
"""

from __future__ import annotations

from typing import Any

from .priors import (
    DEFAULT_ALPHA,
    FORMAT_VERSION,
    MODES,
    Priors,
    augment_image,
    augmented_channels,
    boundary_prior,
    load_priors,
    outer_boundary,
    priors_from_records,
    save_priors,
    segmentation_prior,
)

_PREPARE = ("prepare_case", "prepare_dataset", "priors_for_image", "case_key", "case_paths")

__all__ = [
    "DEFAULT_ALPHA",
    "FORMAT_VERSION",
    "MODES",
    "Priors",
    "augment_image",
    "augmented_channels",
    "boundary_prior",
    "load_priors",
    "outer_boundary",
    "priors_from_records",
    "save_priors",
    "segmentation_prior",
    *_PREPARE,
]


def __getattr__(name: str) -> Any:
    if name in _PREPARE:
        from . import prepare

        return getattr(prepare, name)
    raise AttributeError(f"module 'medsamkit.samaug' has no attribute {name!r}")
