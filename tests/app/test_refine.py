"""Correction clicks with the previous mask fed back (medsamkit.app.refine): the decision rule, and the segment
route end to end on the ellipsoid volume of test_server (one slice encoded per test, decodes only after it)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
pytest.importorskip("nibabel")

from medsamkit.app import create_app, refine  # noqa: E402
from medsamkit.app.refine import SegmentKey, feeds_back  # noqa: E402
from medsamkit.predict import segment_2d  # noqa: E402
from tests.app.test_server import Client, ellipsoid, new_session, png_array, png_b64, upload, write_nifti  # noqa: E402
from tests.conftest import box_of  # noqa: E402

BOX = (10.0, 20.0, 50.0, 44.0)


def key(
    volume_id: str | None = "v1",
    axis: str = "z",
    k: int = 3,
    label: int = 1,
    box: tuple[float, float, float, float] | None = BOX,
    points: tuple[tuple[float, ...], ...] = (),
) -> SegmentKey:
    return SegmentKey.of(volume_id, axis, k, label, box, points)


# -- the rule -------------------------------------------------------------------------------------------------


def test_segment_key_normalises_points_and_box() -> None:
    k = SegmentKey.of("v", "y", 2, 4, [1, 2, 3, 4], [[5, 6], [7, 8, 0]])
    assert k.box == (1.0, 2.0, 3.0, 4.0)
    assert k.points == ((5.0, 6.0, 1.0), (7.0, 8.0, 0.0))
    assert SegmentKey.of("v", "y", 2, 4, None, []).box is None


@pytest.mark.parametrize(
    "previous, request_, expected",
    [
        (key(), key(points=((30, 32, 0),)), True),  # box, then box + a click
        (key(points=((30, 32, 0),)), key(points=((30, 32, 0), (12, 30, 1))), True),  # one more click
        (key(points=((30, 32, 0),)), key(points=((30, 32, 0), (12, 30, 1), (40, 30, 0))), True),  # two more
        (key(box=None, points=((30, 32, 1),)), key(box=None, points=((30, 32, 1), (12, 30, 0))), True),  # clicks only
        (None, key(points=((30, 32, 0),)), False),  # nothing before
        (key(), key(), False),  # the same request again: no new click
        (key(points=((30, 32, 0),)), key(points=((30, 32, 0),)), False),
        (key(points=((30, 32, 0), (12, 30, 1))), key(points=((30, 32, 0),)), False),  # a click taken back
        (key(points=((30, 32, 0),)), key(points=((30, 32, 1), (12, 30, 1))), False),  # an earlier click changed
        (key(points=((30, 32, 0),)), key(points=((12, 30, 1), (30, 32, 0))), False),  # not a prefix
        (key(), key(k=2, points=((30, 32, 0),)), False),  # another slice
        (key(), key(axis="y", points=((30, 32, 0),)), False),  # another axis
        (key(), key(label=2, points=((30, 32, 0),)), False),  # another label
        (key(), key(box=(10, 20, 50, 45), points=((30, 32, 0),)), False),  # another box
        (key(), key(box=None, points=((30, 32, 1),)), False),  # the box dropped
        (key(box=None, points=((30, 32, 1),)), key(points=((30, 32, 1), (12, 30, 1))), False),  # a box added
        (key(), key(volume_id="v2", points=((30, 32, 0),)), False),  # a new volume
    ],
)
def test_feeds_back(previous: SegmentKey | None, request_: SegmentKey, expected: bool) -> None:
    assert feeds_back(previous, request_) is expected


# -- through the server ---------------------------------------------------------------------------------------

VOL, TRUTH = ellipsoid(0)
K = 3
EBOX = [float(v) for v in np.add(box_of(TRUTH[K]), [-2, -2, 2, 2])]
CENTRE = [30.0, 32.0]  # (x, y) of the ellipsoid's centre on slice K


@pytest.fixture(scope="module")
def app(predictor, tmp_path_factory):
    return create_app(None, state_dir=tmp_path_factory.mktemp("state"), predictor=predictor, preencode_slices=0)


@pytest.fixture(scope="module")
def nifti(tmp_path_factory) -> bytes:
    return write_nifti(tmp_path_factory.mktemp("vol") / "ellipsoid.nii.gz", VOL).read_bytes()


@pytest.fixture
def session(app, nifti) -> tuple[object, str]:
    client = Client(app)
    sid = new_session(client)
    assert upload(client, sid, nifti).status_code == 200
    return client, sid


def post(client, sid: str, **body) -> dict:
    r = client.post(f"/api/sessions/{sid}/segment", json={"axis": "z", "slice": K, "label": 1, **body})
    assert r.status_code == 200, r.text
    return r.json()


def labels_of(answer: dict) -> np.ndarray:
    """The slice's label values from a segment answer's mask PNG."""
    return png_array(base64.b64decode(answer["mask"]["data"]))


def test_box_then_clicks_are_refined_and_match_the_library(app, session, predictor) -> None:
    client, sid = session
    first = post(client, sid, box=EBOX)
    assert first["refined"] is False
    # a negative click in the middle of a good mask: the box-trained LiteMedSAM cuts the object up without the
    # previous mask and keeps it with it, so fed back and not fed back are told apart
    clicks = [[*CENTRE, 0.0]]
    second = post(client, sid, box=EBOX, points=clicks)
    assert second["refined"] is True
    picture = app.state.store.get(sid).volume.picture("z", K)
    lib_first = segment_2d(predictor, picture, boxes=[EBOX])  # encodes the slice; the calls below reuse it
    assert np.array_equal(labels_of(first) == 1, lib_first.masks[0])
    fed = segment_2d(predictor, None, boxes=[EBOX], points=clicks, mask_input=lib_first.logits[0])
    plain = segment_2d(predictor, None, boxes=[EBOX], points=clicks)
    assert (fed.masks[0] != plain.masks[0]).sum() > 20  # the check below can tell fed back from not
    assert np.array_equal(labels_of(second) == 1, fed.masks[0])
    assert second["pixels"] == int(fed.masks[0].sum())
    # a further click goes on from the refined result
    clicks.append([14.0, 32.0, 1.0])
    third = post(client, sid, box=EBOX, points=clicks)
    assert third["refined"] is True
    fed2 = segment_2d(predictor, None, boxes=[EBOX], points=clicks, mask_input=fed.logits[0])
    assert np.array_equal(labels_of(third) == 1, fed2.masks[0])


def test_another_slice_label_or_box_is_not_refined(session) -> None:
    client, sid = session
    post(client, sid, box=EBOX)
    assert post(client, sid, slice=K - 1, points=[[*CENTRE, 1.0]])["refined"] is False  # a click on another slice
    post(client, sid, box=EBOX)
    assert post(client, sid, label=2, box=EBOX, points=[[*CENTRE, 0.0]])["refined"] is False  # another label
    post(client, sid, box=EBOX)
    other_box = [EBOX[0] + 1, *EBOX[1:]]
    assert post(client, sid, box=other_box, points=[[*CENTRE, 0.0]])["refined"] is False  # another box
    # clicks only on a slice: the second click is refined, a click that drops the first one is not
    post(client, sid, slice=K - 1, points=[[*CENTRE, 1.0]])
    assert post(client, sid, slice=K - 1, points=[[*CENTRE, 1.0], [14.0, 32.0, 1.0]])["refined"] is True
    assert post(client, sid, slice=K - 1, points=[[14.0, 32.0, 1.0], [40.0, 32.0, 1.0]])["refined"] is False


def test_brush_edit_undo_and_a_new_volume_reset_it(session, nifti) -> None:
    client, sid = session
    post(client, sid, box=EBOX)
    edit = np.zeros(TRUTH[K].shape, bool)
    edit[30:34, 28:33] = True
    r = client.put(f"/api/sessions/{sid}/mask/z/{K}", json={"label": 1, "png": png_b64(edit)})
    assert r.status_code == 200, r.text
    assert post(client, sid, box=EBOX, points=[[*CENTRE, 0.0]])["refined"] is False  # the brush edit dropped it
    assert post(client, sid, box=EBOX, points=[[*CENTRE, 0.0], [14.0, 32.0, 1.0]])["refined"] is True
    assert client.post(f"/api/sessions/{sid}/undo").status_code == 200
    three = [[*CENTRE, 0.0], [14.0, 32.0, 1.0], [44.0, 32.0, 1.0]]
    assert post(client, sid, box=EBOX, points=three)["refined"] is False  # undo dropped it
    assert upload(client, sid, nifti).status_code == 200  # the same file again is a new volume
    assert post(client, sid, box=EBOX, points=[*three, [20.0, 32.0, 1.0]])["refined"] is False


def test_switched_off(session, monkeypatch) -> None:
    client, sid = session
    monkeypatch.setattr(refine, "FEED_BACK_MASK", False)
    post(client, sid, box=EBOX)
    assert post(client, sid, box=EBOX, points=[[*CENTRE, 0.0]])["refined"] is False
