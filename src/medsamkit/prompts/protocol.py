"""Prompt protocols: the named, recorded recipe by which prompts are simulated for an object.

Grammar (``PROTOCOL[:ARG...][:key=value...][:flag]``), the strings ``medsamkit evaluate --prompt`` takes:

===========================================  =====================================================================
``box``                                      tight box around the whole object (all its components)
``box:components``                           one tight box per connected component; the masks are united
                                             (Mazurowski et al.'s two multi-component modes)
``box-shift:N``                              MedSAM ``bbox_shift``: each side moved out by random 0..N px
``box-jitter:R``                             relative jitter: each coordinate moved by U(-R, R) x box size
                                             (``0.1`` or ``10%``; Huang et al.)
``point:centre`` / ``point:centroid``        the interior point farthest from the boundary / the centroid
``point:random``                             one random interior point
``points:K`` / ``points:K+M``                K random positive points / K positive + M negative in a ring
``iterative:N:RULE``                         N correction clicks after an initial prompt, each at the current
                                             error by RULE = ``farthest-error`` or ``random-error``
``uncertainty:K:R``                          K boxes jittered by R: mean mask ("robust") + uncertainty score
``everything``                               everything-mode masks matched to the object (needs the automatic
                                             mask generator, not in medsamkit yet)
===========================================  =====================================================================

Options: ``select=auto|first|highest-iou|oracle`` (which of SAM's outputs is kept: ``first`` = the single-mask
output, ``highest-iou`` = the multimask output with the highest predicted IoU, ``oracle`` = the multimask
output with the best true IoU - an upper bound, reported separately as Mazurowski et al. do; ``auto`` = SAM's
advice: ``highest-iou`` when the prompt is one click and nothing else (ambiguous), else ``first``); for iterative
protocols ``start=click|box`` (first prompt: the rule's click on an empty prediction, as both papers do, or
the tight box) and the flag ``mask`` (feed the previous step's low-res logits back as mask input).
Defaults: ``select=first`` for box and uncertainty protocols, ``auto`` for point and iterative ones (so an
iterative run takes the best of three for its first click and the single-mask output once there are several
clicks or a box).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import OptionError
from .clicks import RULES

KINDS = ("box", "box-shift", "box-jitter", "point", "points", "iterative", "uncertainty", "everything")
SELECTIONS = ("auto", "first", "highest-iou", "oracle")
POINT_KINDS = ("centre", "centroid", "random")


@dataclass(frozen=True)
class PromptProtocol:
    """A parsed prompt protocol (see the module docstring). ``name`` is its canonical string."""

    kind: str
    components: bool = False
    shift: int = 0
    jitter: float = 0.0
    point: str = "centre"
    positives: int = 0
    negatives: int = 0
    clicks: int = 0
    rule: str = ""
    start: str = "click"
    select: str = "first"
    mask_input: bool = False
    samples: int = 0

    @property
    def name(self) -> str:
        k = self.kind
        if k == "box":
            parts = ["box"] + (["components"] if self.components else [])
        elif k == "box-shift":
            parts = [k, str(self.shift)]
        elif k == "box-jitter":
            parts = [k, f"{self.jitter:g}"]
        elif k == "point":
            parts = [k, self.point]
        elif k == "points":
            parts = [k, f"{self.positives}+{self.negatives}" if self.negatives else str(self.positives)]
        elif k == "iterative":
            parts = [k, str(self.clicks), self.rule]
            if self.start != "click":
                parts.append(f"start={self.start}")
            if self.mask_input:
                parts.append("mask")
        elif k == "uncertainty":
            parts = [k, str(self.samples), f"{self.jitter:g}"]
        else:
            parts = [k]
        if self.select != _default_select(k):
            parts.append(f"select={self.select}")
        return ":".join(parts)

    @property
    def multimask(self) -> bool:
        """Whether SAM's three multimask outputs may be needed (highest-iou, oracle, or auto selection)."""
        return self.select != "first"

    @property
    def steps(self) -> int:
        """Number of recorded results per object: 1, or clicks + 1 for iterative protocols (step 0 = the
        initial prompt)."""
        return self.clicks + 1 if self.kind == "iterative" else 1

    def describe(self) -> dict[str, object]:
        d = {k: v for k, v in asdict(self).items() if v not in (0, 0.0, "", False) or k == "kind"}
        d["name"] = self.name
        return d

    def __str__(self) -> str:
        return self.name


def _default_select(kind: str) -> str:
    return "auto" if kind in ("point", "points", "iterative") else "first"


def _int(text: str, what: str, minimum: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise OptionError(f"{what} must be an integer, got {text!r}") from None
    if v < minimum:
        raise OptionError(f"{what} must be >= {minimum}, got {v}")
    return v


def _ratio(text: str) -> float:
    t = text.strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise OptionError(f"jitter ratio must be a number like 0.1 or 10%, got {text!r}") from None
    if not 0 <= v < 1:
        raise OptionError(f"jitter ratio must be in [0, 1), got {text!r}")
    return v


def parse_protocol(text: str) -> PromptProtocol:
    """Parse a protocol string (module docstring) into a :class:`PromptProtocol`; ``ValueError`` naming
    the problem for anything malformed."""
    if not isinstance(text, str) or not text.strip():
        raise OptionError("empty prompt protocol")
    tokens = [t.strip() for t in text.strip().split(":")]
    kind = tokens[0].lower()
    if kind not in KINDS:
        raise OptionError(f"unknown prompt protocol {tokens[0]!r}; use one of {', '.join(KINDS)}")
    args = [t for t in tokens[1:] if "=" not in t]
    opts: dict[str, str] = {}
    for t in tokens[1:]:
        if "=" in t:
            key, _, value = t.partition("=")
            opts[key.strip().lower()] = value.strip().lower()
    select = opts.pop("select", _default_select(kind))
    if select not in SELECTIONS:
        raise OptionError(f"select must be one of {', '.join(SELECTIONS)}, got {select!r}")
    fields: dict[str, object] = {"kind": kind, "select": select}

    def expect(n_min: int, n_max: int, usage: str) -> None:
        if not n_min <= len(args) <= n_max:
            raise OptionError(f"{text!r}: expected {usage}")

    if kind == "box":
        expect(0, 1, "box or box:components")
        if args:
            if args[0].lower() != "components":
                raise OptionError(f"{text!r}: the only box option is 'components'")
            fields["components"] = True
    elif kind == "box-shift":
        expect(1, 1, "box-shift:N (pixels)")
        fields["shift"] = _int(args[0], "box shift", 0)
    elif kind == "box-jitter":
        expect(1, 1, "box-jitter:R (e.g. 0.1 or 10%)")
        fields["jitter"] = _ratio(args[0])
    elif kind == "point":
        expect(0, 1, "point:centre, point:centroid or point:random")
        p = (args[0] if args else "centre").lower()
        p = "centre" if p == "center" else p
        if p not in POINT_KINDS:
            raise OptionError(f"{text!r}: point must be one of {', '.join(POINT_KINDS)}")
        fields["point"] = p
    elif kind == "points":
        expect(1, 1, "points:K or points:K+M")
        pos, _, neg = args[0].partition("+")
        fields["positives"] = _int(pos, "number of positive points", 1)
        fields["negatives"] = _int(neg, "number of negative points", 0) if neg else 0
    elif kind == "iterative":
        expect(2, 3, "iterative:N:RULE[:mask][:start=click|box] with RULE farthest-error or random-error")
        fields["clicks"] = _int(args[0], "number of clicks", 1)
        rule = args[1].lower()
        if rule not in RULES:
            raise OptionError(f"{text!r}: click rule must be one of {', '.join(RULES)}")
        fields["rule"] = rule
        if len(args) == 3:
            if args[2].lower() != "mask":
                raise OptionError(f"{text!r}: unknown iterative flag {args[2]!r} (only 'mask')")
            fields["mask_input"] = True
        start = opts.pop("start", "click")
        if start not in ("click", "box"):
            raise OptionError(f"{text!r}: start must be click or box")
        fields["start"] = start
    elif kind == "uncertainty":
        expect(2, 2, "uncertainty:K:R (K jittered boxes, jitter ratio R)")
        if select != "first":
            raise OptionError(f"{text!r}: uncertainty protocols average the single-mask output; select does not apply")
        fields["samples"] = _int(args[0], "number of samples", 2)
        fields["jitter"] = _ratio(args[1])
    elif kind == "everything":
        raise OptionError(
            "the 'everything' protocol needs medsamkit's automatic mask generator (everything mode), "
            "which is not implemented yet; it comes with the everything-mode issue"
        )
    if opts:
        raise OptionError(f"{text!r}: unknown option(s) {', '.join(sorted(opts))}")
    return PromptProtocol(**fields)  # type: ignore[arg-type]  # fields: parsed values, each of its field's type
