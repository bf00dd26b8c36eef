"""Prompt simulation for evaluation: points, boxes, jitter and iterative correction clicks, all derived from a
ground-truth mask and seeded. Coordinates: (x, y) = (column, row) pixel indices; boxes inclusive
(x0, y0, x1, y1). Nothing here runs a model; :mod:`medsamkit.evaluate` applies protocols with a predictor."""

from .boxes import (
    clip_box,
    component_boxes,
    component_masks,
    jitter_box,
    jitter_box_3d,
    mask_box,
    mask_box_3d,
    shift_box,
    shift_box_3d,
)
from .clicks import RULES, Click, error_regions, first_click, next_click, sample_click
from .points import Centroid, center_point, centroid_point, interior_distance, positive_negative_points, random_points, ring_mask
from .protocol import PromptProtocol, parse_protocol

__all__ = [
    "RULES",
    "Centroid",
    "Click",
    "PromptProtocol",
    "center_point",
    "centroid_point",
    "clip_box",
    "component_boxes",
    "component_masks",
    "error_regions",
    "interior_distance",
    "jitter_box",
    "jitter_box_3d",
    "mask_box",
    "mask_box_3d",
    "first_click",
    "next_click",
    "sample_click",
    "parse_protocol",
    "positive_negative_points",
    "random_points",
    "ring_mask",
    "shift_box",
    "shift_box_3d",
]
