"""Scores of an interactive protocol per object, as the CVPR 2025 challenge "Foundation Models for Interactive 3D
Biomedical Image Segmentation" defines them for a box and 5 correction clicks.

The challenge records Dice (DSC) and NSD after the box and after each of 5 clicks. Its scores per case:

- **DSC_AUC** / **NSD_AUC**: the trapezoidal area under the values of the 5 *click* steps only, at x = 0, 1, 2, 3,
  4 (unit spacing): at most 4.0. The box step is left out ("since the bbox prompt is optional").
- **NSD is counted 0 at a step whose DSC is <= 0.2** (:data:`NSD_MIN_DICE`), in the curve and in the final value.
- **DSC_Final** / **NSD_Final**: the last step's values.

Here an iterative protocol's rows (:mod:`medsamkit.evaluate.runner`, one per object x protocol x step; step 0 = the
initial prompt, step k = after k correction clicks) become one :class:`InteractiveRecord` per object with those
scores: the AUCs run over steps 1..N, the initial prompt (box or first click) excluded, for either start, so the
two starts' AUCs are comparable (N = 5: range 0..4). The clicks differ slightly from the challenge's: its click lies
at the centre (largest distance-transform value) of the *largest* connected error component; ``farthest-error``
puts it at the error pixel farthest from its region's boundary over *all* error regions (usually the same
component, not always).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InputError, OptionError
from ..prompts import parse_protocol

#: the challenge's rule: NSD counts 0 at a step whose Dice is <= this
NSD_MIN_DICE = 0.2


def interactive_auc(values: Sequence[float]) -> float:
    """Trapezoidal area under ``values`` placed at x = 0, 1, ..., n - 1 (unit spacing): sum of
    ``(v[i] + v[i + 1]) / 2``. For the challenge's 5 click steps of Dice or NSD (each in [0, 1]) the range is
    [0, 4]: 4.0 when every step scores 1. In general [0, n - 1] for n values in [0, 1].

    InputError for fewer than two values or a value that is not a finite number."""
    try:
        vs = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"interactive_auc takes numbers, got {values!r}") from None
    if len(vs) < 2:
        raise InputError(f"interactive_auc needs at least two values (steps), got {len(vs)}")
    bad = [v for v in vs if not math.isfinite(v)]
    if bad:
        raise InputError(f"interactive_auc: values must be finite numbers, got {bad[0]}")
    return float(sum((a + b) / 2 for a, b in zip(vs[:-1], vs[1:])))


def challenge_nsd(dice: Sequence[float], nsd: Sequence[float]) -> list[float]:
    """NSD per step as the challenge counts it: 0 where that step's Dice is <= :data:`NSD_MIN_DICE`, else the NSD.
    ``dice`` and ``nsd``: one value per step, same length (InputError otherwise)."""
    if len(dice) != len(nsd):
        raise InputError(f"challenge_nsd: {len(dice)} Dice values but {len(nsd)} NSD values")
    return [0.0 if float(d) <= NSD_MIN_DICE else float(n) for d, n in zip(dice, nsd)]


@dataclass(frozen=True)
class InteractiveRecord:
    """One object under one iterative protocol.

    dice / nsd: the values of steps 0..N (step 0 = initial prompt, step k = after k correction clicks; NSD as
    measured). nsd_challenge: NSD with the challenge's rule (0 where Dice <= 0.2). dsc_auc / nsd_auc:
    :func:`interactive_auc` of steps 1..N of ``dice`` / ``nsd_challenge`` (None for a protocol of one click, which
    has no area). dsc_final / nsd_final: step N's Dice and challenge NSD. ``slice`` is -1 for 2D images."""

    dataset: str
    case: str
    label: int
    slice: int
    modality: str
    protocol: str
    dice: tuple[float, ...]
    nsd: tuple[float, ...]
    nsd_challenge: tuple[float, ...]
    dsc_auc: float | None
    nsd_auc: float | None
    dsc_final: float
    nsd_final: float

    @property
    def image(self) -> tuple[str, str, int]:
        """(dataset, case, slice): the picture the object lies in (the unit of a bootstrap over images)."""
        return (self.dataset, self.case, self.slice)

    @property
    def key(self) -> tuple[str, str, int, int]:
        """(dataset, case, label, slice): the object."""
        return (self.dataset, self.case, self.label, self.slice)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("dice", "nsd", "nsd_challenge"):
            d[k] = list(d[k])
        return d


def interactive_record(
    dice: Sequence[float],
    nsd: Sequence[float],
    *,
    dataset: str = "",
    case: str = "",
    label: int = 0,
    slice_index: int = -1,
    modality: str = "",
    protocol: str = "",
) -> InteractiveRecord:
    """The record of one object from its Dice and NSD at steps 0..N (N >= 1 correction clicks), in step order."""
    d = [float(v) for v in dice]
    n = [float(v) for v in nsd]
    if len(d) < 2:
        raise InputError(f"an interactive record needs the initial step and at least one click, got {len(d)} step(s)")
    bad = [v for v in d + n if not math.isfinite(v)]
    if bad:
        raise InputError(f"{dataset}/{case} label {label}: Dice and NSD must be finite numbers, got {bad[0]}")
    nc = challenge_nsd(d, n)
    clicks = len(d) - 1
    return InteractiveRecord(
        dataset=dataset,
        case=case,
        label=int(label),
        slice=int(slice_index),
        modality=modality,
        protocol=protocol,
        dice=tuple(d),
        nsd=tuple(n),
        nsd_challenge=tuple(nc),
        dsc_auc=interactive_auc(d[1:]) if clicks >= 2 else None,
        nsd_auc=interactive_auc(nc[1:]) if clicks >= 2 else None,
        dsc_final=d[-1],
        nsd_final=nc[-1],
    )


def _clicks_of(protocol: str) -> int | None:
    """The number of correction clicks of an iterative protocol string, None for any other protocol."""
    try:
        p = parse_protocol(protocol)
    except InputError:
        return None
    return p.clicks if p.kind == "iterative" else None


def interactive_records(rows: Sequence[Mapping[str, Any]], protocol: str | None = None) -> list[InteractiveRecord]:
    """One :class:`InteractiveRecord` per object and iterative protocol from evaluation ``rows`` (the runner's rows
    or :func:`~medsamkit.evaluate.read_rows` of a ``results.csv``; keys dataset, case, label, slice, modality,
    protocol, step, status, dice, nsd). ``protocol``: that iterative protocol only (OptionError for another kind);
    None: every iterative protocol in ``rows``. Rows of other protocols and rows whose status is not ``ok`` (an
    object that failed or could not be prompted) are left out; records come in the order of the objects' first rows.

    Every object must have exactly the steps 0..N of its protocol: InputError naming the object and the missing or
    repeated steps otherwise (e.g. rows of a run with ``objects="component"``, whose components share a label)."""
    if protocol is not None and _clicks_of(protocol) is None:
        raise OptionError(f"{protocol!r} is not an iterative protocol: its rows have no correction clicks to score")
    clicks: dict[str, int | None] = {}
    steps: dict[tuple[str, str, str, int, int], dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        proto = str(r.get("protocol", ""))
        if protocol is not None and proto != protocol:
            continue
        if proto not in clicks:
            clicks[proto] = _clicks_of(proto)
        if clicks[proto] is None or r.get("status") != "ok":
            continue
        key = (proto, str(r["dataset"]), str(r["case"]), int(r["label"]), int(r["slice"]))
        step = int(r["step"])
        got = steps.setdefault(key, {})
        if step in got:
            raise InputError(
                f"{_name(key)}: step {step} appears twice (several objects with one label? the rows must hold one "
                "object per label and picture)"
            )
        got[step] = r
    out = []
    for key, got in steps.items():
        proto = key[0]
        n = clicks[proto]
        assert n is not None  # only iterative protocols were kept
        missing = sorted(set(range(n + 1)) - set(got))
        extra = sorted(set(got) - set(range(n + 1)))
        if missing or extra:
            what = (f"lacks step(s) {', '.join(map(str, missing))}" if missing else "") + (
                ("; " if missing else "") + f"has step(s) {', '.join(map(str, extra))} beyond {n}" if extra else ""
            )
            raise InputError(f"{_name(key)} {what} (steps 0..{n} expected)")
        ordered = [got[s] for s in range(n + 1)]
        first = ordered[0]
        out.append(
            interactive_record(
                [_number(r, "dice", key) for r in ordered],
                [_number(r, "nsd", key) for r in ordered],
                dataset=key[1],
                case=key[2],
                label=key[3],
                slice_index=key[4],
                modality=str(first.get("modality") or ""),
                protocol=proto,
            )
        )
    return out


def _name(key: tuple[str, str, str, int, int]) -> str:
    proto, dataset, case, label, z = key
    return f"object {dataset}/{case} label {label}" + (f" slice {z}" if z >= 0 else "") + f" under {proto!r}"


def _number(row: Mapping[str, Any], column: str, key: tuple[str, str, str, int, int]) -> float:
    try:
        return float(row[column])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{_name(key)}: step {row.get('step')} has no {column} value ({row.get(column)!r})") from None
