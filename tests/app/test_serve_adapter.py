"""``medsamkit serve --adapter``: the app segments with the adapted model (a ``medsamkit finetune`` result on its
base) and its saved masks name it."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
pytest.importorskip("nibabel")

from tests.adapter_files import write_inverting_adapter  # noqa: E402
from tests.app.test_server import Client, ellipsoid, new_session, png_array, upload, write_nifti  # noqa: E402
from tests.conftest import box_of, dice  # noqa: E402


def _serve_app(monkeypatch, argv: list[str]):
    import uvicorn

    from medsamkit.cli import serve
    from medsamkit.cli.common import Parser

    parser = Parser(prog="medsamkit")
    serve.add_parser(parser.add_subparsers(dest="command", parser_class=Parser))
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    args = parser.parse_args(["serve", *argv])
    args.func(args)
    return seen["app"]


def test_serve_with_adapter_segments_on_the_adapted_model(monkeypatch, litemedsam_model, tmp_path) -> None:
    adapter = write_inverting_adapter(tmp_path / "run" / "adapter.pt", litemedsam_model)
    vol, truth = ellipsoid(0)
    volume = write_nifti(tmp_path / "ct.nii.gz", vol).read_bytes()
    x0, y0, x1, y1 = box_of(truth[3])
    body = {"axis": "z", "slice": 3, "label": 1, "box": [x0 - 2, y0 - 2, x1 + 2, y1 + 2]}
    masks = {}
    for name, extra in (("base", ["--backend", "torch"]), ("adapted", ["--adapter", str(adapter.parent)])):
        app = _serve_app(monkeypatch, ["--state", str(tmp_path / f"state-{name}"), "--threads", "1", *extra])
        client = Client(app)
        sid = new_session(client)
        assert upload(client, sid, volume).status_code == 200
        r = client.post(f"/api/sessions/{sid}/segment", json=body)
        assert r.status_code == 200, r.text
        masks[name] = png_array(base64.b64decode(r.json()["mask"]["data"])) == 1
        r = client.post(f"/api/sessions/{sid}/save", json={"format": "nii.gz"})
        assert r.status_code == 200, r.text
        masks[name + "-model"] = client.get(r.json()["sidecar_url"]).json().get("model")
    assert app.state.models.model == "litemedsam+decoder"
    assert app.state.models.engine().arch.name == "litemedsam+decoder"
    assert masks["adapted-model"] == "litemedsam+decoder" and masks["base-model"] == "litemedsam"
    assert dice(masks["base"], truth[3]) > 0.8
    assert masks["adapted"].any() and not (masks["adapted"] & masks["base"]).any()  # the complement of the base's
    assert not np.array_equal(masks["adapted"], masks["base"])


def test_serve_adapter_errors(monkeypatch, tmp_path) -> None:
    from medsamkit.errors import MissingFileError

    with pytest.raises(MissingFileError, match="adapter file not found"):
        _serve_app(monkeypatch, ["--state", str(tmp_path / "s"), "--adapter", str(tmp_path / "nope.pt")])
