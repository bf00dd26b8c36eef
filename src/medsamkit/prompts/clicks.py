"""Correction clicks for iterative (interactive) evaluation.

After each prediction, the next click comes from the current error: a pixel the prediction misses
(false negative) gets a positive click, a pixel it wrongly includes (false positive) a negative click.
Two rules, because the literature uses both and their numbers are not comparable:

- ``farthest-error`` (RITM, Mazurowski et al.): compute, for the false-negative and the false-positive region,
  each pixel's distance to the region's boundary (outside the image counts as boundary); click the pixel
  with the largest distance, in whichever region holds it (ties go to the negative click, as RITM does;
  within a region, ties go to the first pixel in row-major order). Deterministic.
- ``random-error`` (SAM-Med2D): a pixel drawn uniformly from all erroneous pixels; its region decides the
  label. Needs a random generator.

Clicks are ``(x, y)`` = (column, row) pixel indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OptionError, PromptError
from ._checks import as_mask
from .points import interior_distance

RULES = ("farthest-error", "random-error")


@dataclass(frozen=True)
class Click:
    """A simulated click: pixel (x = column, y = row) and its label (True = positive / foreground)."""

    x: int
    y: int
    positive: bool

    @property
    def label(self) -> int:
        return 1 if self.positive else 0


def error_regions(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-negative (``gt & ~pred``) and false-positive (``pred & ~gt``) masks of two 2D masks."""
    p = as_mask(pred, ndim=2)
    g = as_mask(gt, ndim=2)
    if p.shape != g.shape:
        raise PromptError(f"prediction shape {p.shape} does not match ground truth {g.shape}")
    return g & ~p, p & ~g


def next_click(pred: np.ndarray, gt: np.ndarray, rule: str, rng: np.random.Generator | None = None) -> Click | None:
    """The next correction click for ``pred`` against ``gt`` (both ``(H, W)``) under ``rule``; None when the
    prediction has no error left."""
    fn, fp = error_regions(pred, gt)
    if rule == "farthest-error":
        d_fn = interior_distance(fn)
        d_fp = interior_distance(fp)
        max_fn, max_fp = float(d_fn.max(initial=0.0)), float(d_fp.max(initial=0.0))
        if max_fn == 0 and max_fp == 0:
            return None
        positive = max_fn > max_fp
        d = d_fn if positive else d_fp
        r, c = np.unravel_index(int(np.argmax(d)), d.shape)
        return Click(int(c), int(r), positive)
    if rule == "random-error":
        if rng is None:
            raise OptionError("the random-error rule needs a random generator (rng)")
        err = fn | fp
        n = int(err.sum())
        if n == 0:
            return None
        rows, cols = np.nonzero(err)
        i = int(rng.integers(n))
        row, col = int(rows[i]), int(cols[i])
        return Click(col, row, bool(fn[row, col]))
    raise OptionError(f"unknown click rule {rule!r}; use one of {', '.join(RULES)}")


def sample_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator, farthest_p: float = 0.5) -> Click | None:
    """A training-time correction click for ``pred`` against ``gt`` (both ``(H, W)``), as in SAM's simulated
    interactive training: with probability ``farthest_p`` the ``farthest-error`` click (the error pixel farthest from
    its region's boundary), otherwise a ``random-error`` click (an error pixel drawn uniformly). A false-negative
    pixel gives a positive click, a false-positive one a negative click. None when there is no error."""
    if not 0.0 <= farthest_p <= 1.0:
        raise OptionError(f"farthest_p must be in [0, 1], got {farthest_p!r}")
    rule = "farthest-error" if rng.random() < farthest_p else "random-error"
    return next_click(pred, gt, rule, rng)


def first_click(gt: np.ndarray, rng: np.random.Generator, centre_p: float = 0.5) -> Click:
    """A training-time first (positive) click inside the object ``gt`` ``(H, W)``: with probability ``centre_p``
    its centre (the pixel farthest from its boundary, as the ``farthest-error`` rule places a first click on an
    empty prediction), otherwise a uniformly random object pixel. PromptError for an empty object."""
    g = as_mask(gt, ndim=2)
    if not g.any():
        raise PromptError("the object is empty: nothing to click")
    if rng.random() < centre_p:
        click = next_click(np.zeros_like(g), g, "farthest-error")
        assert click is not None  # the object is not empty
        return click
    rows, cols = np.nonzero(g)
    i = int(rng.integers(rows.size))
    return Click(int(cols[i]), int(rows[i]), True)
