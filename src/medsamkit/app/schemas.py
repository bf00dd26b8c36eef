"""The API's request bodies (pydantic), how a body that does not fit them is reported, and the OpenAPI
``responses`` every route declares.

Conventions of every body: slices along ``axis`` z, y, x of a ``(Z, Y, X)`` volume have (column, row) pixel
coordinates (x, y), (x, z), (y, z); boxes ``[x0, y0, x1, y1]`` are inclusive pixel bounds, points are
``[x, y]`` or ``[x, y, 1|0]`` (1 = foreground); labels are 1..255. Unknown fields, NaN and infinities are refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, ValidationError, field_validator

from .sessions import AppError

Num = Annotated[float, Strict()]
Axis = Literal["z", "y", "x"]
Label = Annotated[StrictInt, Field(ge=1, le=255)]
Point = Annotated[list[Num], Field(min_length=2, max_length=3)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ErrorBody(BaseModel):
    """Every error response: one line for the user."""

    error: str


class OpenOptions(_Body):
    """How to map intensities: ``preset`` (auto, soft_tissue, lung, bone, brain, percentile, passthrough),
    ``window`` [level, width] with width > 0 (overrides preset), ``modality`` (overrides the file's);
    ``resample``: put a DICOM series with unevenly spaced slices on a uniform grid (otherwise it is refused)."""

    preset: str = "auto"
    window: tuple[Num, Num] | None = None
    modality: str | None = None
    resample: StrictBool = False

    @field_validator("window")
    @classmethod
    def _positive_width(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[1] > 0:
            raise ValueError(f"the width must be positive, got {v[1]:g}")
        return v


class WindowBody(_Body):
    """A new intensity mapping for the open volume: ``preset`` and/or ``window`` [level, width] (width > 0)."""

    preset: str = "auto"
    window: tuple[Num, Num] | None = None

    _positive_width = field_validator("window")(OpenOptions._positive_width.__func__)  # type: ignore[attr-defined]


class OpenPath(OpenOptions):
    """Open ``path`` under the data folder; ``mask``: a label mask under the data folder on the same grid, to
    review and correct (NIfTI, NRRD, MHA, PNG, or a DICOM-SEG of the series)."""

    path: str
    mask: str | None = None


class MaskPath(_Body):
    path: str


class SegmentBody(_Body):
    """One prompt on one slice: a box and/or points (at most ``Limits.max_points``, default 64)."""

    axis: Axis = "z"
    slice: StrictInt
    label: Label = 1
    box: tuple[Num, Num, Num, Num] | None = None
    points: list[Point] | None = None


class PropagateBody(_Body):
    """Propagate ``label`` from ``slice`` through ``slices`` [first, last] (inclusive; default the whole axis,
    at most ``Limits.max_propagate_slices``)."""

    axis: Axis = "z"
    slice: StrictInt
    label: Label
    slices: tuple[StrictInt, StrictInt] | None = None


class EncodingFocus(_Body):
    """Where the annotator is: background pre-encoding takes the slices of ``axis`` nearest to ``slice`` first
    (another axis restarts it along that axis)."""

    axis: Axis = "z"
    slice: StrictInt


class MaskBody(_Body):
    label: Label
    png: str


class LabelName(_Body):
    name: Annotated[str, Field(max_length=64)]


class SegmentSettings(_Body):
    """A segment's settings; only the fields given change. ``color``: [r, g, b] 0..255 (null: the default
    palette's); ``reviewed``: the annotator checked it (saved with the session); ``category`` and ``type``: a
    pair of :data:`medsamkit.io.CATEGORIES` / ``TYPES`` (SNOMED CT codes in a DICOM-SEG and Slicer NRRD)."""

    name: Annotated[str, Field(max_length=64)] | None = None
    color: Annotated[list[Annotated[int, Strict(), Field(ge=0, le=255)]], Field(min_length=3, max_length=3)] | None = None
    visible: StrictBool | None = None
    locked: StrictBool | None = None
    reviewed: StrictBool | None = None
    category: str | None = None
    type: str | None = None


class ToolBody(_Body):
    """A slice tool applied to one segment (:mod:`medsamkit.masks`): ``fill_between`` (the empty z slices between
    annotated ones), ``fill_holes``, ``keep_largest``, ``remove_small`` (islands under ``min_voxels``), ``smooth``
    (median, ``radius`` pixels). ``slice``: only that z slice (``fill_holes`` and ``smooth``); none: every slice."""

    tool: Literal["fill_between", "fill_holes", "keep_largest", "remove_small", "smooth"]
    slice: Annotated[int, Strict(), Field(ge=0)] | None = None
    min_voxels: Annotated[int, Strict(), Field(ge=1)] = 100
    radius: Annotated[int, Strict(), Field(ge=1, le=10)] = 1


class MergeBody(_Body):
    into: Annotated[int, Strict(), Field(ge=1, le=255)]


class SaveBody(_Body):
    format: Literal["nii.gz", "nrrd", "mha", "dcm", "png"] = "nii.gz"


def describe_errors(errors: Any) -> str:
    """pydantic's validation errors as one line: "the body is not valid JSON", or up to three
    ``field: message`` parts (the location without "body"/"path"/"query") joined by "; "."""
    parts = []
    if any(e.get("type") == "json_invalid" for e in errors):
        return "the body is not valid JSON"
    for e in list(errors)[:3]:
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "path", "query")]
        parts.append(f"{'.'.join(loc) + ': ' if loc else ''}{e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def parse_body(model: type[BaseModel], data: Any) -> Any:
    """``data`` (decoded JSON, or form fields) validated as ``model``; 422 with :func:`describe_errors`'s line."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise AppError(422, describe_errors(e.errors())) from None


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses (every route can also answer 400, 413, 421 and 500)."""
    why = {
        400: "malformed request (invalid JSON or multipart)",
        403: "path outside the data folder, or no data folder",
        404: "unknown session or file",
        409: "conflict with the session's state (no volume, a running propagation, nothing to undo)",
        413: "over a limit (body bytes, volume memory, points, propagation slices)",
        415: "unsupported content type or file type",
        421: "the Host header is not one this server answers for",
        422: "invalid input (prompt, image, option)",
        500: "internal server error (a bug; details in the server log)",
        503: "too many sessions",
        507: "over the session's or the server's disk quota",
    }
    return {c: {"model": ErrorBody, "description": why[c]} for c in sorted({400, 413, 421, 422, 500, *codes})}


SESSION_ERRORS = (404,)  # every route with a session id in its path: unknown session
PNG_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}, "description": "a PNG"}}
GZ_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"application/gzip": {}}, "description": "a .nii.gz file"}}
