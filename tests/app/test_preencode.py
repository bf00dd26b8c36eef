"""Background pre-encoding of opened volumes (medsamkit.app.preencode): nearest slices first, sessions in turn,
requests served from what it encoded, cancelled with its session or volume, restarted for a restored session."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("fastapi")

from medsamkit.app import create_app  # noqa: E402
from medsamkit.app.preencode import Preencoder  # noqa: E402
from tests.app.test_server import Client, assert_error, ellipsoid, new_session, write_nifti  # noqa: E402


def wait_encoded(client, sids: list[str], timeout: float = 120.0) -> list[dict]:
    """Poll ``GET .../encoding`` until no session's pre-encoding runs; returns the last statuses."""
    deadline = time.monotonic() + timeout
    while True:
        st = [client.get(f"/api/sessions/{sid}/encoding").json() for sid in sids]
        if not any(s["running"] for s in st):
            return st
        assert time.monotonic() < deadline, f"pre-encoding did not finish in {timeout} s: {st}"
        time.sleep(0.1)


@pytest.fixture
def recorded(monkeypatch):
    """Every (session id, slice) the worker encodes, in order."""
    order: list[tuple[str, int]] = []
    original = Preencoder._encode

    def encode(self, task, k):
        order.append((task.session.sid, k))
        return original(self, task, k)

    monkeypatch.setattr(Preencoder, "_encode", encode)
    return order


def test_two_sessions_are_encoded_in_turn_nearest_slice_first(predictor, tmp_path, recorded):
    data = tmp_path / "data"
    data.mkdir()
    for seed in (0, 1):
        write_nifti(data / f"v{seed}.nii.gz", ellipsoid(seed)[0])  # (6, 64, 64): slices 0..5, focus 3
    app = create_app(data, state_dir=tmp_path / "state", predictor=predictor)
    try:
        client = Client(app)
        sids = [new_session(client) for _ in range(2)]
        for seed, sid in enumerate(sids):
            r = client.post(f"/api/sessions/{sid}/volume", json={"path": f"v{seed}.nii.gz"})
            assert r.status_code == 200, r.text
            assert r.json()["encoding"]["total"] == 6 and r.json()["encoding"]["focus"] == 3
        final = wait_encoded(client, sids)
        assert [(s["done"], s["total"], s["error"]) for s in final] == [(6, 6, None), (6, 6, None)]

        # nearest to the viewed slice first (ties: the lower index)
        for sid in sids:
            assert [k for s, k in recorded if s == sid] == [3, 2, 4, 1, 5, 0]
        # in turn: once both sessions have work, neither gets two slices in a row
        who = [s for s, _ in recorded]
        first_b, last_a = who.index(sids[1]), len(who) - 1 - who[::-1].index(sids[0])
        both = who[max(0, first_b - 1) : last_a + 1]
        assert len(both) >= 6 and all(a != b for a, b in zip(both, both[1:])), recorded

        # a click and a propagation now encode nothing: every slice comes from the cache
        cache = app.state.models.cache
        misses = cache.misses
        r = client.post(f"/api/sessions/{sids[0]}/segment", json={"slice": 3, "box": [10, 17, 50, 47]})
        assert r.status_code == 200, r.text
        r = client.post(f"/api/sessions/{sids[0]}/propagate", json={"slice": 3, "label": 1})
        assert r.status_code == 200, r.text
        assert r.json()["slices"] and cache.misses == misses
    finally:
        app.state.preencoder.close()


def test_focus_axis_cancel_and_restore(predictor, tmp_path, recorded):
    data = tmp_path / "data"
    data.mkdir()
    write_nifti(data / "v.nii.gz", ellipsoid(0)[0])
    write_nifti(data / "w.nii.gz", ellipsoid(2)[0])
    state = tmp_path / "state"
    app = create_app(data, state_dir=state, predictor=predictor)
    pre = app.state.preencoder
    try:
        client = Client(app)
        sid = new_session(client)
        assert client.post(f"/api/sessions/{sid}/volume", json={"path": "v.nii.gz"}).status_code == 200
        wait_encoded(client, [sid])

        # another axis restarts it there, around the given slice; a bad focus is refused
        st = client.post(f"/api/sessions/{sid}/encoding", json={"axis": "y", "slice": 40}).json()
        assert (st["axis"], st["focus"], st["total"]) == ("y", 40, 64)
        assert_error(client.post(f"/api/sessions/{sid}/encoding", json={"axis": "y", "slice": 64}), 422)
        assert_error(client.post(f"/api/sessions/{sid}/encoding", json={"axis": "w", "slice": 1}), 422)
        deadline = time.monotonic() + 60
        while len([k for s, k in recorded if s == sid]) < 6 + 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert [k for _, k in recorded[6:9]] == [40, 39, 41]

        # opening another volume replaces the task: the new volume along z, nothing more of the old one
        assert client.post(f"/api/sessions/{sid}/volume", json={"path": "w.nii.gz"}).status_code == 200
        st = wait_encoded(client, [sid])[0]
        assert (st["axis"], st["done"], st["total"]) == ("z", 6, 6)

        # a new app on the same state folder (a server restart) pre-encodes a restored session when it is used
        again = create_app(data, state_dir=state, predictor=predictor)
        try:
            c2 = Client(again)
            assert c2.get(f"/api/sessions/{sid}/encoding").json()["axis"] is None  # nothing loaded yet
            assert c2.get(f"/api/sessions/{sid}").status_code == 200
            assert wait_encoded(c2, [sid])[0]["done"] == 6
        finally:
            again.state.preencoder.close()

        # deleting the session drops its task
        client.post(f"/api/sessions/{sid}/encoding", json={"axis": "x", "slice": 0})
        assert client.delete(f"/api/sessions/{sid}").status_code == 200
        assert sid not in pre._tasks
        n = len(recorded)
        time.sleep(1.0)
        assert len(recorded) <= n + 1  # at most the slice under way when it was deleted
    finally:
        pre.close()


def test_off_when_zero_slices(predictor, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_nifti(data / "v.nii.gz", ellipsoid(0)[0])
    app = create_app(data, state_dir=tmp_path / "state", predictor=predictor, preencode_slices=0)
    client = Client(app)
    sid = new_session(client)
    r = client.post(f"/api/sessions/{sid}/volume", json={"path": "v.nii.gz"})
    assert r.json()["encoding"] == {
        "axis": None,
        "done": 0,
        "total": 0,
        "running": False,
        "paused": False,
        "error": None,
        "enabled": False,
    }
    time.sleep(0.5)
    assert len(app.state.models.cache) == 0 and app.state.preencoder._thread is None


def test_a_volume_unloaded_from_memory_pauses_its_task(predictor, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_nifti(data / "v.nii.gz", ellipsoid(0)[0])
    write_nifti(data / "w.nii.gz", np.flip(ellipsoid(1)[0], 0).copy())
    app = create_app(data, state_dir=tmp_path / "state", predictor=predictor, max_loaded=1, preencode_slices=2)
    try:
        client = Client(app)
        a, b = new_session(client), new_session(client)
        assert client.post(f"/api/sessions/{a}/volume", json={"path": "v.nii.gz"}).status_code == 200
        assert client.post(f"/api/sessions/{b}/volume", json={"path": "w.nii.gz"}).status_code == 200  # unloads a's
        st = client.get(f"/api/sessions/{a}/encoding").json()
        assert st["paused"] and st["total"] == 2
        wait_encoded(client, [b])
        assert client.get(f"/api/sessions/{a}/encoding").json()["paused"]
        client.get(f"/api/sessions/{a}")  # loads a's volume again: its task resumes
        st = wait_encoded(client, [a])[0]
        assert (st["done"], st["paused"]) == (2, False)
    finally:
        app.state.preencoder.close()
