"""SAMAug: prior maps from everything-mode masks (segmentation prior, boundary prior), the augmented image built
from them, and preparation of whole datasets (priors + augmented images + masks, cached by content key).

``medsamkit.samaug`` and ``medsamkit.samaug.priors`` need only numpy/scipy when imported; the augmented image and the
prior files live in :mod:`medsamkit.predict.unet`, and :mod:`medsamkit.samaug.prepare` runs the model: both are
loaded on first use of their names here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .priors import _UNET_NAMES, boundary_prior, outer_boundary, priors_from_records, segmentation_prior

if TYPE_CHECKING:
    from ..predict.unet import (
        DEFAULT_ALPHA,
        FORMAT_VERSION,
        Priors,
        augment_image,
        augmented_channels,
        load_priors,
        save_priors,
    )
    from ..predict.unet import SAMAUG_MODES as MODES

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
    if name in _UNET_NAMES:  # samaug.priors looks them up in their home, medsamkit.predict.unet
        from . import priors

        return getattr(priors, name)
    if name in _PREPARE:
        from . import prepare

        return getattr(prepare, name)
    raise AttributeError(f"module 'medsamkit.samaug' has no attribute {name!r}")
