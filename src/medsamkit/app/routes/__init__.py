"""The app's routes, one router per concern: ``page`` (the page and its scripts), ``sessions`` (create,
describe, delete a session; open a volume in it), ``view`` (the volume, the mask and their slices for the
viewer), ``segment`` (segment a slice, propagate, progress, background pre-encoding), ``edit`` (brush edits,
undo, label names) and ``export`` (save, download). Shared state reaches them as :class:`~medsamkit.app.state.AppState`."""

from __future__ import annotations

from fastapi import APIRouter

from . import edit, export, page, segment, sessions, view

# in this order: a path matched by several routes is answered by the first (also for 405's "Allow")
ROUTERS: tuple[APIRouter, ...] = (page.router, sessions.router, view.router, segment.router, edit.router, export.router)

__all__ = ["ROUTERS"]
