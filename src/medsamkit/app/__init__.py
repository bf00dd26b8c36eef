"""The annotation web app's server: sessions with a volume, prompted segmentation, propagation, brush edits,
undo and saving, over a JSON API (``medsamkit serve``). Needs the ``app`` extra (FastAPI, uvicorn,
python-multipart)."""

from __future__ import annotations

from .server import create_app

__all__ = ["create_app"]
