"""What every route shares: one :class:`AppState` per app, made by :func:`~medsamkit.app.server.create_app` and
handed to the routes as a FastAPI dependency (``state: StateDep``), never through closures or module globals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from .guard import HostRule
from .limits import Limits
from .model import ModelService
from .preencode import Preencoder
from .sessions import SessionStore


@dataclass(frozen=True)
class AppState:
    """The app's shared state. store: the sessions (and the data folder, ``store.data_dir``); models: the one
    model and embedding cache of all sessions; preencoder: the background encoding of opened volumes' slices;
    limits: the server's bounds; hosts: the ``Host`` names answered (enforced by
    :class:`~medsamkit.app.guard.Guard` before any route); scrub: removes server folders and upload temp names
    from a message meant for the client."""

    store: SessionStore
    models: ModelService
    limits: Limits
    preencoder: Preencoder
    hosts: HostRule
    scrub: Callable[[str], str]


async def get_state(request: Request) -> AppState:
    """The :class:`AppState` of the app serving ``request`` (async: resolved on the event loop, no thread hop)."""
    return request.app.state.shared


StateDep = Annotated[AppState, Depends(get_state)]
