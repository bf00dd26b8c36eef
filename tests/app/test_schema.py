"""Property-based API tests from the server's own OpenAPI document (Schemathesis): every operation, with
parameters and bodies generated from the schema (uploads as multipart with a ``file`` part, brush edits as JSON,
PNG or raw bytes), valid by the schema and not, must answer with a documented status and never a 5xx.

Bounded: 20 examples per operation and mode against one session that has a small volume open (so generated
requests reach segmenting, editing and saving, not only "unknown session"), and a pass with generated session
ids. Schemathesis' own pytest plugin does not run on pytest 9.2 here (``Function._nodeid``), so the operations'
Hypothesis strategies are driven directly.
"""

from __future__ import annotations

import warnings

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import status_code_conformance  # noqa: E402

from medsamkit.app import create_app  # noqa: E402
from medsamkit.app.limits import Limits  # noqa: E402
from tests.app.test_server import Client, ellipsoid, new_session, write_nifti  # noqa: E402

MAX_EXAMPLES = 20


@pytest.fixture(scope="module")
def api(predictor, tmp_path_factory):
    """The app (a tiny volume under --data) and a session with it open."""
    data = tmp_path_factory.mktemp("data")
    write_nifti(data / "v.nii.gz", ellipsoid(0)[0])
    app = create_app(
        data,
        state_dir=tmp_path_factory.mktemp("state"),
        predictor=predictor,
        preencode_slices=0,
        limits=Limits(max_upload_bytes=1 << 20),
    )
    client = Client(app)
    sid = new_session(client)
    assert client.post(f"/api/sessions/{sid}/volume", json={"path": "v.nii.gz"}).status_code == 200
    r = client.post(f"/api/sessions/{sid}/segment", json={"slice": 3, "box": [10, 17, 50, 47]})  # cached embedding
    assert r.status_code == 200, r.text
    return app, sid


def _schema(api):
    app, _ = api
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return schemathesis.openapi.from_asgi("/api/openapi.json", app, headers={"Host": "127.0.0.1"})


def _fuzz(schema, sid: str | None) -> list[str]:
    """Run every operation of ``schema`` with generated requests, valid by the schema and not (``sid``: the
    session id to use, None: generated ones); the failures, one line each."""
    from schemathesis import GenerationMode

    failures = []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    for op in operations:
        if sid and op.method.upper() == "DELETE":
            continue  # it would end the session the other operations use (deletion is fuzzed with generated ids)
        fixed = {"sid": sid} if sid and any(p.name == "sid" for p in op.path_parameters) else None
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(mode, path_parameters=fixed, headers={"Host": "127.0.0.1"})

            @given(case=strategy)
            @_settings
            def run(case) -> None:
                case.call_and_validate(**CHECKS)

            try:
                run()
            except Unsatisfiable:  # nothing in this operation's schema to violate (negative mode)
                continue
            except Exception as e:  # noqa: BLE001 - collected so one report lists every failing operation
                failures.append(f"{op.label} ({mode.value}): {str(e).strip().splitlines()[0][:300]}")
    return failures


_settings = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
CHECKS = {"checks": [not_a_server_error, status_code_conformance]}


def test_no_server_error_with_an_open_session(api):
    """The session exists and holds a volume: requests reach segmenting, editing, propagating and saving."""
    assert not (failures := _fuzz(_schema(api), api[1])), "\n".join(failures)


def test_no_server_error_with_generated_session_ids(api):
    assert not (failures := _fuzz(_schema(api), None)), "\n".join(failures)
