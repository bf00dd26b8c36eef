"""Manifests (CSV/JSONL, stable ids, bad rows) and the segment job's reading of a row (no cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsamkit.batch import ModelSpec, SegmentJob, read_manifest, safe_stem
from medsamkit.batch.manifest import ManifestItem
from medsamkit.predict.jobs import SegmentRequestError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_rows_ids_and_paths(tmp_path) -> None:
    m = _write(
        tmp_path / "m.csv",
        'image,box,id,notes\nimgs/a.png,"1,2,3,4",,\n/abs/b.nii.gz,,case-7,x\n\nimgs/a.png,"1,2,3,5",,\n',
    )
    items = list(read_manifest(m))
    assert [i.line for i in items] == [2, 3, 5]  # the empty line is skipped, lines count the header
    a, b, c = items
    assert a.fields == {"image": "imgs/a.png", "box": "1,2,3,4"}  # empty cells are absent
    assert a.path("image") == tmp_path / "imgs" / "a.png"  # relative to the manifest's folder
    assert b.id == "case-7" and b.path("image") == Path("/abs/b.nii.gz")
    assert a.id.startswith("a-") and len(a.id) == 12 and a.id != c.id  # content hash: another box, another id
    assert [i.id for i in read_manifest(m)] == [a.id, b.id, c.id]  # stable between reads


def test_csv_bad_rows_are_items_with_errors(tmp_path) -> None:
    m = _write(tmp_path / "m.csv", 'image,box\na.png,"1,2,3,4",extra\nb.png,"1,2,3,4"\n')
    bad, good = list(read_manifest(m))
    assert bad.error is not None and "more cells than the header" in bad.error and bad.error.startswith("line 2:")
    assert good.error is None
    back = ManifestItem.from_payload(bad.id, bad.line, bad.payload(), tmp_path)
    assert back.error == bad.error and back.fields == {}


@pytest.mark.parametrize(
    "text, fragment",
    [("", "empty or has no header"), ("path,box\nx.png,1\n", "no 'image' column")],
)
def test_csv_without_usable_header(tmp_path, text, fragment) -> None:
    with pytest.raises(ValueError, match=fragment):
        list(read_manifest(_write(tmp_path / "m.csv", text)))


def test_jsonl_values_and_bad_lines(tmp_path) -> None:
    rows = [
        json.dumps({"image": "a.png", "box": [[1, 2, 3, 4], [5, 6, 7, 8]], "id": 12}),
        "{not json",
        "[1, 2]",
        "",
        json.dumps({"image": "v.nii.gz", "box3d": "1,2,3,4,5,6", "label": ["liver"]}),
    ]
    items = list(read_manifest(_write(tmp_path / "m.jsonl", "\n".join(rows) + "\n")))
    assert len(items) == 4
    assert items[0].id == "12" and items[0].fields["box"] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert "not valid JSON" in items[1].error and "expected a JSON object" in items[2].error
    assert items[3].line == 5 and items[3].fields["label"] == ["liver"]


def test_unknown_manifest_type_and_missing_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="is a .csv/.tsv"):
        list(read_manifest(tmp_path / "m.xlsx"))
    with pytest.raises(ValueError, match="manifest not found"):
        list(read_manifest(tmp_path / "none.csv"))


def test_safe_stem() -> None:
    assert safe_stem("case_01.a-b+c") == "case_01.a-b+c"
    s1, s2 = safe_stem("a/b"), safe_stem("a:b")
    assert s1.startswith("a_b-") and s2.startswith("a_b-") and s1 != s2  # changed names never collide
    assert not safe_stem(".hidden").startswith(".")
    assert len(safe_stem("x" * 500)) < 140


def _job(tmp_path) -> SegmentJob:
    return SegmentJob(str(tmp_path / "out"), ModelSpec())


def _item(tmp_path, **fields) -> ManifestItem:
    return ManifestItem("x", 2, {k: v for k, v in fields.items()}, tmp_path)


def test_segment_rows_become_requests(tmp_path) -> None:
    job = _job(tmp_path)
    p = job.prepare(
        _item(
            tmp_path,
            image="v.nii.gz",
            box="1,2,3,4;5,6,7,8",
            slice="7",
            axis="Y",
            label="a; b",
            window="40,400",
            world="no",
            output="sub/m.nii.gz",
            ground_truth="gt.nii.gz",
        )
    )
    r = p["request"]
    assert r.image == tmp_path / "v.nii.gz" and r.ground_truth == tmp_path / "gt.nii.gz"
    assert r.output == tmp_path / "out" / "sub" / "m.nii.gz"  # relative outputs are inside OUT_DIR
    assert r.boxes == [[1, 2, 3, 4], [5, 6, 7, 8]] and r.slice_index == 7 and r.axis == "y"
    assert r.names == ["a", "b"] and r.window == (40.0, 400.0) and r.world is False
    pts = job.prepare(_item(tmp_path, image="a.png", point=[[10, 20], [30, 40, 0]]))["request"]
    assert pts.points == [[10.0, 20.0], [30.0, 40.0, 0.0]]


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"image": "a.png", "box": "a,b,c,d"}, "box: 'a,b,c,d' is not X0,Y0,X1,Y1"),
        ({"image": "a.png", "box": "1,2,3"}, "is not X0,Y0,X1,Y1"),
        ({"image": "a.png", "box3d": "1,2,3,4"}, "box3d: '1,2,3,4' is not X0,Y0,Z0,X1,Y1,Z1"),
        ({"image": "a.png", "point": "1"}, "point: '1' is not X,Y[,Z][,LABEL]"),
        ({"image": "a.png", "box": "1,2,3,4", "slice": "2.5"}, "slice: '2.5' is not an integer"),
        ({"image": "a.png", "box": "1,2,3,4", "window": "40"}, "expected LEVEL,WIDTH"),
        ({"image": "a.png", "box": "1,2,3,4", "world": "maybe"}, "world: 'maybe' is not true/false"),
        ({"image": "a.png", "box": "1,2,3,4", "axis": "q"}, "axis must be one of z, y, x"),
        ({"image": "a.png"}, "give at least one"),
        ({"box": "1,2,3,4"}, "no image"),
    ],
)
def test_bad_segment_rows_say_why(tmp_path, fields, fragment) -> None:
    with pytest.raises(ValueError) as e:
        _job(tmp_path).prepare(_item(tmp_path, **fields))
    text = _job(tmp_path).error_text(e.value)
    assert fragment in text and "--" not in text  # manifest column names, not command-line options


def test_request_errors_are_usage_errors() -> None:
    from medsamkit.predict.jobs import SegmentRequest

    with pytest.raises(SegmentRequestError, match="at least one --box"):
        SegmentRequest(image=Path("a.png"))
