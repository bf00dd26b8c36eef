"""The session store's label changes, tested on the store itself (no HTTP, no model): how a propagated object is
merged into a session's labels (:meth:`SessionStore.merge_propagation`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from medsamkit.app.sessions import Session, SessionStore  # noqa: E402

SHAPE = (6, 8, 10)  # (Z, Y, X)


@pytest.fixture
def opened(tmp_path) -> tuple[SessionStore, Session]:
    """A store with one session holding a 6x8x10 volume, labels all background."""
    data = tmp_path / "data"
    data.mkdir()
    vol = np.random.default_rng(0).normal(100, 20, SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), np.eye(4)), data / "v.nii.gz")
    store = SessionStore(tmp_path / "state", data)
    s = store.create()
    loaded = store.load(data / "v.nii.gz", {}, "v.nii.gz")
    with s.lock:
        store.install(s, loaded, {"kind": "data", "path": "v.nii.gz", "name": "v.nii.gz"}, {})
    return store, s


def _labels(store: SessionStore, s: Session) -> np.ndarray:
    return store.volume(s).labels


def test_merge_re_derives_the_label_inside_the_window_only(opened):
    """Along z, window slices 1..4 from slice 2: label 1's old pixels in the window become background, the object
    paints over label 2, slice 2 keeps its pixels exactly, slices 0 and 5 (outside) do not change; one undo step
    restores everything."""
    store, s = opened
    with s.lock:
        lab = _labels(store, s)
        lab[:, 1:3, 1:3] = 1  # old label 1 on every slice (also outside the window)
        lab[:, 6:8, 6:9] = 2  # another label the object reaches
        lab[2, 4, 4] = 1  # slice 2's own pixels, kept as they are
        before = lab.copy()
        obj = np.zeros((4, 8, 10), bool)  # the window: slices 1..4
        obj[:, 5:8, 5:8] = True
        obj[1, 0, 0] = True  # on slice 2 (window index 1): ignored, slice 2 is kept
        obj[3] = False  # slice 4: nothing propagated there
        covered, voxels, _ = store.merge_propagation(s, "z", 2, 1, 4, 1, obj)
        after = _labels(store, s).copy()
        undo_kinds = [c.kind for c in s.undo]
    assert np.array_equal(after[[0, 5]], before[[0, 5]])  # outside the window
    assert np.array_equal(after[2], before[2])  # the prompt slice
    for z in (1, 3):
        expected = before[z].copy()
        expected[expected == 1] = 0
        expected[5:8, 5:8] = 1  # over label 2 too
        assert np.array_equal(after[z], expected), z
    assert not (after[4] == 1).any() and (after[4] == 2).any()  # label 1 gone from slice 4, label 2 stays
    assert covered == [1, 3] and voxels == int((after[1:5] == 1).sum())
    assert undo_kinds == ["propagate"]
    with s.lock:
        store.undo(s)
        assert np.array_equal(_labels(store, s), before)


def test_merge_along_x_and_an_empty_result(opened):
    """Along x the window is columns; an object found nowhere (but on the prompt slice) covers that slice only."""
    store, s = opened
    with s.lock:
        lab = _labels(store, s)
        lab[2:4, 3:5, 4:8] = 3
        before = lab.copy()
        obj = np.zeros((6, 8, 3), bool)  # columns 4..6
        covered, voxels, _ = store.merge_propagation(s, "x", 5, 4, 6, 3, obj)
        after = _labels(store, s).copy()
    assert covered == [5, 5] and voxels == int((after[:, :, 5] == 3).sum()) == 4
    assert np.array_equal(after[:, :, 5], before[:, :, 5])  # the prompt column kept
    assert not (after[:, :, [4, 6]] == 3).any()  # re-derived (empty) inside the window
    assert np.array_equal(after[:, :, 7], before[:, :, 7])  # outside: unchanged


def test_merge_without_a_change_adds_no_undo_step(opened):
    store, s = opened
    with s.lock:
        _labels(store, s)[1:4, 2:5, 2:5] = 1
        obj = _labels(store, s)[0:6] == 1  # what the labels already hold
        covered, voxels, _ = store.merge_propagation(s, "z", 2, 0, 5, 1, obj)
        assert covered == [1, 3] and voxels == 27 and not s.undo


def test_merged_labels_are_saved(opened, tmp_path):
    """The merge autosaves: a new store on the same folder finds the merged labels."""
    store, s = opened
    with s.lock:
        obj = np.zeros((2, 8, 10), bool)
        obj[:, 2:4, 2:4] = True
        _labels(store, s)[3, 2:4, 2:4] = 1  # the prompt slice holds the object
        store.merge_propagation(s, "z", 3, 3, 4, 1, obj)
        expected = _labels(store, s).copy()
    again = SessionStore(Path(tmp_path / "state"), tmp_path / "data")
    s2 = again.get(s.sid)
    with s2.lock:
        assert np.array_equal(again.volume(s2).labels, expected) and (expected[4] == 1).sum() == 4
