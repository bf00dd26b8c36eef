"""The annotation server's API end to end on tiny synthetic volumes (a bright ellipsoid in noise, 6x64x64).

Model work is kept to a handful of encodes: the apps share the session-scoped predictor, and one module-scoped
app keeps its content-keyed embedding cache between tests.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
nib = pytest.importorskip("nibabel")
from PIL import Image  # noqa: E402

with warnings.catch_warnings():  # starlette 1.x asks for httpx2 (not installed); httpx still works
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

from medsamkit.app import create_app  # noqa: E402
from medsamkit.errors import MedsamkitWarning  # noqa: E402
from tests.conftest import DATA, assert_valid_dicom, box_of, dice, disk_image, requires_shared  # noqa: E402

SHAPE = (6, 64, 64)
AFFINE = np.array([[-0.8, 0, 0, 30.0], [0, 0.8, 0, -20.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])


def ellipsoid(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(Z, Y, X) float32 volume with a bright ellipsoid in noise, and the ellipsoid's mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2]]
    mask = ((z - 2.5) / 3.4) ** 2 + ((y - 32) / 15) ** 2 + ((x - 30) / 20) ** 2 <= 1
    vol = rng.normal(40, 8, SHAPE)
    vol[mask] = rng.normal(200, 8, int(mask.sum()))
    return vol.astype(np.float32), mask


def write_nifti(path: Path, vol: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), AFFINE), path)  # (z, y, x) -> (i, j, k)
    return path


def nifti_zyx(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    img = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(data))
    return np.asarray(img.dataobj).transpose(2, 1, 0), img.affine


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def png_b64(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def Client(app, **kw) -> TestClient:  # noqa: N802 - reads as the class it builds
    """A test client that asks for 127.0.0.1 (the server answers only the hosts it was started for)."""
    return TestClient(app, base_url="http://127.0.0.1", **kw)


def new_session(client: TestClient) -> str:
    r = client.post("/api/sessions")
    assert r.status_code == 200
    return r.json()["session"]


def upload(client: TestClient, sid: str, content: bytes, name: str = "ct.nii.gz", **fields: str):
    return client.post(f"/api/sessions/{sid}/volume", files={"file": (name, content)}, data=fields)


def assert_error(r, *statuses: int) -> str:
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    return body["error"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "cases").mkdir()
    write_nifti(root / "cases" / "ellipsoid.nii.gz", ellipsoid(0)[0])
    return root


@pytest.fixture(scope="module")
def app(predictor, data_dir, tmp_path_factory):
    return create_app(data_dir, state_dir=tmp_path_factory.mktemp("state"), predictor=predictor, preencode_slices=0)


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return Client(app)


@pytest.fixture(scope="module")
def opened(client, data_dir) -> str:
    """A session with the ellipsoid volume open (nothing segmented)."""
    sid = new_session(client)
    r = upload(client, sid, (data_dir / "cases" / "ellipsoid.nii.gz").read_bytes())
    assert r.status_code == 200, r.text
    return sid


def test_segment_propagate_edit_undo_save(client, data_dir, tmp_path):
    vol, truth = ellipsoid(0)
    sid = new_session(client)
    r = upload(client, sid, (data_dir / "cases" / "ellipsoid.nii.gz").read_bytes(), name="../../secret/ct.nii.gz")
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["shape"] == [6, 64, 64] and info["spacing"] == pytest.approx([0.8, 0.8, 2.5])
    assert info["source"] == "ct.nii.gz" and info["labels"] == [] and not info["is_2d"]
    assert not any("secret" in p.name or p.name == "ct.nii.gz" for p in Path(client.app.state.store.state_dir, sid).rglob("*"))

    # a box on the middle slice
    x0, y0, x1, y1 = box_of(truth[3])
    r = client.post(
        f"/api/sessions/{sid}/segment", json={"axis": "z", "slice": 3, "label": 1, "box": [x0 - 2, y0 - 2, x1 + 2, y1 + 2]}
    )
    assert r.status_code == 200, r.text
    seg = r.json()
    assert seg["label"] == 1 and seg["slice"] == 3 and seg["pixels"] > 0 and 0 < seg["score"] <= 1.5 and seg["ms"] > 0
    slice_mask = png_array(base64.b64decode(seg["mask"]["data"]))
    assert slice_mask.shape == (64, 64) and dice(slice_mask == 1, truth[3]) > 0.8
    assert np.array_equal(png_array(client.get(f"/api/sessions/{sid}/mask/z/3.png").content), slice_mask)

    # propagation from that slice
    r = client.post(f"/api/sessions/{sid}/propagate", json={"label": 1, "slice": 3, "axis": "z"})
    assert r.status_code == 200, r.text
    prop = r.json()
    assert prop["slices"][0] <= 2 and prop["slices"][1] >= 4 and prop["voxels"] > 0
    progress = client.get(f"/api/sessions/{sid}/progress").json()
    assert progress["job"] == "propagate" and not progress["running"] and progress["done"] == progress["total"] == 6
    mask3d, affine = nifti_zyx(client.get(f"/api/sessions/{sid}/mask.nii.gz").content)
    assert mask3d.dtype == np.uint8 and np.allclose(affine, AFFINE)
    assert np.array_equal(mask3d[3], slice_mask)  # the key slice keeps its pixels
    assert dice(mask3d == 1, truth) > 0.7

    # a brush edit on slice 2 (label 2 painted, label 1 trimmed), then undo restores the mask exactly
    edited = (mask3d[2] == 1).copy()
    edited[:, 30:] = False
    r = client.put(f"/api/sessions/{sid}/mask/z/2", json={"label": 1, "png": png_b64(edited)})
    assert r.status_code == 200 and r.json()["changed"], r.text
    paint = np.zeros((64, 64), np.uint8)
    paint[5:9, 5:12] = 1
    r = client.put(
        f"/api/sessions/{sid}/mask/z/2?label=2", content=paint.tobytes(), headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 200, r.text
    after = png_array(client.get(f"/api/sessions/{sid}/mask/z/2.png").content)
    assert np.array_equal(after == 1, edited & (paint == 0)) and np.array_equal(after == 2, paint == 1)
    assert client.post(f"/api/sessions/{sid}/undo").json()["undone"] == "edit"
    assert client.post(f"/api/sessions/{sid}/undo").json()["undone"] == "edit"
    assert np.array_equal(nifti_zyx(client.get(f"/api/sessions/{sid}/mask.nii.gz").content)[0], mask3d)
    assert client.post(f"/api/sessions/{sid}/undo").json()["undone"] == "propagate"
    restored = nifti_zyx(client.get(f"/api/sessions/{sid}/mask.nii.gz").content)[0]
    assert np.array_equal(restored[3], slice_mask) and not restored[[0, 1, 2, 4, 5]].any()
    r = client.post(f"/api/sessions/{sid}/propagate", json={"label": 1, "slice": 3})  # redo (cached slices)
    assert r.status_code == 200

    # label names and saving
    assert client.put(f"/api/sessions/{sid}/labels/1", json={"name": "tumour"}).status_code == 200
    labels = client.get(f"/api/sessions/{sid}/labels").json()["labels"]
    assert [{k: seg[k] for k in ("value", "name", "voxels")} for seg in labels] == [
        {"value": 1, "name": "tumour", "voxels": int((mask3d == 1).sum())}
    ]
    # the counts kept up to date by every change are those of the volume: voxels, slices holding it, millilitres
    assert labels[0]["slices"] == [int(k) for k in np.flatnonzero((mask3d == 1).any(axis=(1, 2)))]
    spacing = np.linalg.norm(AFFINE[:3, :3], axis=0)
    assert labels[0]["ml"] == pytest.approx(int((mask3d == 1).sum()) * float(np.prod(spacing)) / 1000, abs=1e-4)
    r = client.post(f"/api/sessions/{sid}/save", json={"format": "nii.gz"})
    assert r.status_code == 200, r.text
    saved = tmp_path / "saved.nii.gz"
    saved.write_bytes(client.get(r.json()["url"]).content)
    img = nib.load(saved)
    assert np.array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), mask3d)
    assert np.array_equal(img.affine, nib.load(data_dir / "cases" / "ellipsoid.nii.gz").affine)
    sidecar = client.get(r.json()["sidecar_url"]).json()
    assert sidecar["labels"] == {"1": "tumour"} and sidecar["source"] == "ct.nii.gz"
    r = client.post(f"/api/sessions/{sid}/save", json={"format": "nrrd"})
    assert r.status_code == 200 and client.get(r.json()["url"]).status_code == 200
    # the viewer's volume: uint8 on the source affine
    shown, aff = nifti_zyx(client.get(f"/api/sessions/{sid}/volume.nii.gz").content)
    assert shown.dtype == np.uint8 and shown.shape == SHAPE and np.allclose(aff, AFFINE)
    assert np.array_equal(png_array(client.get(f"/api/sessions/{sid}/slice/z/3.png").content), shown[3])
    assert png_array(client.get(f"/api/sessions/{sid}/slice/x/10.png").content).shape == (6, 64)  # rows z, columns y


def test_open_from_data_folder(client, opened):
    sid = new_session(client)
    r = client.post(f"/api/sessions/{sid}/volume", json={"path": "cases/ellipsoid.nii.gz", "preset": "percentile"})
    assert r.status_code == 200, r.text
    assert r.json()["shape"] == [6, 64, 64] and r.json()["source"] == "cases/ellipsoid.nii.gz"
    a = client.get(f"/api/sessions/{sid}/slice/y/20.png").content
    assert a == client.get(f"/api/sessions/{opened}/slice/y/20.png").content


@pytest.mark.parametrize("path", ["../outside.nii.gz", "cases/../../outside.nii.gz", "/etc/passwd", "link.nii.gz", "linkdir"])
def test_paths_outside_the_data_folder_are_refused(client, data_dir, tmp_path_factory, path):
    outside = tmp_path_factory.mktemp("outside")
    write_nifti(outside / "outside.nii.gz", ellipsoid(0)[0])
    for name, target in (("link.nii.gz", outside / "outside.nii.gz"), ("linkdir", outside)):
        if not (data_dir / name).is_symlink():
            os.symlink(target, data_dir / name)
    sid = new_session(client)
    assert_error(client.post(f"/api/sessions/{sid}/volume", json={"path": path}), 403)


def test_no_data_folder_and_bad_requests(predictor, tmp_path):
    client = Client(create_app(None, state_dir=tmp_path, predictor=predictor, preencode_slices=0))
    sid = new_session(client)
    assert "--data" in assert_error(client.post(f"/api/sessions/{sid}/volume", json={"path": "x.nii.gz"}), 403)
    assert_error(client.post(f"/api/sessions/{sid}/volume", content=b"x", headers={"content-type": "text/plain"}), 415)
    assert_error(upload(client, sid, b"MZ...", name="x.exe"), 415)
    assert_error(upload(client, sid, b"not a nifti", name="x.nii.gz"), 422)
    detached = b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\nElementDataFile = /etc/hostname\n"
    assert "LOCAL" in assert_error(upload(client, sid, detached, name="x.mha"), 422)
    assert_error(client.get(f"/api/sessions/{sid}/mask.nii.gz"), 409)  # no volume yet
    info = client.get(f"/api/sessions/{sid}").json()
    assert info["session"] == sid and info["volume"] is None and info["limits"]["max_points"] == 64
    assert client.get(f"/api/sessions/{sid}/progress").json()["running"] is False
    nii = write_nifti(tmp_path / "v.nii.gz", ellipsoid(0)[0]).read_bytes()
    assert "preset" in assert_error(upload(client, sid, nii, preset="sepia"), 422)
    assert "modality" in assert_error(upload(client, sid, nii, modality="XYZ"), 422)
    assert "window" in assert_error(upload(client, sid, nii, window="40"), 422)
    assert upload(client, sid, nii, window="40,400", modality="CT").json()["preset"]["preset"] == "window"
    assert_error(client.get("/api/sessions/not-a-session/labels"), 404)
    assert_error(client.get("/api/nothing"), 404)
    assert client.get("/").status_code == 200 and "<html" in client.get("/").text
    assert len([p for p in (tmp_path / sid).iterdir() if p.name.startswith("source-")]) == 1  # refused uploads are removed


def test_unexpected_errors_are_json_500_without_details(predictor, tmp_path):
    app = create_app(None, state_dir=tmp_path, predictor=predictor, preencode_slices=0)

    def boom() -> None:
        raise RuntimeError("secret detail /srv/path")

    app.add_api_route("/api/boom", boom)
    r = Client(app, raise_server_exceptions=False).get("/api/boom")
    assert r.status_code == 500 and r.json() == {"error": "internal server error"}


def test_upload_size_limit(predictor, tmp_path, data_dir):
    client = Client(create_app(data_dir, state_dir=tmp_path, predictor=predictor, preencode_slices=0, max_upload_bytes=200_000))
    sid = new_session(client)
    assert "limit" in assert_error(upload(client, sid, b"\0" * 200_001, name="big.nii"), 413)  # stopped while streaming
    assert_error(upload(client, sid, b"\0" * (3 << 20), name="big.nii"), 413)  # refused from Content-Length
    assert not [p for p in (tmp_path / sid).iterdir() if p.name.startswith("source-")]
    small = (data_dir / "cases" / "ellipsoid.nii.gz").read_bytes()
    assert len(small) < 200_000 and upload(client, sid, small).status_code == 200


BAD_SEGMENTS = [
    ({"slice": 3, "box": [10, 10, 64, 20]}, "outside"),
    ({"slice": 3, "box": [-1, 10, 20, 20]}, "outside"),
    ({"slice": 3, "box": [30, 10, 20, 20]}, "x0 <= x1"),
    ({"slice": 3, "box": [1, 2, 3]}, "box"),
    ({"slice": 3, "box": [1, 2, 3, "4"]}, "box"),
    ({"slice": 3}, "box and/or points"),
    ({"slice": 3, "points": []}, "box and/or points"),
    ({"slice": 3, "points": [[70, 5, 1]]}, "outside"),
    ({"slice": 3, "points": [[5, 5, 2]]}, "point"),
    ({"slice": 3, "points": [[5]]}, "point"),
    ({"slice": 3, "points": [[5, 5, 0]]}, "foreground"),
    ({"slice": 6, "box": [1, 1, 5, 5]}, "outside 0..5"),
    ({"slice": -1, "box": [1, 1, 5, 5]}, "outside 0..5"),
    ({"slice": 1.5, "box": [1, 1, 5, 5]}, "slice"),
    ({"box": [1, 1, 5, 5]}, "slice"),
    ({"slice": 3, "label": 0, "box": [1, 1, 5, 5]}, "label"),
    ({"slice": 3, "label": 256, "box": [1, 1, 5, 5]}, "label"),
    ({"slice": 3, "label": True, "box": [1, 1, 5, 5]}, "label"),
    ({"slice": 3, "axis": "w", "box": [1, 1, 5, 5]}, "axis"),
    ({"slice": 3, "box": [1, 1, 5, 5], "extra": 1}, "extra"),
    ({"slice": 70, "axis": "x", "box": [1, 1, 5, 5]}, "outside 0..63"),
    ({"slice": 3, "axis": "x", "box": [1, 1, 5, 7]}, "outside the 64x6 slice"),
]


@pytest.mark.parametrize("body,words", BAD_SEGMENTS)
def test_malformed_prompts_are_4xx(client, opened, body, words):
    message = assert_error(client.post(f"/api/sessions/{opened}/segment", json=body), 400, 422)
    assert words.lower() in message.lower()


def test_malformed_requests_are_4xx(client, opened):
    url = f"/api/sessions/{opened}"
    for raw in (b'{"slice": 3, "box": [1, 2, 3, NaN]}', b'{"slice": 3, "box": [1, 2, 3, Infinity]}'):
        assert "finite" in assert_error(
            client.post(f"{url}/segment", content=raw, headers={"content-type": "application/json"}), 422
        )
    assert_error(client.post(f"{url}/segment", content=b"{nope", headers={"content-type": "application/json"}), 400)
    assert_error(client.post(f"{url}/propagate", json={"label": 9, "slice": 3}), 422)  # no pixels of label 9 there
    assert_error(client.post(f"{url}/propagate", json={"label": 1, "slice": 3, "axis": "q"}), 422)
    assert_error(client.put(f"{url}/mask/z/3", json={"label": 1, "png": "%%%"}), 422)
    assert_error(client.put(f"{url}/mask/z/3", json={"label": 1, "png": base64.b64encode(b"junk").decode()}), 422)
    assert "slice is 64x64" in assert_error(
        client.put(f"{url}/mask/z/3", json={"label": 1, "png": png_b64(np.ones((8, 8)))}), 422
    )
    assert_error(
        client.put(f"{url}/mask/z/3?label=1", content=b"\1" * 10, headers={"content-type": "application/octet-stream"}), 422
    )
    assert_error(client.put(f"{url}/mask/z/3", content=b"\1" * 4096, headers={"content-type": "application/octet-stream"}), 422)
    assert_error(client.put(f"{url}/mask/z/9", json={"label": 1, "png": png_b64(np.ones((64, 64)))}), 422)
    assert_error(client.put(f"{url}/labels/0", json={"name": "x"}), 422)
    assert_error(client.put(f"{url}/labels/abc", json={"name": "x"}), 422)
    assert_error(client.put(f"{url}/labels/3", json={"name": "a\nb"}), 422)
    assert_error(client.post(f"{url}/save", json={"format": "exe"}), 422)
    assert "DICOM" in assert_error(client.post(f"{url}/save", json={"format": "dcm"}), 422)
    assert_error(client.post(f"{url}/save", json={"format": "png"}), 422)
    assert_error(client.get(f"{url}/slice/z/6.png"), 422)
    assert_error(client.get(f"{url}/download/session.json"), 404)
    assert_error(client.get(f"{url}/download/..%2Fsession.json"), 404)


def test_sessions_are_isolated(client, opened):
    a = new_session(client)
    upload(client, a, client.get(f"/api/sessions/{opened}/volume.nii.gz").content, name="a.nii.gz")
    client.put(f"/api/sessions/{a}/mask/z/1?label=4", content=b"\1" * 4096, headers={"content-type": "application/octet-stream"})
    url = client.post(f"/api/sessions/{a}/save", json={"format": "nii.gz"}).json()["url"]
    assert client.get(url).status_code == 200
    b = new_session(client)
    assert_error(client.get(url.replace(a, b)), 404)  # B cannot download A's file
    assert_error(client.get(f"/api/sessions/{b}/mask.nii.gz"), 409)  # B has no volume, does not see A's
    assert client.get(f"/api/sessions/{opened}/labels").json()["labels"] == []  # A's label 4 is A's only
    forged = a[:-1] + ("A" if a[-1] != "A" else "B")
    assert_error(client.get(f"/api/sessions/{forged}/mask.nii.gz"), 404)
    assert client.delete(f"/api/sessions/{a}").status_code == 200
    assert_error(client.get(url), 404)


def test_rgb_png_image(client, tmp_path):
    img, truth = disk_image(64, 80, 40, 30, 16, rgb=True, seed=3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    sid = new_session(client)
    r = upload(client, sid, buf.getvalue(), name="photo.png")
    assert r.status_code == 200, r.text
    assert r.json()["shape"] == [1, 64, 80] and r.json()["rgb"] and r.json()["is_2d"]
    assert np.array_equal(png_array(client.get(f"/api/sessions/{sid}/slice/z/0.png").content), img)
    x0, y0, x1, y1 = box_of(truth)
    r = client.post(f"/api/sessions/{sid}/segment", json={"slice": 0, "box": [x0 - 2, y0 - 2, x1 + 2, y1 + 2], "label": 3})
    assert r.status_code == 200, r.text
    labels = png_array(base64.b64decode(r.json()["mask"]["data"]))
    assert dice(labels == 3, truth) > 0.8
    assert_error(client.post(f"/api/sessions/{sid}/propagate", json={"label": 3, "slice": 0}), 422)
    assert_error(client.get(f"/api/sessions/{sid}/slice/y/0.png"), 422)
    shown, _ = nifti_zyx(client.get(f"/api/sessions/{sid}/volume.nii.gz").content)  # NIfTI RGB24 for the viewer
    assert shown.shape == (1, 64, 80) and shown.dtype.names == ("R", "G", "B")
    for fmt in ("png", "nii.gz"):
        r = client.post(f"/api/sessions/{sid}/save", json={"format": fmt})
        assert r.status_code == 200, r.text
        (tmp_path / r.json()["file"]).write_bytes(client.get(r.json()["url"]).content)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "segmentation.png")), labels)
    assert np.array_equal(np.asarray(nib.load(tmp_path / "segmentation.nii.gz").dataobj)[:, :, 0].T, labels)


def test_empty_answers_come_with_a_warning(client, tmp_path):
    """A blank picture gives an empty mask and says why (the library's warning, returned to the page) instead of
    a plausible-looking object; a prompt of only negative clicks is refused."""
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 64), 77, np.uint8)).save(buf, format="PNG")
    sid = new_session(client)
    assert upload(client, sid, buf.getvalue(), name="blank.png").status_code == 200
    with pytest.warns(MedsamkitWarning, match="constant"):  # also in the server's log
        r = client.post(f"/api/sessions/{sid}/segment", json={"slice": 0, "box": [5, 5, 40, 30], "label": 1})
    assert r.status_code == 200, r.text
    assert r.json()["pixels"] == 0 and "constant" in " ".join(r.json()["warnings"])
    img, _ = disk_image(64, 80, 40, 30, 16, rgb=True, seed=3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    assert upload(client, sid, buf.getvalue(), name="photo.png").status_code == 200
    r = client.post(f"/api/sessions/{sid}/segment", json={"slice": 0, "points": [[40, 30, 0]], "label": 1})
    assert "foreground point" in assert_error(r, 422)
    r = client.post(f"/api/sessions/{sid}/segment", json={"slice": 0, "points": [[40, 30, 1]], "label": 1})
    assert r.status_code == 200 and r.json()["warnings"] == []


def test_restart_restores_sessions(predictor, tmp_path, data_dir):
    state = tmp_path / "state"
    first = Client(create_app(data_dir, state_dir=state, predictor=predictor, preencode_slices=0))
    up, by_path = new_session(first), new_session(first)
    upload(first, up, (data_dir / "cases" / "ellipsoid.nii.gz").read_bytes())
    first.post(f"/api/sessions/{by_path}/volume", json={"path": "cases/ellipsoid.nii.gz"})
    m = np.zeros((6, 64), np.uint8)
    m[1:4, 10:40] = 1
    for sid in (up, by_path):
        r = first.put(
            f"/api/sessions/{sid}/mask/y/30?label=7", content=m.tobytes(), headers={"content-type": "application/octet-stream"}
        )
        assert r.status_code == 200, r.text
        first.put(f"/api/sessions/{sid}/labels/7", json={"name": "lesion"})
    before = {sid: first.get(f"/api/sessions/{sid}/mask.nii.gz").content for sid in (up, by_path)}
    saved = first.post(f"/api/sessions/{up}/save", json={"format": "nii.gz"}).json()["url"]

    second = Client(create_app(data_dir, state_dir=state, predictor=predictor, preencode_slices=0))
    for sid in (up, by_path):
        assert np.array_equal(nifti_zyx(second.get(f"/api/sessions/{sid}/mask.nii.gz").content)[0], nifti_zyx(before[sid])[0])
        (seg,) = second.get(f"/api/sessions/{sid}/labels").json()["labels"]
        assert (seg["value"], seg["name"], seg["voxels"], seg["slices"]) == (7, "lesion", 90, [1, 2, 3])
    assert second.get(saved).content == first.get(saved).content
    # undo and redo survive the restart: the edit is taken back, made again, and the history then ends
    un = second.post(f"/api/sessions/{up}/undo").json()
    assert un["undone"] == "edit" and un["remaining"] == 0 and un["redo_steps"] == 1
    assert nifti_zyx(second.get(f"/api/sessions/{up}/mask.nii.gz").content)[0].max() == 0
    third_app = Client(create_app(data_dir, state_dir=state, predictor=predictor, preencode_slices=0))
    re = third_app.post(f"/api/sessions/{up}/redo").json()
    assert re["redone"] == "edit" and re["remaining"] == 1 and re["redo_steps"] == 0
    assert np.array_equal(nifti_zyx(third_app.get(f"/api/sessions/{up}/mask.nii.gz").content)[0], nifti_zyx(before[up])[0])
    assert "nothing to redo" in assert_error(third_app.post(f"/api/sessions/{up}/redo"), 409)
    # a session whose data file disappeared says so instead of failing
    third = Client(create_app(None, state_dir=state, predictor=predictor, preencode_slices=0))
    assert "not available" in assert_error(third.get(f"/api/sessions/{by_path}/labels"), 409)


def test_idle_sessions_are_unloaded_and_reloaded(predictor, tmp_path, data_dir):
    app = create_app(data_dir, state_dir=tmp_path, predictor=predictor, preencode_slices=0, max_loaded=1)
    client = Client(app)
    sids = [new_session(client) for _ in range(2)]
    for i, sid in enumerate(sids):
        client.post(f"/api/sessions/{sid}/volume", json={"path": "cases/ellipsoid.nii.gz"})
        r = client.put(
            f"/api/sessions/{sid}/mask/z/{i}?label=5", content=b"\1" * 4096, headers={"content-type": "application/octet-stream"}
        )
        assert r.status_code == 200, r.text
    store = app.state.store
    assert store.get(sids[0]).volume is None and store.get(sids[1]).volume is not None
    for i, sid in enumerate(sids):
        mask = nifti_zyx(client.get(f"/api/sessions/{sid}/mask.nii.gz").content)[0]
        assert (mask == 5).sum() == 4096 and mask[i].all()


@requires_shared
def test_dicom_series_from_data_folder_saves_dicom_seg(predictor, tmp_path):
    from medsamkit.io import read_dicom_seg, read_image

    data = tmp_path / "data"
    shutil.copytree(DATA / "totalseg_examples_3d" / "images" / "ct_dicom", data / "ct")
    client = Client(create_app(data, state_dir=tmp_path / "state", predictor=predictor, preencode_slices=0))
    sid = new_session(client)
    r = client.post(f"/api/sessions/{sid}/volume", json={"path": "ct"})
    assert r.status_code == 200, r.text
    assert r.json()["shape"] == [20, 512, 512] and r.json()["modality"] == "CT" and r.json()["preset"]["preset"] == "soft_tissue"
    m = np.zeros((512, 512), np.uint8)
    m[200:260, 240:300] = 1
    r = client.put(
        f"/api/sessions/{sid}/mask/z/7?label=2", content=m.tobytes(), headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 200, r.text
    # a backslash is DICOM's value separator: the name is made DICOM-safe there, non-ASCII kept as UTF-8 (the
    # session and the NIfTI sidecar keep it as typed)
    client.put(f"/api/sessions/{sid}/labels/2", json={"name": "Leber\\rechts 肝臓 Ä"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DICOM attributes the test series lacks are generated
        r = client.post(f"/api/sessions/{sid}/save", json={"format": "dcm"})
    assert r.status_code == 200, r.text
    seg = tmp_path / "seg.dcm"
    seg.write_bytes(client.get(r.json()["url"]).content)
    labels, names = read_dicom_seg(seg, read_image(data / "ct"))
    # DICOM-SEG numbers segments 1..n (the standard's rule): label 2 is segment 1
    assert names == {1: "Leber/rechts 肝臓 Ä"} and int((labels == 1).sum()) == 3600 and (labels[7] == 1).sum() == 3600
    assert client.get(f"/api/sessions/{sid}/labels").json()["labels"][0]["name"] == "Leber\\rechts 肝臓 Ä"
    assert_valid_dicom(seg)


def test_concurrent_clients(app, tmp_path):
    vol, truth = ellipsoid(seed=11)  # new content: the 8 clients race to encode the same slice
    content = write_nifti(tmp_path / "v.nii.gz", vol).read_bytes()
    x0, y0, x1, y1 = box_of(truth[2])
    misses = app.state.models.cache.misses
    errors: list[str] = []
    results: list[dict] = []

    def client_run(i: int) -> None:
        try:
            c = Client(app)
            sid = new_session(c)
            r = upload(c, sid, content, name=f"case{i}.nii.gz")
            assert r.status_code == 200, r.text
            r = c.post(f"/api/sessions/{sid}/segment", json={"slice": 2, "label": 1 + i, "box": [x0 - 2, y0 - 2, x1 + 2, y1 + 2]})
            assert r.status_code == 200, r.text
            results.append({**r.json(), "sid": sid})
            labels = c.get(f"/api/sessions/{sid}/labels").json()["labels"]
            assert [v["value"] for v in labels] == [1 + i], labels
        except Exception as e:  # noqa: BLE001 - collected for the main thread
            errors.append(repr(e))

    threads = [threading.Thread(target=client_run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 8 and len({r["sid"] for r in results}) == 8
    masks = [png_array(base64.b64decode(r["mask"]["data"])) > 0 for r in results]
    assert all(np.array_equal(m, masks[0]) for m in masks) and dice(masks[0], truth[2]) > 0.8
    assert app.state.models.cache.misses == misses + 1  # one encode, shared by all eight
    # memory stays bounded: slice embeddings within the global budget, volumes kept for at most max_loaded sessions
    cache = app.state.models.cache
    assert cache.nbytes <= cache.max_bytes
    store = app.state.store
    assert sum(1 for sess in store._sessions.values() if sess.volume is not None) <= store.max_loaded


def test_serve_command(monkeypatch, tmp_path, capsys):
    import uvicorn

    from medsamkit.cli import serve
    from medsamkit.cli.common import CliError, Parser

    parser = Parser(prog="medsamkit")
    serve.add_parser(parser.add_subparsers(dest="command", parser_class=Parser))
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    args = parser.parse_args(
        ["serve", "--port", "8123", "--state", str(tmp_path / "s"), "--data", str(tmp_path), "--threads", "1"]
    )
    args.func(args)
    assert seen["port"] == 8123 and seen["host"] == "127.0.0.1" and seen["app"].state.store.data_dir == tmp_path.resolve()
    assert "http://127.0.0.1:8123/" in capsys.readouterr().err
    args = parser.parse_args(["serve", "--data", str(tmp_path / "missing"), "--state", str(tmp_path / "s")])
    with pytest.raises(CliError, match="not a folder"):
        args.func(args)
