"""The annotation server's bounds and refusals ("nothing lost, nobody in"): one error taxonomy, exact geometry or a
refusal, a clean busy-port error, bounded work, bodies, volumes, sessions and disk, no reads outside the data
folder, Host and framing rules, and the small holes (decompression bombs, DICOM-safe label names, windows).

Each test states the finding it covers; all run on tiny synthetic files (a few on the shared DICOM series)
and never load a volume the limits refuse (the readers are replaced by ones that fail if called).
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
nib = pytest.importorskip("nibabel")

from medsamkit.app import create_app  # noqa: E402
from medsamkit.app import sessions as app_sessions  # noqa: E402
from medsamkit.app.limits import Limits  # noqa: E402
from medsamkit.io.dicom import segment_label  # noqa: E402
from tests.app.live import served  # noqa: E402
from tests.app.test_server import (  # noqa: E402
    Client,
    assert_error,
    ellipsoid,
    new_session,
    nifti_zyx,
    png_b64,
    upload,
    write_nifti,
)
from tests.conftest import DATA, requires_shared  # noqa: E402

DICOM_DIR = DATA / "totalseg_examples_3d" / "images" / "ct_dicom"


@pytest.fixture
def data_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "cases").mkdir(parents=True)
    write_nifti(root / "cases" / "ellipsoid.nii.gz", ellipsoid(0)[0])
    return root


def make(data_dir: Path | None, tmp_path: Path, predictor=None, **kw):
    app = create_app(data_dir, state_dir=tmp_path / "state", predictor=predictor, preencode_slices=0, **kw)
    return app, Client(app)


def paint(client, sid: str, where: str, label: int, raw: bytes):
    """A brush edit as raw bytes (non-zero = ``label``) on ``where`` = "axis/index"."""
    return client.put(
        f"/api/sessions/{sid}/mask/{where}?label={label}", content=raw, headers={"content-type": "application/octet-stream"}
    )


def open_path(client, sid: str, path: str, **options):
    return client.post(f"/api/sessions/{sid}/volume", json={"path": path, **options})


def no_reading(monkeypatch) -> None:
    """Fail the test if the server decodes any image (refusals must come from headers)."""

    def refuse(*a: object, **k: object) -> NoReturn:
        raise AssertionError("read_image was called for a volume that should have been refused from its header")

    monkeypatch.setattr(app_sessions, "read_image", refuse)


def header_only_nifti(path: Path, shape: tuple[int, ...], dtype=np.int16) -> Path:
    """A NIfTI whose header declares ``shape`` (i, j, k) but which holds (almost) no voxels."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr["magic"] = b"n+1"
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\0" * 4
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


# -- 6: one error taxonomy --------------------------------------------------------------------------------------
def test_a_library_bug_is_a_500_not_the_users_mistake(predictor, data_dir, tmp_path, monkeypatch, caplog):
    """A ValueError from inside the library is a bug: 500 without details, traceback in the log (it used to be
    shown as a 422 with its message)."""
    from medsamkit.app.routes import segment as segment_routes
    from medsamkit.errors import PromptError

    app, client = make(data_dir, tmp_path, predictor)
    client = Client(app, raise_server_exceptions=False)
    sid = new_session(client)
    assert open_path(client, sid, "cases/ellipsoid.nii.gz").status_code == 200

    def bug(*a: object, **k: object) -> NoReturn:
        raise ValueError("operands could not be broadcast /srv/secret/x.npy")

    monkeypatch.setattr(segment_routes, "segment_2d", bug)
    with caplog.at_level(logging.ERROR, logger="medsamkit.app"):
        r = client.post(f"/api/sessions/{sid}/segment", json={"slice": 3, "box": [10, 10, 40, 40]})
    assert r.status_code == 500 and r.json() == {"error": "internal server error"}
    assert any(rec.exc_info and "broadcast" in str(rec.exc_info[1]) for rec in caplog.records)

    def user_error(*a: object, **k: object) -> NoReturn:
        raise PromptError("the box is too small for this model")

    monkeypatch.setattr(segment_routes, "segment_2d", user_error)
    r = client.post(f"/api/sessions/{sid}/segment", json={"slice": 3, "box": [10, 10, 40, 40]})
    assert r.status_code == 422 and r.json() == {"error": "the box is too small for this model"}


def test_input_errors_keep_their_status_and_hide_server_paths(data_dir, tmp_path):
    app, client = make(data_dir, tmp_path)
    good = (data_dir / "cases" / "ellipsoid.nii.gz").read_bytes()
    raw = gzip.decompress(good)
    (data_dir / "cases" / "broken.nii").write_bytes(raw[:400])  # truncated voxels
    bad_type = bytearray(raw)
    bad_type[70:72] = struct.pack("<h", 2048)  # an unknown NIfTI datatype: nibabel raises HeaderDataError
    (data_dir / "cases" / "badtype.nii").write_bytes(bytes(bad_type))
    sid = new_session(client)
    secrets = (str(data_dir), str(tmp_path), "/tmp/", "source-")
    for path in ("cases/broken.nii", "cases/badtype.nii"):
        msg = assert_error(client.post(f"/api/sessions/{sid}/volume", json={"path": path}), 422)
        assert Path(path).name in msg and not any(s in msg for s in secrets), msg
    msg = assert_error(upload(client, sid, raw[:400], name="mine.nii"), 422)
    assert not any(s in msg for s in secrets), msg
    msg = assert_error(upload(client, sid, b"\x89PNG\r\n\x1a\n" + os.urandom(64), name="pic.png"), 422)
    assert not any(s in msg for s in secrets), msg


# -- 3: exact geometry or a refusal -------------------------------------------------------------------------------
def _gapped_series(root: Path) -> Path:
    """The shared CT series (20 slices, 2 mm) without 3 middle slices: a 8 mm gap between two slices."""
    out = root / "gap"
    shutil.copytree(DICOM_DIR, out)
    import pydicom

    files = sorted(out.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    for f in files[9:12]:
        f.unlink()
    return out


@requires_shared
def test_gapped_dicom_series_is_refused_unless_resampled(tmp_path, data_dir):
    _gapped_series(data_dir)
    app, client = make(data_dir, tmp_path)
    sid = new_session(client)
    msg = assert_error(client.post(f"/api/sessions/{sid}/volume", json={"path": "gap"}), 422)
    assert "not uniform" in msg and "8 mm apart" in msg and '"resample": true' in msg, msg
    r = client.post(f"/api/sessions/{sid}/volume", json={"path": "gap", "resample": True})
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["shape"] == [20, 512, 512] and info["spacing"][2] == pytest.approx(2.0)
    assert info["resampled"]["slices_before"] == 17 and info["resampled"]["slices_after"] == 20
    assert info["resampled"]["interpolated_slices"] == [9, 10, 11] and "not uniform" in info["resampled"]["why"]
    assert client.get(f"/api/sessions/{sid}").json()["volume"]["resampled"] == info["resampled"]
    m = np.zeros((512, 512), np.uint8)
    m[200:260, 240:300] = 1
    r = paint(client, sid, "z/10", 1, m.tobytes())
    assert r.status_code == 200, r.text
    r = client.post(f"/api/sessions/{sid}/save", json={"format": "nii.gz"})
    assert r.status_code == 200, r.text
    sidecar = client.get(r.json()["sidecar_url"]).json()
    assert sidecar["resampled"]["interpolated_slices"] == [9, 10, 11] and sidecar["source"] == "gap"
    msg = assert_error(client.post(f"/api/sessions/{sid}/save", json={"format": "dcm"}), 422)
    assert "resampled" in msg
    # the form fields of an upload carry the option too (a JSON true or the strings true/false)
    assert "resample" in assert_error(upload(client, sid, b"x", name="x.nii", resample="maybe"), 422)


@requires_shared
def test_sheared_dicom_series_is_refused(tmp_path, data_dir):
    import pydicom

    out = data_dir / "tilt"
    out.mkdir()
    for f in sorted(DICOM_DIR.iterdir()):
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * (z + 804.5), z]  # 0.5 mm in-plane per mm along the axis: gantry tilt
        ds.save_as(out / f.name, enforce_file_format=False)
    app, client = make(data_dir, tmp_path)
    sid = new_session(client)
    for body in ({"path": "tilt"}, {"path": "tilt", "resample": True}):
        msg = assert_error(client.post(f"/api/sessions/{sid}/volume", json=body), 422)
        assert "gantry tilt" in msg and "dcm2niix" in msg, msg


def test_saving_a_non_uniform_grid_as_nifti_is_a_clean_422(data_dir, tmp_path):
    """write_mask refuses one-grid formats for an image with a grid problem: the client sees a 422 naming it."""
    app, client = make(data_dir, tmp_path)
    sid = new_session(client)
    open_path(client, sid, "cases/ellipsoid.nii.gz")
    paint(client, sid, "z/1", 2, b"\1" * 4096)
    store = app.state.store
    s = store.get(sid)
    s.volume.image.meta.update(grid_problem="ellipsoid: slices 2 and 3 are 5 mm apart", grid_problem_kind="spacing")
    for fmt in ("nii.gz", "nrrd", "mha"):
        msg = assert_error(client.post(f"/api/sessions/{sid}/save", json={"format": fmt}), 422)
        assert "5 mm apart" in msg and "DICOM-SEG" in msg, msg


# -- 7: a busy port ----------------------------------------------------------------------------------------------
def test_serve_on_a_busy_port_is_one_line_before_anything_loads(monkeypatch, tmp_path, capsys):
    import uvicorn

    from medsamkit.cli import serve
    from medsamkit.cli.common import CliError, Parser

    parser = Parser(prog="medsamkit")
    serve.add_parser(parser.add_subparsers(dest="command", parser_class=Parser))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn must not start"))
    import medsamkit.predict as predict_pkg

    monkeypatch.setattr(predict_pkg, "Predictor", lambda *a, **k: pytest.fail("the model must not load"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = parser.parse_args(["serve", "--port", str(port), "--state", str(tmp_path / "s")])
        with pytest.raises(CliError) as e:
            args.func(args)
    assert e.value.code == 2 and f"port {port}" in str(e.value) and "already in use" in str(e.value)
    assert "http://" not in capsys.readouterr().err  # no banner


def test_serve_host_options_reach_the_app(monkeypatch, tmp_path):
    import uvicorn

    from medsamkit.cli import serve
    from medsamkit.cli.common import Parser

    parser = Parser(prog="medsamkit")
    serve.add_parser(parser.add_subparsers(dest="command", parser_class=Parser))
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setattr(serve, "check_port", lambda host, port: None)  # 10.1.2.3 is not an address of this machine
    args = parser.parse_args(
        ["serve", "--host", "10.1.2.3", "--port", "8123", "--state", str(tmp_path / "s"), "--allowed-host", "scans.example.org",
         "--max-volume-mb", "300", "--max-sessions", "3", "--session-ttl-hours", "2", "--threads", "1"]
    )  # fmt: skip
    args.func(args)
    app = seen["app"]
    hosts, limits = app.state.hosts, app.state.limits
    assert hosts.allows("10.1.2.3:8123") and hosts.allows("scans.example.org:8123") and hosts.allows("localhost:8123")
    assert not hosts.allows("10.1.2.3:9000") and not hosts.allows("evil.example:8123")
    assert limits.max_volume_bytes == 300 << 20 and limits.max_sessions == 3 and limits.session_ttl_s == 7200


# -- 8: bounded work per request ---------------------------------------------------------------------------------
def test_prompts_and_propagations_are_capped(predictor, data_dir, tmp_path, monkeypatch):
    from medsamkit.app.routes import segment as segment_routes

    app, client = make(data_dir, tmp_path, predictor, limits=Limits(max_propagate_slices=4))
    sid = new_session(client)
    open_path(client, sid, "cases/ellipsoid.nii.gz")
    calls = []
    real = segment_routes.segment_2d
    monkeypatch.setattr(segment_routes, "segment_2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    many = [[5 + i % 50, 5 + i // 50, 1] for i in range(65)]
    msg = assert_error(client.post(f"/api/sessions/{sid}/segment", json={"slice": 3, "points": many}), 413)
    assert "at most 64 points" in msg
    huge = [[5, 5, 1]] * 16_000  # ~190 KB of JSON: refused by the body limit before parsing
    assert_error(client.post(f"/api/sessions/{sid}/segment", json={"slice": 3, "points": huge}), 413)
    assert not calls  # no model work for refused prompts
    r = client.post(f"/api/sessions/{sid}/segment", json={"slice": 3, "points": many[:64], "box": [10, 17, 50, 47]})
    assert r.status_code == 200, r.text  # at the cap: accepted
    assert client.post(f"/api/sessions/{sid}/segment", json={"slice": 3, "box": [10, 17, 50, 47]}).status_code == 200

    msg = assert_error(client.post(f"/api/sessions/{sid}/propagate", json={"slice": 3, "label": 1}), 413)
    assert "at most 4 slices" in msg and '"slices"' in msg
    assert_error(client.post(f"/api/sessions/{sid}/propagate", json={"slice": 3, "label": 1, "slices": [4, 5]}), 422)
    r = client.post(f"/api/sessions/{sid}/propagate", json={"slice": 3, "label": 1, "slices": [1, 4]})
    assert r.status_code == 200, r.text
    labels = nifti_zyx(client.get(f"/api/sessions/{sid}/mask.nii.gz").content)[0]
    assert (labels[[0, 5]] == 0).all() and (labels[[2, 4]] == 1).any()  # nothing outside the window


# -- 9: bounded bodies, chunked or declared -----------------------------------------------------------------------
def _asgi(app, method: str, path: str, chunks, headers=()) -> tuple[int, int, dict, bytes]:
    """Call the ASGI app directly with a body streamed in chunks (as uvicorn passes a chunked request).
    Returns (chunks the app pulled, status, headers, body)."""
    pulled, sent = 0, []
    it = iter(chunks)

    async def receive():
        nonlocal pulled
        chunk = next(it, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
        "headers": [(b"host", b"127.0.0.1:8000"), *headers],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return pulled, start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def test_chunked_bodies_are_cut_at_the_routes_limit(tmp_path):
    app, client = make(None, tmp_path, limits=Limits(max_upload_bytes=1 << 20))
    sid = new_session(client)
    mib = b" " * (1 << 20)

    def stream(n):  # a 1.5 GiB body, produced only as far as it is read
        return (mib for _ in range(n))

    json_type = [(b"content-type", b"application/json")]
    pulled, status, headers, body = _asgi(app, "POST", "/api/sessions/not-a-session/propagate", stream(1536), json_type)
    assert status == 413 and pulled == 1 and "65536" in json.loads(body)["error"]
    assert headers["x-frame-options"] == "DENY"
    pulled, status, _, _ = _asgi(app, "POST", f"/api/sessions/{sid}/segment", stream(1536), json_type)
    assert status == 413 and pulled == 1
    # an upload: the multipart limit is the upload limit (+1 MiB of form overhead), still cut while streaming
    form = [(b"content-type", b"multipart/form-data; boundary=xyz")]
    head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="v.nii"\r\n\r\n'
    pulled, status, _, body = _asgi(app, "POST", f"/api/sessions/{sid}/volume", [head, *stream(1536)], form)
    assert status == 413 and pulled <= 3, (pulled, body)
    assert not [p for p in (tmp_path / "state" / sid).iterdir() if p.name.startswith("source-")]
    # a declared length over the limit is refused before anything is read
    pulled, status, _, _ = _asgi(
        app, "PUT", f"/api/sessions/{sid}/labels/1", stream(10), [*json_type, (b"content-length", b"99999999")]
    )
    assert status == 413 and pulled == 0
    # within the limits nothing changes
    pulled, status, _, body = _asgi(app, "PUT", f"/api/sessions/{sid}/labels/1", [b'{"name": "liver"}'], json_type)
    assert status == 200 and json.loads(body)["name"] == "liver", body


def test_chunked_body_against_a_live_server(tmp_path):
    """Through uvicorn and a real socket: a chunked body is answered 413 after a few chunks (the old server read
    the whole body before answering 404)."""
    app = create_app(None, state_dir=tmp_path / "state", preencode_slices=0)
    with served(app, log_level="error") as port:
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(
            f"POST /api/sessions/not-a-session/propagate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"%x\r\n" % (64 << 10) + b" " * (64 << 10) + b"\r\n"
        sent, reply = 0, b""
        c.settimeout(0.05)
        while sent < (1 << 30):
            try:
                c.sendall(chunk)
                sent += 64 << 10
            except OSError:
                break
            try:
                reply = c.recv(4096)
                if reply:
                    break
            except TimeoutError:
                pass
        if not reply:
            c.settimeout(5)
            reply = c.recv(4096)
        c.close()
        assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
        assert sent < 64 << 20, sent  # answered long before a fraction of the 1 GiB was sent


# -- 10: bounded decoded size, checked before reading ------------------------------------------------------------
def test_volumes_over_the_memory_limit_are_refused_from_their_headers(data_dir, tmp_path, monkeypatch):
    header_only_nifti(data_dir / "big.nii.gz", (512, 512, 2048))  # 1 GiB of int16 declared in ~1 KB
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "<i2", "fortran_order": False, "shape": (2048, 512, 512)})
    with zipfile.ZipFile(data_dir / "big.npz", "w") as z:
        z.writestr("imgs.npy", npy.getvalue() + b"\0" * 64)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    png += struct.pack(">I", zlib.crc32(png[12:29]))
    (data_dir / "wide.png").write_bytes(png)
    app, client = make(data_dir, tmp_path)
    sid = new_session(client)
    no_reading(monkeypatch)
    for path, words in (("big.nii.gz", "512x512x2048 int16"), ("big.npz", "2048x512x512 int16"), ("wide.png", "30000")):
        msg = assert_error(client.post(f"/api/sessions/{sid}/volume", json={"path": path}), 413)
        assert words in msg and "--max-volume-mb" in msg or "decompression bomb" in msg, msg
    msg = assert_error(upload(client, sid, (data_dir / "big.nii.gz").read_bytes(), name="big.nii.gz"), 413)
    assert "MiB" in msg
    assert not [p for p in (tmp_path / "state" / sid).iterdir() if p.name.startswith("source-")]


def test_the_working_copies_count_not_only_the_decoded_values(data_dir, tmp_path, monkeypatch):
    """6x64x64 float32 = 96 KiB of values; opened it takes ~6 times that (reader copy, percentile copies, display,
    labels): a 256 KiB limit refuses it, a 1 MiB limit opens it."""
    _, tight = make(data_dir, tmp_path / "a", limits=Limits(max_volume_bytes=256 << 10))
    sid = new_session(tight)
    assert "16 bytes" not in assert_error(tight.post(f"/api/sessions/{sid}/volume", json={"path": "cases/ellipsoid.nii.gz"}), 413)
    _, roomy = make(data_dir, tmp_path / "b", limits=Limits(max_volume_bytes=1 << 20))
    sid = new_session(roomy)
    assert roomy.post(f"/api/sessions/{sid}/volume", json={"path": "cases/ellipsoid.nii.gz"}).status_code == 200


@requires_shared
def test_dicom_series_over_the_limit_is_refused_before_decoding(tmp_path, data_dir, monkeypatch):
    shutil.copytree(DICOM_DIR, data_dir / "ct")
    app, client = make(data_dir, tmp_path, limits=Limits(max_volume_bytes=64 << 20))
    sid = new_session(client)
    no_reading(monkeypatch)
    msg = assert_error(client.post(f"/api/sessions/{sid}/volume", json={"path": "ct"}), 413)
    assert "20 files of 512x512" in msg


PEAK_SCRIPT = """
import sys
from pathlib import Path
from medsamkit.app.limits import Limits
from medsamkit.app.sessions import SessionStore

def status(key):  # kB
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

store = SessionStore(Path(sys.argv[2]), Path(sys.argv[1]).parent, limits=Limits(max_volume_bytes=int(sys.argv[3])))
store.load(Path(sys.argv[4]), {"preset": "percentile"}, "tiny.nii")  # the readers' libraries load once per server
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: imports do not count
before = status("VmRSS")
image, display, preset = store.load(Path(sys.argv[1]), {"preset": "percentile"}, "v.nii")
print((status("VmHWM") - before) * 1024, display.nbytes)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc (VmHWM reset)")
def test_opening_stays_within_the_memory_limit(tmp_path):
    """In a fresh process: a float32 volume close to the limit (worst case: the percentile preset) raises the
    peak RSS by less than the limit."""
    vol = np.random.default_rng(0).normal(100, 30, (40, 512, 512)).astype(np.float32)  # 40 MiB of values
    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), path)
    tiny = write_nifti(tmp_path / "tiny.nii", vol[:2, :8, :8])
    limit = int(vol.size * (3 * 4 + 4) * 1.02)  # Footprint.cost with 2 % to spare
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PEAK_SCRIPT), str(path), str(tmp_path / "state"), str(limit), str(tiny)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    grew, display = (int(v) for v in out.stdout.split())
    assert display == vol.size and grew < limit, (grew, limit)


# -- 11: no reads outside the data folder through headers --------------------------------------------------------
MHA = "ObjectType = Image\nNDims = 3\nDimSize = 4 4 2\nElementType = MET_UCHAR\nElementDataFile = {}\n"
NRRD = "NRRD0004\ntype: uchar\ndimension: 3\nsizes: 4 4 2\nencoding: raw\ndata file: {}\n"


@pytest.mark.parametrize(
    "name,header,status",
    [
        ("passwd.mha", MHA.format("/etc/passwd"), 403),
        ("up.mhd", MHA.format("../../outside/secret.raw"), 403),
        ("list.mhd", MHA.format("LIST 2D") + "inside.raw\n../outside/secret.raw\n", 403),
        ("pattern.mhd", MHA.format("../outside/slice%d.raw 1 2 1"), 403),
        ("abs.nhdr", NRRD.format("/etc/passwd"), 403),
        ("up.nrrd", NRRD.format("../outside/secret.raw"), 403),
        ("list.nhdr", NRRD.format("LIST") + "inside.raw\n../outside/secret.raw\n", 403),
        ("link.mhd", MHA.format("link.raw"), 403),
        ("odd.mhd", MHA.format("slice%d%d.raw 1 2 1"), 422),
        ("inside.mhd", MHA.format("inside.raw"), 200),
        ("inside.nhdr", NRRD.format("inside.raw"), 200),
        ("pattern.nhdr", NRRD.format("slice%d.raw 1 2 1 2"), 200),
        ("list.mha", MHA.format("LIST 2D") + "slice1.raw\nslice2.raw\n", 200),
    ],
)
def test_detached_data_files_must_stay_in_the_data_folder(tmp_path, name, header, status):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.raw").write_bytes(bytes(range(200, 232)))
    (root / "sub" / "inside.raw").write_bytes(bytes(range(100, 132)))
    for k in (1, 2):
        (root / "sub" / f"slice{k}.raw").write_bytes(bytes([k * 10]) * 16)
    os.symlink(outside / "secret.raw", root / "sub" / "link.raw")
    (root / "sub" / name).write_text(header)
    app, client = make(root, tmp_path)
    sid = new_session(client)
    r = client.post(f"/api/sessions/{sid}/volume", json={"path": f"sub/{name}", "preset": "passthrough"})
    assert r.status_code == status, r.text
    if status == 200:
        shown = nifti_zyx(client.get(f"/api/sessions/{sid}/volume.nii.gz").content)[0]
        assert shown.shape == (2, 4, 4) and not set(np.unique(shown)) & set(range(200, 232))  # not the secret
    else:
        assert str(tmp_path) not in r.text and ("outside" in r.text or "relative" in r.text or "resolve" in r.text), r.text


# -- 12: Host header, framing, no CDN ----------------------------------------------------------------------------
def test_only_the_servers_own_host_names_are_answered(tmp_path):
    app = create_app(None, state_dir=tmp_path / "s", port=8000, allowed_hosts=["scans.example.org"])
    for host, ok in [
        ("127.0.0.1:8000", True), ("localhost:8000", True), ("[::1]:8000", True), ("scans.example.org:8000", True),
        ("evil.example:8000", False), ("127.0.0.1:9999", False), ("127.0.0.1.nip.io:8000", False), ("", False),
    ]:  # fmt: skip
        from fastapi.testclient import TestClient

        r = TestClient(app).get("/api/openapi.json", headers={"host": host} if host else {"host": ""})
        assert (r.status_code == 200) == ok, (host, r.status_code)
        if not ok:
            assert r.status_code == 421 and "--allowed-host" in r.json()["error"]


def test_security_headers_and_no_cdn_docs(tmp_path):
    app, client = make(None, tmp_path)
    for url in ("/", "/api/openapi.json", "/api/sessions/nope", "/static/app.js"):
        h = client.get(url).headers
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff", url
        csp = h["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "script-src 'self'" in csp, url
    assert client.get("/api/sessions/nope").headers["cache-control"] == "no-store"
    docs = client.get("/api/docs")
    assert docs.status_code == 404 and "cdn" not in docs.text.lower()
    spec = client.get("/api/openapi.json").json()
    assert "/api/sessions/{sid}/segment" in spec["paths"]


# -- 13: sessions: number, idle time, disk, undo, permissions ----------------------------------------------------
def test_session_count_and_idle_expiry(tmp_path):
    app, client = make(None, tmp_path, limits=Limits(max_sessions=2, session_ttl_s=3600))
    a, b = new_session(client), new_session(client)
    assert "maximum of 2 sessions" in assert_error(client.post("/api/sessions"), 503)
    store = app.state.store
    store.get(a).last_seen = time.time() - 7200  # idle for two hours
    c = new_session(client)
    assert_error(client.get(f"/api/sessions/{a}"), 404)
    assert not (tmp_path / "state" / a).exists() and c != b
    # a restarted server drops sessions idle past the limit (by their files' times)
    old = time.time() - 7200
    for f in (tmp_path / "state" / b).iterdir():
        os.utime(f, (old, old))
    second = Client(create_app(None, state_dir=tmp_path / "state", limits=Limits(session_ttl_s=3600), preencode_slices=0))
    assert_error(second.get(f"/api/sessions/{b}"), 404)
    assert second.get(f"/api/sessions/{c}").status_code == 200


def test_disk_quotas(data_dir, tmp_path):
    nii = (data_dir / "cases" / "ellipsoid.nii.gz").read_bytes()

    def upload_paint_save(client) -> str:
        a = new_session(client)
        assert upload(client, a, nii).status_code == 200
        paint(client, a, "z/1", 2, b"\1" * 4096)
        assert client.post(f"/api/sessions/{a}/save", json={"format": "nii.gz"}).status_code == 200
        return a

    # what a session takes after that (measured on a server without quotas), plus less than an MHA mask (~0.9 KB)
    probe, probe_client = make(data_dir, tmp_path / "probe")
    folder = tmp_path / "probe" / "state" / upload_paint_save(probe_client)
    used = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    app, client = make(data_dir, tmp_path, limits=Limits(max_session_disk=used + 300, max_disk=3 * len(nii)))
    a = upload_paint_save(client)
    msg = assert_error(client.post(f"/api/sessions/{a}/save", json={"format": "mha"}), 507)
    assert "quota" in msg and not (tmp_path / "state" / a / "exports" / "segmentation.mha").exists()
    b = new_session(client)
    assert upload(client, b, nii).status_code == 200
    c = new_session(client)
    assert "disk quota" in assert_error(upload(client, c, nii), 507)  # fits its session, not the server's total
    assert not [p for p in (tmp_path / "state" / c).iterdir() if p.name.startswith("source-")]


def test_undo_survives_eviction_of_the_volume(data_dir, tmp_path):
    """Eight other sessions push session A's volume out of memory; A's three undo steps remain (they used to be
    lost with the volume)."""
    app, client = make(data_dir, tmp_path, max_loaded=2)
    a = new_session(client)
    open_path(client, a, "cases/ellipsoid.nii.gz")
    states = [nifti_zyx(client.get(f"/api/sessions/{a}/mask.nii.gz").content)[0]]
    for k in range(3):
        r = client.put(
            f"/api/sessions/{a}/mask/z/{k}?label={k + 1}",
            content=b"\1" * 4096,
            headers={"content-type": "application/octet-stream"},
        )
        assert r.status_code == 200
        states.append(nifti_zyx(client.get(f"/api/sessions/{a}/mask.nii.gz").content)[0])
    for _ in range(8):
        other = new_session(client)
        open_path(client, other, "cases/ellipsoid.nii.gz")
    assert app.state.store.get(a).volume is None  # unloaded
    for k in (2, 1, 0):
        r = client.post(f"/api/sessions/{a}/undo")
        assert r.status_code == 200 and r.json()["remaining"] == k, r.text
        assert np.array_equal(nifti_zyx(client.get(f"/api/sessions/{a}/mask.nii.gz").content)[0], states[k])
    assert_error(client.post(f"/api/sessions/{a}/undo"), 409)


def test_undo_memory_is_bounded_across_sessions(data_dir, tmp_path):
    app, client = make(data_dir, tmp_path, limits=Limits(undo_total_bytes=600))
    rng = np.random.default_rng(0)
    sids = [new_session(client) for _ in range(3)]
    for sid in sids:
        open_path(client, sid, "cases/ellipsoid.nii.gz")
        for k in range(3):
            noise = (rng.random(4096) > 0.5).astype(np.uint8)  # incompressible-ish edits: ~600 bytes each
            client.put(
                f"/api/sessions/{sid}/mask/z/{k}?label=1",
                content=noise.tobytes(),
                headers={"content-type": "application/octet-stream"},
            )
    store = app.state.store
    assert sum(store.get(s).undo_nbytes for s in sids) <= 600 + max(c.nbytes for s in sids for c in store.get(s).undo)
    assert len(store.get(sids[-1]).undo) >= 1  # the latest change can always be undone


def test_session_files_are_private(data_dir, tmp_path):
    app, client = make(data_dir, tmp_path)
    sid = new_session(client)
    upload(client, sid, (data_dir / "cases" / "ellipsoid.nii.gz").read_bytes())
    paint(client, sid, "z/1", 2, b"\1" * 4096)
    client.get(f"/api/sessions/{sid}/volume.nii.gz")
    client.post(f"/api/sessions/{sid}/save", json={"format": "nii.gz"})
    folder = tmp_path / "state" / sid
    entries = [folder, *folder.rglob("*")]
    assert len(entries) >= 7
    for p in entries:
        mode = p.stat().st_mode & 0o777
        assert mode == (0o700 if p.is_dir() else 0o600), (p.name, oct(mode))


# -- 14: small holes ---------------------------------------------------------------------------------------------
def test_a_png_bomb_in_a_brush_edit_is_refused_from_its_header(data_dir, tmp_path):
    app, client = make(data_dir, tmp_path)
    sid = new_session(client)
    open_path(client, sid, "cases/ellipsoid.nii.gz")
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 2501 * 64)
    png = b"\x89PNG\r\n\x1a\n"
    for kind, data in ((b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", b"")):
        png += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    msg = assert_error(
        client.put(f"/api/sessions/{sid}/mask/z/3?label=1", content=png, headers={"content-type": "image/png"}), 422
    )
    assert "20000x20000" in msg and "64x64" in msg
    import base64

    r = client.put(f"/api/sessions/{sid}/mask/z/3", json={"label": 1, "png": base64.b64encode(png).decode()})
    assert "20000x20000" in assert_error(r, 422)
    ok = np.zeros((64, 64), bool)
    ok[10:20, 10:20] = True
    assert client.put(f"/api/sessions/{sid}/mask/z/3", json={"label": 1, "png": png_b64(ok)}).status_code == 200
    # a PNG of the right size with a text chunk that inflates to 2 MiB: PIL refuses it with a ValueError
    buf = io.BytesIO()
    Image.fromarray(ok.astype(np.uint8)).save(buf, format="PNG")
    body = zlib.compress(b" " * (2 << 20), 9)
    ztxt = b"Comment\0\0" + body
    chunk = struct.pack(">I", len(ztxt)) + b"zTXt" + ztxt + struct.pack(">I", zlib.crc32(b"zTXt" + ztxt))
    raw = buf.getvalue()
    text_bomb = raw[:33] + chunk + raw[33:]  # after the 8-byte signature and the 25-byte IHDR chunk
    r = client.put(f"/api/sessions/{sid}/mask/z/3?label=1", content=text_bomb, headers={"content-type": "image/png"})
    assert "cannot decode" in assert_error(r, 422)


def test_dicom_segment_labels_follow_the_standard():
    assert segment_label("Leber\\links", 1) == "Leber/links"
    assert segment_label("Nebenniere rechts Äö", 2) == "Nebenniere rechts Äö"
    assert segment_label("\x00\x1b ", 3) == "label 3"
    assert segment_label("a\tb  " + "x" * 80, 4) == ("a b " + "x" * 80)[:64]
    # LO holds 64 bytes: multi-byte UTF-8 letters are cut on a character boundary
    assert segment_label("肝臓" * 40, 5) == "肝臓" * 10 + "肝"
    assert all(len(segment_label(n, 1).encode()) <= 64 for n in ("ü" * 200, "\\" * 100))


def test_window_width_must_be_positive(data_dir, tmp_path):
    app, client = make(data_dir, tmp_path)
    sid = new_session(client)
    for window in ([0, 0], [40, -400]):
        msg = assert_error(open_path(client, sid, "cases/ellipsoid.nii.gz", window=window), 422)
        assert "width must be positive" in msg
    nii = (data_dir / "cases" / "ellipsoid.nii.gz").read_bytes()
    assert "width must be positive" in assert_error(upload(client, sid, nii, window="40,0"), 422)
    assert open_path(client, sid, "cases/ellipsoid.nii.gz", window=[40, 1e-3]).status_code == 200
