"""Shared state reaches the routes through each app's own :class:`AppState`: the routers are module-level, so
two apps in one process must not see each other's sessions, limits or model."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from medsamkit.app import create_app  # noqa: E402
from medsamkit.app.limits import Limits  # noqa: E402
from medsamkit.app.state import AppState  # noqa: E402
from tests.app.test_server import Client, assert_error, new_session  # noqa: E402


def test_two_apps_keep_their_own_state(tmp_path):
    a = create_app(None, state_dir=tmp_path / "a", limits=Limits(max_sessions=1), model="litemedsam")
    b = create_app(None, state_dir=tmp_path / "b", limits=Limits(max_propagate_slices=7), model="other")
    ca, cb = Client(a), Client(b)
    sa = new_session(ca)
    assert "maximum of 1 sessions" in assert_error(ca.post("/api/sessions"), 503)  # a's limit, not b's
    sb = new_session(cb)
    assert_error(cb.get(f"/api/sessions/{sa}"), 404)
    assert_error(ca.get(f"/api/sessions/{sb}"), 404)
    assert cb.get(f"/api/sessions/{sb}").json()["limits"]["max_propagate_slices"] == 7
    assert (tmp_path / "a" / sa).is_dir() and (tmp_path / "b" / sb).is_dir()


def test_the_state_object_is_the_apps(tmp_path):
    app = create_app(None, state_dir=tmp_path / "s")
    shared = app.state.shared
    assert isinstance(shared, AppState)
    assert (shared.store, shared.models, shared.limits, shared.hosts) == (
        app.state.store,
        app.state.models,
        app.state.limits,
        app.state.hosts,
    )
    assert shared.store.data_dir is None and shared.scrub(f"{tmp_path}/s/x.nii.gz: bad") == "x.nii.gz: bad"
