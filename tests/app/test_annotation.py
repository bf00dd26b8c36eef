"""The annotation loop on the server: every change answers a patch of the box it changed (which, applied to the
client's copy, gives the server's labels), segment counts kept up to date without a pass over the volume, undo/redo
on disk (kept across a restart, dropped by a new change or volume), segment settings (lock, delete, merge), live
window/level, slice tools, and segments that travel through saved files and come back for review."""

from __future__ import annotations

import base64
import json
import shutil
import warnings
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi")
nib = pytest.importorskip("nibabel")

from medsamkit.app import create_app  # noqa: E402
from medsamkit.app.history import Change, History  # noqa: E402
from medsamkit.io import read_image  # noqa: E402
from tests.app.test_server import Client, assert_error, new_session, nifti_zyx, upload, write_nifti  # noqa: E402
from tests.conftest import DATA, requires_shared  # noqa: E402

SHAPE = (6, 40, 50)  # (Z, Y, X)


@pytest.fixture
def served_volume(tmp_path):
    """A server (no model needed: brush edits only) with a session holding a 6 x 40 x 50 volume."""
    vol = np.random.default_rng(0).normal(100, 20, SHAPE).astype(np.float32)
    src = write_nifti(tmp_path / "v.nii.gz", vol)
    app = create_app(None, state_dir=tmp_path / "state", preencode_slices=0)
    client = Client(app)
    sid = new_session(client)
    assert upload(client, sid, src.read_bytes()).status_code == 200
    return tmp_path, client, sid


def paint(client, sid, axis: str, k: int, label: int, mask: np.ndarray):
    r = client.put(
        f"/api/sessions/{sid}/mask/{axis}/{k}?label={label}",
        content=np.ascontiguousarray(mask, np.uint8).tobytes(),
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    return r.json()


def apply(copy: np.ndarray, patch: dict | None) -> None:
    """What the page does with a patch: write the box's values into its copy of the labels."""
    if patch is None:
        return
    assert patch["encoding"] == "zlib-base64"
    block = np.frombuffer(zlib.decompress(base64.b64decode(patch["data"])), np.uint8).reshape(patch["shape"])
    copy[tuple(slice(a, b + 1) for a, b in patch["region_zyx"])] = block


def server_labels(client, sid) -> np.ndarray:
    return nifti_zyx(client.get(f"/api/sessions/{sid}/mask.nii.gz").content)[0]


def test_patches_and_counts_follow_every_change(served_volume):
    """Random brush edits on all three axes, undos and redos: the client's copy patched from the answers equals the
    server's labels after each step, the patch covers only what changed, and voxel counts, slices and the history
    counters agree with the labels."""
    _, client, sid = served_volume
    rng = np.random.default_rng(1)
    copy = np.zeros(SHAPE, np.uint8)
    shapes = {"z": SHAPE[1:], "y": (SHAPE[0], SHAPE[2]), "x": SHAPE[:2]}
    for step in range(14):
        before = copy.copy()
        if step % 5 == 4:
            r = client.post(f"/api/sessions/{sid}/undo").json()
        elif step % 5 == 0 and step > 0:
            r = client.post(f"/api/sessions/{sid}/redo").json()
        else:
            axis = "zyx"[step % 3]
            h, w = shapes[axis]
            m = np.zeros((h, w), np.uint8)
            r0, c0 = rng.integers(0, h - 3), rng.integers(0, w - 5)
            m[r0 : r0 + 4, c0 : c0 + 6] = 1
            r = paint(client, sid, axis, int(rng.integers(0, SHAPE["zyx".index(axis)])), int(rng.integers(1, 4)), m)
        apply(copy, r["patch"])
        truth = server_labels(client, sid)
        assert np.array_equal(copy, truth), step
        if r["patch"] is not None:  # the patch's box holds every voxel that changed
            changed = np.argwhere(before != truth)
            box = np.array(r["patch"]["region_zyx"])
            assert changed.size and (changed.min(0) >= box[:, 0]).all() and (changed.max(0) <= box[:, 1]).all()
        for seg in r["labels"]:
            v = seg["value"]
            assert seg["voxels"] == int((truth == v).sum())
            assert seg["slices"] == [int(k) for k in np.flatnonzero((truth == v).any(axis=(1, 2)))]
    listed = client.get(f"/api/sessions/{sid}/labels").json()["labels"]
    expected = {v: int((copy == v).sum()) for v in range(1, 4) if (copy == v).any()}
    assert {seg["value"]: seg["voxels"] for seg in listed} == expected


def test_history_survives_a_restart_and_a_new_change_drops_redo(served_volume):
    tmp_path, client, sid = served_volume
    m = np.zeros(SHAPE[1:], np.uint8)
    m[5:10, 5:10] = 1
    paint(client, sid, "z", 2, 1, m)
    m[20:25, 20:30] = 1
    paint(client, sid, "z", 2, 1, m)
    after_two = server_labels(client, sid)
    assert client.post(f"/api/sessions/{sid}/undo").json()["history"] == {"undo": 1, "redo": 1, "unsaved": True}

    again = Client(create_app(None, state_dir=tmp_path / "state", preencode_slices=0))  # a restarted server
    info = again.get(f"/api/sessions/{sid}").json()["volume"]
    assert (info["undo_steps"], info["redo_steps"], info["unsaved"]) == (1, 1, True)
    r = again.post(f"/api/sessions/{sid}/redo").json()
    assert r["redone"] == "edit" and np.array_equal(server_labels(again, sid), after_two)
    again.post(f"/api/sessions/{sid}/undo")
    paint(again, sid, "y", 7, 2, np.ones((SHAPE[0], SHAPE[2]), np.uint8))  # a new change: nothing left to redo
    assert "nothing to redo" in assert_error(again.post(f"/api/sessions/{sid}/redo"), 409)
    assert again.post(f"/api/sessions/{sid}/save", json={"format": "nii.gz"}).status_code == 200
    assert again.get(f"/api/sessions/{sid}").json()["volume"]["unsaved"] is False
    # a new volume starts a new history
    src = write_nifti(tmp_path / "w.nii.gz", np.zeros(SHAPE, np.float32))
    assert upload(again, sid, src.read_bytes()).status_code == 200
    assert "nothing to undo" in assert_error(again.post(f"/api/sessions/{sid}/undo"), 409)
    assert not list((tmp_path / "state" / sid / "history").glob("*.bin"))


def test_history_files_of_another_volume_are_ignored(tmp_path):
    folder = tmp_path / "history"
    h = History(folder, steps=3, max_bytes=1 << 20, volume_id="a")
    region = (slice(0, 1), slice(0, 2), slice(0, 2))
    for k in range(5):  # at most 3 steps are kept, on disk as in memory
        h.record(Change.of("edit", region, np.full((1, 2, 2), k, np.uint8)))
    assert [int(c.values[0, 0, 0]) for c in h.undo] == [2, 3, 4] and len(list(folder.glob("u-*.bin"))) == 3
    h.push_redo(h.pop_undo())  # type: ignore[arg-type]
    same = History(folder, steps=3, max_bytes=1 << 20, volume_id="a")
    assert [int(c.values[0, 0, 0]) for c in same.undo] == [2, 3] and [int(c.values[0, 0, 0]) for c in same.redo] == [4]
    other = History(folder, steps=3, max_bytes=1 << 20, volume_id="b")
    assert not other.undo and not other.redo and not list(folder.glob("*.bin"))


def test_segment_settings_lock_delete_merge(served_volume):
    _, client, sid = served_volume
    a = np.zeros(SHAPE[1:], np.uint8)
    a[5:15, 5:15] = 1
    paint(client, sid, "z", 1, 1, a)
    paint(client, sid, "z", 3, 1, a)
    r = client.put(f"/api/sessions/{sid}/segments/1", json={"name": "liver", "color": [10, 200, 30], "locked": True}).json()
    (seg,) = r["labels"]
    got = (seg["name"], seg["color"], seg["locked"], seg["visible"], seg["reviewed"])
    assert got == ("liver", [10, 200, 30], True, True, False)
    # a locked segment keeps its pixels under another segment's brush, and cannot be changed itself
    b = np.zeros(SHAPE[1:], np.uint8)
    b[10:20, 10:20] = 1
    paint(client, sid, "z", 1, 2, b)
    lab = server_labels(client, sid)[1]
    assert (lab == 1).sum() == 100 and (lab == 2).sum() == 100 - 25
    assert "locked" in assert_error(client.delete(f"/api/sessions/{sid}/segments/1"), 409)
    empty = bytes(SHAPE[1] * SHAPE[2])
    raw = {"content-type": "application/octet-stream"}
    assert "locked" in assert_error(client.put(f"/api/sessions/{sid}/mask/z/1?label=1", content=empty, headers=raw), 409)
    client.put(f"/api/sessions/{sid}/segments/1", json={"locked": False, "reviewed": True})
    # merge 2 into 1 (one undo step), then delete 1 (one more), and undo both
    m = client.post(f"/api/sessions/{sid}/segments/2/merge", json={"into": 1}).json()
    assert [s["value"] for s in m["labels"]] == [1] and m["labels"][0]["voxels"] == 2 * 100 + 75
    assert "itself" in assert_error(client.post(f"/api/sessions/{sid}/segments/1/merge", json={"into": 1}), 422)
    d = client.delete(f"/api/sessions/{sid}/segments/1").json()
    assert d["labels"] == [] and not server_labels(client, sid).any()
    assert client.post(f"/api/sessions/{sid}/undo").json()["undone"] == "delete"
    assert client.post(f"/api/sessions/{sid}/undo").json()["undone"] == "merge"
    lab = server_labels(client, sid)
    assert (lab == 1).sum() == 200 and (lab == 2).sum() == 75
    assert assert_error(client.put(f"/api/sessions/{sid}/segments/1", json={"color": [1, 2]}), 422)
    assert assert_error(client.put(f"/api/sessions/{sid}/segments/300", json={"visible": False}), 422)


def test_window_changes_the_picture_and_keeps_labels_and_history(tmp_path, predictor):
    """A live window/level change: the display (what the viewer and the model see) follows the window, labels and
    undo stay, the choice survives a reload, and a segment request logs its prompts with the mapping in force."""
    ramp = np.broadcast_to(np.linspace(0, 1000, SHAPE[2], dtype=np.float32), SHAPE).copy()
    src = write_nifti(tmp_path / "ramp.nii.gz", ramp)
    app = create_app(None, state_dir=tmp_path / "state", predictor=predictor, preencode_slices=0)
    client = Client(app)
    sid = new_session(client)
    assert upload(client, sid, src.read_bytes(), preset="percentile").status_code == 200
    m = np.zeros(SHAPE[1:], np.uint8)
    m[5:10, 5:10] = 1
    paint(client, sid, "z", 2, 1, m)
    box = {"axis": "z", "slice": 3, "label": 2, "box": [10, 10, 30, 30]}
    assert client.post(f"/api/sessions/{sid}/segment", json=box).status_code == 200

    def picture() -> np.ndarray:
        return nifti_zyx(client.get(f"/api/sessions/{sid}/volume.nii.gz").content)[0]

    r = client.post(f"/api/sessions/{sid}/window", json={"preset": "auto", "window": [500, 200]})
    assert r.status_code == 200, r.text
    assert r.json()["preset"]["window_level_width"] == [500, 200] and r.json()["undo_steps"] == 2
    row = picture()[0, 0]
    x = np.linspace(0, 1000, SHAPE[2])
    assert (row[x < 400] == 0).all() and (row[x > 600] == 255).all() and 0 < row[np.argmin(abs(x - 500))] < 255
    labels = server_labels(client, sid)
    assert (labels[2] == 1).sum() == 25 and (labels[3] == 2).any()  # labels kept
    assert client.post(f"/api/sessions/{sid}/segment", json={**box, "label": 3}).status_code == 200
    assert client.post(f"/api/sessions/{sid}/undo").json()["undone"] == "segment"
    # a restarted server maps the volume with the chosen window
    again = Client(create_app(None, state_dir=tmp_path / "state", predictor=predictor, preencode_slices=0))
    assert again.get(f"/api/sessions/{sid}").json()["volume"]["preset"]["window_level_width"] == [500, 200]
    saved = again.post(f"/api/sessions/{sid}/save", json={"format": "nii.gz"}).json()
    side = again.get(saved["sidecar_url"]).json()
    prompts = side["metadata"]["prompts"] if "metadata" in side else side["prompts"]
    assert [p["intensity"]["preset"] for p in prompts] == ["percentile", "window"]
    assert prompts[1]["intensity"]["window_level_width"] == [500, 200] and prompts[1]["box"] == [10, 10, 30, 30]
    assert "width must be positive" in assert_error(again.post(f"/api/sessions/{sid}/window", json={"window": [1, 0]}), 422)


def test_slice_tools_change_one_segment_and_undo(served_volume):
    """Fill between annotated slices, fill holes on one slice, remove small islands: each one undo step named after
    the tool; the tool's new voxels never overwrite another segment."""
    _, client, sid = served_volume
    ring = np.zeros(SHAPE[1:], np.uint8)
    ring[10:30, 10:30] = 1
    ring[16:24, 16:24] = 0  # a hole
    paint(client, sid, "z", 1, 1, ring)
    paint(client, sid, "z", 4, 1, ring)
    other = np.zeros(SHAPE[1:], np.uint8)
    other[12:14, 12:40] = 1
    paint(client, sid, "z", 2, 2, other)  # segment 2 crosses where segment 1 will be filled in
    tool = f"/api/sessions/{sid}/segments/1/tool"

    r = client.post(tool, json={"tool": "fill_between"}).json()
    lab = server_labels(client, sid)
    assert r["tool"] == "fill_between" and [seg["slices"] for seg in r["labels"] if seg["value"] == 1] == [[1, 2, 3, 4]]
    assert np.array_equal(lab[3] == 1, ring == 1) and np.array_equal(lab[2] == 2, other == 1)  # segment 2 kept
    assert np.array_equal(lab[2] == 1, (ring == 1) & (other == 0))

    r = client.post(tool, json={"tool": "fill_holes", "slice": 4}).json()
    lab = server_labels(client, sid)
    assert lab[4, 16:24, 16:24].all() and not lab[3, 16:24, 16:24].any()
    islands = np.zeros(SHAPE[1:], np.uint8)
    islands[35:37, 40:42] = 1  # 4 voxels, apart from the rest
    paint(client, sid, "z", 0, 1, islands)
    client.post(tool, json={"tool": "remove_small", "min_voxels": 10})
    assert not (server_labels(client, sid)[0] == 1).any()
    kinds = [client.post(f"/api/sessions/{sid}/undo").json()["undone"] for _ in range(4)]
    assert kinds == ["remove_small", "edit", "fill_holes", "fill_between"]
    assert not (server_labels(client, sid)[2:4] == 1).any()
    assert "whole segment" in assert_error(client.post(tool, json={"tool": "keep_largest", "slice": 1}), 422)
    assert "no voxels" in assert_error(client.post(f"/api/sessions/{sid}/segments/9/tool", json={"tool": "smooth"}), 422)
    assert assert_error(client.post(tool, json={"tool": "sharpen"}), 422)


def test_segments_travel_through_saved_files_and_come_back_for_review(tmp_path):
    """Name, colour and SNOMED CT type set in the app are saved in NRRD (3D Slicer's keys), NIfTI (sidecar) and
    MHA; each file opened again as the mask of the same volume, in a new session, restores labels and segments.
    A mask on another grid is refused, naming what differs."""
    from medsamkit.io import read_mask

    data = tmp_path / "data"
    data.mkdir()
    vol = np.random.default_rng(2).normal(100, 20, SHAPE).astype(np.float32)
    write_nifti(data / "v.nii.gz", vol)
    client = Client(create_app(data, state_dir=tmp_path / "state", preencode_slices=0))
    sid = new_session(client)
    assert client.post(f"/api/sessions/{sid}/volume", json={"path": "v.nii.gz"}).status_code == 200
    m = np.zeros(SHAPE[1:], np.uint8)
    m[5:15, 5:20] = 1
    paint(client, sid, "z", 2, 3, m)
    paint(client, sid, "z", 3, 5, m)
    settings = {"name": "liver", "color": [200, 100, 50], "category": "anatomical structure", "type": "liver"}
    assert client.put(f"/api/sessions/{sid}/segments/3", json=settings).status_code == 200
    client.put(
        f"/api/sessions/{sid}/segments/5",
        json={"name": "lesion", "category": "morphologically altered structure", "type": "lesion"},
    )
    bad = {"category": "anatomical structure", "type": "lesion"}
    assert "not a type of" in assert_error(client.put(f"/api/sessions/{sid}/segments/3", json=bad), 422)
    truth = server_labels(client, sid)
    for fmt, suffix in (("nrrd", ".nrrd"), ("nii.gz", ".nii.gz"), ("mha", ".mha")):
        saved = client.post(f"/api/sessions/{sid}/save", json={"format": fmt}).json()
        (data / f"seg{suffix}").write_bytes(client.get(saved["url"]).content)
        (data / f"seg{suffix}.json").write_bytes(client.get(saved["sidecar_url"]).content)
        if fmt == "nrrd":  # Slicer's keys alone carry them
            (data / "seg.nrrd.json").unlink()
            like = read_image(data / "v.nii.gz")
            _, segs = read_mask(data / "seg.nrrd", like)
            assert (segs[3].name, segs[3].color, segs[3].type, segs[5].category) == (
                "liver",
                (200, 100, 50),
                "liver",
                "morphologically altered structure",
            )
        other = new_session(client)
        r = client.post(f"/api/sessions/{other}/volume", json={"path": "v.nii.gz", "mask": f"seg{suffix}"})
        assert r.status_code == 200, r.text
        assert r.json()["mask_source"] == f"seg{suffix}" and np.array_equal(server_labels(client, other), truth)
        got = {seg["value"]: (seg["name"], seg["color"], seg["category"], seg["type"]) for seg in r.json()["labels"]}
        assert got == {
            3: ("liver", [200, 100, 50], "anatomical structure", "liver"),
            5: ("lesion", None, "morphologically altered structure", "lesion"),
        }, fmt
        # review: mark reviewed, correct, undo back to the loaded mask, undo the load itself
        client.put(f"/api/sessions/{other}/segments/3", json={"reviewed": True})
        paint(client, other, "z", 2, 3, np.zeros(SHAPE[1:], np.uint8))
        assert client.post(f"/api/sessions/{other}/undo").json()["undone"] == "edit"
        assert client.post(f"/api/sessions/{other}/undo").json()["undone"] == "load mask"
        assert not server_labels(client, other).any()
        client.delete(f"/api/sessions/{other}")
    # an uploaded mask works the same; one on another grid, or of another type, is refused
    up = new_session(client)
    client.post(f"/api/sessions/{up}/volume", json={"path": "v.nii.gz"})
    r = client.post(f"/api/sessions/{up}/mask", files={"file": ("seg.nrrd", (data / "seg.nrrd").read_bytes())})
    assert r.status_code == 200 and np.array_equal(server_labels(client, up), truth)
    assert not list((tmp_path / "state" / up).glob("mask-*"))  # the upload is not kept
    img = nib.load(data / "seg.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine @ np.diag([1, 1, 1.5, 1])), data / "thick.nii.gz")
    assert "spacing" in assert_error(client.post(f"/api/sessions/{up}/mask", json={"path": "thick.nii.gz"}), 422)
    assert "unsupported file type" in assert_error(client.post(f"/api/sessions/{up}/mask", files={"file": ("m.jpg", b"x")}), 415)
    assert np.array_equal(server_labels(client, up), truth)  # refused loads changed nothing


@requires_shared
def test_a_dicom_series_reopens_with_its_saved_seg(tmp_path):
    """Segments saved as DICOM-SEG of a DICOM series (name, colour, SNOMED CT type) come back when the series is
    opened again with that SEG as its mask."""
    data = tmp_path / "data"
    shutil.copytree(DATA / "totalseg_examples_3d" / "images" / "ct_dicom", data / "ct_dicom")
    client = Client(create_app(data, state_dir=tmp_path / "state", preencode_slices=0))
    sid = new_session(client)
    info = client.post(f"/api/sessions/{sid}/volume", json={"path": "ct_dicom"}).json()
    z, y, x = info["shape"]
    m = np.zeros((y, x), np.uint8)
    m[y // 3 : y // 2, x // 3 : x // 2] = 1
    paint(client, sid, "z", z // 2, 2, m)
    settings = {"name": "lesion", "color": [240, 30, 30], "category": "morphologically altered structure", "type": "lesion"}
    client.put(f"/api/sessions/{sid}/segments/2", json=settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the example series' header repairs (tested in tests/io)
        saved = client.post(f"/api/sessions/{sid}/save", json={"format": "dcm"}).json()
    (data / "seg.dcm").write_bytes(client.get(saved["url"]).content)
    other = new_session(client)
    r = client.post(f"/api/sessions/{other}/volume", json={"path": "ct_dicom", "mask": "seg.dcm"})
    assert r.status_code == 200, r.text
    (seg,) = r.json()["labels"]  # a DICOM-SEG numbers its segments 1..n
    assert (seg["value"], seg["name"], seg["category"], seg["type"]) == (
        1,
        "lesion",
        "morphologically altered structure",
        "lesion",
    )
    assert np.abs(np.subtract(seg["color"], [240, 30, 30])).max() <= 1
    assert np.array_equal(server_labels(client, other) == 1, server_labels(client, sid) == 2)


def test_review_fixes(tmp_path):
    """Labels saved by the previous version (one labels.npz) survive a partial save; a mask that does not fit
    leaves the session as it was; undoing a delete brings the segment's name and settings back; a 2D image reloads
    its own NIfTI mask; a sidecar naming segment 300 is refused."""
    data = tmp_path / "data"
    data.mkdir()
    write_nifti(data / "v.nii.gz", np.random.default_rng(3).normal(100, 20, SHAPE).astype(np.float32))
    state = tmp_path / "state"
    client = Client(create_app(data, state_dir=state, preencode_slices=0))
    sid = new_session(client)
    client.post(f"/api/sessions/{sid}/volume", json={"path": "v.nii.gz"})
    m = np.zeros(SHAPE[1:], np.uint8)
    m[5:15, 5:20] = 1
    for k in range(SHAPE[0]):
        paint(client, sid, "z", k, 1, m)
    truth = server_labels(client, sid)
    # as the previous version left it: one labels.npz, no chunks
    meta = json.loads((state / sid / "session.json").read_text())
    with open(state / sid / "labels.npz", "wb") as f:
        np.savez_compressed(f, shape=np.array(SHAPE), offset=np.zeros(3, np.int64), block=truth, volume_id=str(meta["volume_id"]))
    shutil.rmtree(state / sid / "labels")
    again = Client(create_app(data, state_dir=state, preencode_slices=0))
    paint(again, sid, "z", 0, 2, m)  # a change touching one chunk
    third = Client(create_app(data, state_dir=state, preencode_slices=0))
    after = server_labels(third, sid)
    assert np.array_equal(after[1:], truth[1:]) and (after[0] == 2).sum() == m.sum()
    assert not (state / sid / "labels.npz").exists()

    # a mask on another grid: 422, and the session still holds its volume and labels
    img = nib.load(data / "v.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine @ np.diag([2, 1, 1, 1])), data / "wide.nii.gz")
    write_nifti(data / "w.nii.gz", np.zeros(SHAPE, np.float32))
    r = third.post(f"/api/sessions/{sid}/volume", json={"path": "w.nii.gz", "mask": "wide.nii.gz"})
    assert "spacing" in assert_error(r, 422)
    info = third.get(f"/api/sessions/{sid}").json()["volume"]
    assert info["source"] == "v.nii.gz" and np.array_equal(server_labels(third, sid), after)

    # delete, undo (name and colour back), redo (forgotten again)
    third.put(f"/api/sessions/{sid}/segments/1", json={"name": "organ", "color": [1, 2, 3], "reviewed": True})
    assert third.delete(f"/api/sessions/{sid}/segments/1").json()["labels"][0]["value"] == 2
    (seg,) = [x for x in third.post(f"/api/sessions/{sid}/undo").json()["labels"] if x["value"] == 1]
    assert (seg["name"], seg["color"], seg["reviewed"], seg["voxels"]) == ("organ", [1, 2, 3], True, int((after == 1).sum()))
    assert [x["value"] for x in third.post(f"/api/sessions/{sid}/redo").json()["labels"]] == [2]
    fourth = Client(create_app(data, state_dir=state, preencode_slices=0))  # the settings travel with the history
    (seg,) = [x for x in fourth.post(f"/api/sessions/{sid}/undo").json()["labels"] if x["value"] == 1]
    assert seg["name"] == "organ"

    # a 2D image reloads the NIfTI mask the app saved for it; a sidecar naming segment 300 is refused
    from PIL import Image

    Image.fromarray((np.random.default_rng(4).random((30, 40)) * 255).astype(np.uint8)).save(data / "p.png")
    two = new_session(fourth)
    fourth.post(f"/api/sessions/{two}/volume", json={"path": "p.png"})
    paint(fourth, two, "z", 0, 4, np.pad(np.ones((10, 10), np.uint8), ((5, 15), (5, 25))))
    saved = fourth.post(f"/api/sessions/{two}/save", json={"format": "nii.gz"}).json()
    (data / "p_mask.nii.gz").write_bytes(fourth.get(saved["url"]).content)
    r = fourth.post(f"/api/sessions/{two}/mask", json={"path": "p_mask.nii.gz"})
    assert r.status_code == 200, r.text
    (data / "p_mask.nii.gz.json").write_text('{"segments": {"300": {"name": "x"}}}')
    assert "outside 1..255" in assert_error(fourth.post(f"/api/sessions/{two}/mask", json={"path": "p_mask.nii.gz"}), 422)


def test_the_prompt_log_stays_bounded(served_volume, monkeypatch):
    """The prompt log drops its older half past its size bound and keeps the newest prompts."""
    from medsamkit.app import sessions

    tmp_path, client, sid = served_volume
    monkeypatch.setattr(sessions, "PROMPT_LOG_BYTES", 3000)
    store = client.app.state.store
    s = store.get(sid)
    for k in range(60):
        with s.lock:
            store.log_prompt(s, {"axis": "z", "slice": k % SHAPE[0], "label": 1, "box": [k, 0, k + 5, 5], "points": []})
    log = tmp_path / "state" / sid / "prompts.jsonl"
    kept = store.prompts(s)
    assert log.stat().st_size <= 3000 + 400 and 5 < len(kept) < 60
    assert kept[-1]["box"] == [59, 0, 64, 5] and [p["box"][0] for p in kept] == list(range(60 - len(kept), 60))
