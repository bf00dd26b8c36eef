"""What a segment is besides its voxels, so that it travels with the mask file: a name, a display colour and a coded
category and type from a small SNOMED CT list (DICOM CID 7150/7151 concepts), written as

- DICOM-SEG: ``SegmentLabel``, ``SegmentedPropertyCategoryCodeSequence`` / ``...TypeCodeSequence`` and
  ``RecommendedDisplayCIELabValue`` (the colour converted by highdicom's ``CIELabColor``);
- NRRD: 3D Slicer's segmentation keys (``Segment<N>_Name``, ``_Color`` as r g b in 0..1, ``_LabelValue``,
  ``_Layer``, ``_Extent``, ``_Tags`` with a terminology entry), so Slicer opens the file as a segmentation;
- the JSON sidecar of every mask (``segments``), which also carries them for NIfTI and MetaImage.

Reading any of them back gives the same :class:`Segment` per label value (a DICOM-SEG numbers its segments 1..n).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError

# category -> (SNOMED CT code, meaning); and for each category its types
CATEGORIES: dict[str, tuple[str, str]] = {
    "tissue": ("85756007", "Tissue"),
    "anatomical structure": ("91723000", "Anatomical Structure"),
    "morphologically altered structure": ("49755003", "Morphologically Altered Structure"),
}
TYPES: dict[str, dict[str, tuple[str, str]]] = {
    "tissue": {
        "tissue": ("85756007", "Tissue"),
        "fat": ("256674009", "Fat"),
        "muscle": ("71616004", "Muscle"),
        "bone": ("272673000", "Bone"),
        "skin": ("39937001", "Skin"),
    },
    "anatomical structure": {
        "organ": ("91772007", "Organ"),
        "liver": ("10200004", "Liver"),
        "kidney": ("64033007", "Kidney"),
        "spleen": ("78961009", "Spleen"),
        "pancreas": ("15776009", "Pancreas"),
        "lung": ("39607008", "Lung"),
        "heart": ("80891009", "Heart"),
        "brain": ("12738006", "Brain"),
        "hippocampus": ("5366008", "Hippocampus"),
        "blood vessel": ("59820001", "Blood Vessel"),
        "aorta": ("15825003", "Aorta"),
        "stomach": ("69695003", "Stomach"),
        "colon": ("71854001", "Colon"),
        "prostate": ("41216001", "Prostate"),
        "bladder": ("89837001", "Bladder"),
        "breast": ("76752008", "Breast"),
        "thyroid": ("69748006", "Thyroid"),
        "lymph node": ("59441001", "Lymph Node"),
        "eye": ("81745001", "Eye"),
    },
    "morphologically altered structure": {
        "neoplasm": ("108369006", "Neoplasm"),
        "lesion": ("52988006", "Lesion"),
        "mass": ("4147007", "Mass"),
        "nodule": ("27925004", "Nodule"),
        "cyst": ("367643001", "Cyst"),
        "edema": ("79654002", "Edema"),
        "necrosis": ("6574001", "Necrosis"),
        "hemorrhage": ("50960005", "Hemorrhage"),
    },
}
DEFAULT_TERM = ("tissue", "tissue")


@dataclass(frozen=True)
class Segment:
    """One segment's description: ``name`` (free text), ``color`` (r, g, b in 0..255; None: a viewer's default),
    ``category`` and ``type`` (keys of :data:`CATEGORIES` and ``TYPES[category]``; None: tissue/tissue)."""

    name: str | None = None
    color: tuple[int, int, int] | None = None
    category: str | None = None
    type: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Segment:
        c = d.get("color")
        return cls(d.get("name"), tuple(int(x) for x in c) if c else None, d.get("category"), d.get("type"))  # type: ignore[arg-type]

    @property
    def term(self) -> tuple[str, str]:
        """(category, type), the default when unset."""
        return (self.category or DEFAULT_TERM[0], self.type or DEFAULT_TERM[1])


def check_term(category: str | None, type_: str | None) -> None:
    """:class:`InputError` unless (``category``, ``type_``) is one of the list (both None: the default)."""
    if category is None and type_ is None:
        return
    if category not in CATEGORIES:
        raise InputError(f"segment category {category!r} is not one of: {', '.join(CATEGORIES)}")
    if type_ not in TYPES[category]:
        raise InputError(f"segment type {type_!r} is not a type of {category!r}: one of {', '.join(TYPES[category])}")


def codes_of(segment: Segment) -> tuple[tuple[str, str], tuple[str, str]]:
    """The SNOMED CT (code, meaning) of the segment's category and type."""
    category, type_ = segment.term
    check_term(category, type_)
    return CATEGORIES[category], TYPES[category][type_]


def term_of(category_code: str, type_code: str) -> tuple[str | None, str | None]:
    """The list's (category, type) for SNOMED CT codes; (None, None) when they are not on the list."""
    for cat, (code, _) in CATEGORIES.items():
        if code == category_code:
            for t, (tcode, _) in TYPES[cat].items():
                if tcode == type_code:
                    return cat, t
    return None, None


# -- 3D Slicer's segmentation NRRD keys ------------------------------------------------------------------------
def slicer_keys(segments: Mapping[int, Segment], labels: np.ndarray) -> dict[str, str]:
    """The NRRD header keys of a 3D Slicer segmentation for each label value present in ``labels`` (``(Z, Y, X)``):
    one segment per value, all in layer 0, with name, colour (r g b in 0..1), extent (inclusive voxel index bounds
    ``i0 i1 j0 j1 k0 k1``, i = x = the array's last axis) and a terminology entry."""
    out = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    values = [int(v) for v in np.unique(labels) if v != 0]
    for n, v in enumerate(values):
        seg = segments.get(v, Segment())
        z, y, x = (np.flatnonzero((labels == v).any(axis=tuple(j for j in range(3) if j != i))) for i in range(3))
        (cat_code, cat_meaning), (type_code, type_meaning) = codes_of(seg)
        rgb = seg.color or (128, 174, 128)
        term = (
            f"Segmentation category and type - medsamkit~SCT^{cat_code}^{cat_meaning}~SCT^{type_code}^{type_meaning}"
            "~^^~Anatomic codes - DICOM master list~^^~^^"
        )
        out.update(
            {
                f"Segment{n}_ID": f"Segment_{v}",
                f"Segment{n}_Name": seg.name or f"label {v}",
                f"Segment{n}_NameAutoGenerated": "0" if seg.name else "1",
                f"Segment{n}_Color": " ".join(f"{c / 255:.6g}" for c in rgb),
                f"Segment{n}_ColorAutoGenerated": "0" if seg.color else "1",
                f"Segment{n}_LabelValue": str(v),
                f"Segment{n}_Layer": "0",
                f"Segment{n}_Extent": f"{x[0]} {x[-1]} {y[0]} {y[-1]} {z[0]} {z[-1]}",
                f"Segment{n}_Tags": f"TerminologyEntry:{term}|",
            }
        )
    return out


def from_slicer_keys(meta: Mapping[str, str]) -> dict[int, Segment]:
    """The segments of 3D Slicer NRRD header keys (as :func:`slicer_keys` writes them, or Slicer itself), by label
    value; {} when the header has none. A segment in another layer than 0 is refused (one label volume here)."""
    out: dict[int, Segment] = {}
    n = 0
    while f"Segment{n}_LabelValue" in meta or f"Segment{n}_Name" in meta:

        def get(key: str, n: int = n) -> str | None:
            return meta.get(f"Segment{n}_{key}")

        if (get("Layer") or "0").strip() != "0":
            raise InputError("this segmentation NRRD has overlapping segments in several layers; export it as a labelmap")
        value = int(get("LabelValue") or n + 1)
        if not 1 <= value <= 255:
            raise InputError(f"segment {n} of this NRRD has label value {value}; labels are 1..255")
        color = None
        if get("Color") and get("ColorAutoGenerated") != "1":
            color = tuple(int(round(float(c) * 255)) for c in get("Color").split()[:3])  # type: ignore[union-attr]
        name = get("Name") if get("NameAutoGenerated") != "1" else None
        category = type_ = None
        tags = get("Tags") or ""
        if "TerminologyEntry:" in tags:
            parts = tags.split("TerminologyEntry:", 1)[1].split("|", 1)[0].split("~")
            if len(parts) >= 3:
                category, type_ = term_of(
                    parts[1].split("^")[1] if "^" in parts[1] else "", parts[2].split("^")[1] if "^" in parts[2] else ""
                )
        out[value] = Segment(name, color, category, type_)  # type: ignore[arg-type]
        n += 1
    return out
