"""3D segmentation by propagation: prompts, axes, stopping, multi-label, embedding reuse, real data."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.io import MedicalImage, read_image
from medsamkit.predict import EmbeddingCache, Predictor
from medsamkit.predict.volume import (
    ObjectPrompt,
    PropagationOptions,
    _intensity_reference,
    _intensity_shift,
    segment_volume,
)
from tests.conftest import DATA, dice, requires_shared


def ellipsoid_volume(shape=(24, 72, 80), centre=(12, 36, 44), radii=(7, 14, 18), seed=0):
    """A bright ellipsoid in a noisy CT-like volume (HU), as (volume int16, mask bool); axes (z, y, x)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    d = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii))
    mask = d <= 1
    vol = rng.normal(-50, 15, shape)
    vol[mask] = rng.normal(120, 15, int(mask.sum()))
    return np.clip(vol, -1024, 3000).astype(np.int16), mask


def _box3d(mask: np.ndarray) -> list[int]:
    z, y, x = np.nonzero(mask)
    return [int(x.min()), int(y.min()), int(z.min()), int(x.max()), int(y.max()), int(z.max())]


class CountingPredictor(Predictor):
    """A predictor that counts encoder calls."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.encodes = 0
        encode = self.engine.encode

        def counted(x):
            self.encodes += x.shape[0]
            return encode(x)

        self.engine.encode = counted  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def counting():
    """Shared by the tests of this module, with an in-memory embedding cache: the same synthetic volumes
    recur, and their slices are encoded once."""
    return CountingPredictor("litemedsam", cache=EmbeddingCache())


def test_box3d_segments_the_object(counting) -> None:
    vol, mask = ellipsoid_volume()
    img = MedicalImage(vol, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), modality="CT")
    seg = segment_volume(img, [ObjectPrompt(label=3, name="blob", box3d=_box3d(mask))], counting)
    assert seg.labels.shape == vol.shape and seg.labels.dtype == np.uint8
    assert set(np.unique(seg.labels)) == {0, 3}
    assert dice(seg.labels == 3, mask) > 0.85
    assert seg.preset.name == "soft_tissue"  # CT -> soft-tissue window, fitted on the volume
    rec = seg.objects[0]
    assert rec["label"] == 3 and rec["name"] == "blob" and rec["key_slice"] == 12


def test_2d_box_propagates_until_the_object_ends(counting) -> None:
    vol, mask = ellipsoid_volume()
    z = 12
    ys, xs = np.nonzero(mask[z])
    box = [xs.min(), ys.min(), xs.max(), ys.max()]
    seg = segment_volume(vol, [ObjectPrompt(box=box, slice_index=z)], counting, preset="soft_tissue")
    covered = np.flatnonzero(seg.labels.any(axis=(1, 2)))
    truth = np.flatnonzero(mask.any(axis=(1, 2)))
    assert abs(covered[0] - truth[0]) <= 2 and abs(covered[-1] - truth[-1]) <= 2  # stopped at the object's ends
    assert dice(seg.labels > 0, mask) > 0.8


def short_object_volume(tumour: float = 130.0) -> tuple[np.ndarray, np.ndarray]:
    """The reported failure in small: a round object on 3 slices (z 8-10) of a 20-slice brain-like volume,
    slightly brighter than the tissue around it, which looks the same on every other slice. As (volume
    float32, mask bool), axes (z, y, x). The other slices are identical, so the encoder runs 4 times."""
    n, h, w = 20, 96, 96
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    brain = ((yy - 48) / 40) ** 2 + ((xx - 48) / 36) ** 2 <= 1
    tissue = np.where(brain, rng.normal(100, 6, (h, w)), rng.normal(10, 3, (h, w)))
    vol = np.repeat(tissue[None], n, axis=0)
    mask = np.zeros((n, h, w), bool)
    for z, r in ((8, 7), (9, 10), (10, 7)):
        mask[z] = (yy - 50) ** 2 + (xx - 46) ** 2 <= r**2
        vol[z] = np.where(mask[z], np.random.default_rng(z).normal(tumour, 6, (h, w)), tissue)
    return vol.astype(np.float32), mask


def test_2d_box_stops_at_the_end_of_a_short_object(counting) -> None:
    """Past the object's end LiteMedSAM keeps outlining tissue in the previous box with undiminished confidence:
    the old rules (area and confidence relative to the key slice) ran over the whole volume; the intensity rule
    stops within one slice of the object's extent."""
    vol, mask = short_object_volume()
    ys, xs = np.nonzero(mask[9])
    prompt = [ObjectPrompt(box=[xs.min(), ys.min(), xs.max(), ys.max()], slice_index=9)]
    old = PropagationOptions(relative_iou=0.8, max_intensity_shift=None)
    seg_old = segment_volume(vol, prompt, counting, preset="percentile", options=old)
    lo, hi = seg_old.objects[0]["slices"]
    assert lo <= 8 - 3 and hi >= 10 + 3, (lo, hi)  # the old rule over-runs (the reported bug)
    seg = segment_volume(vol, prompt, counting, preset="percentile")
    lo, hi = seg.objects[0]["slices"]
    assert abs(lo - 8) <= 1 and abs(hi - 10) <= 1, (lo, hi)
    assert dice(seg.labels > 0, mask) > 0.85 > dice(seg_old.labels > 0, mask)


def test_3d_box_ignores_the_intensity_rule(counting) -> None:
    """A 3D box bounds the walk: it runs to the box's limits whatever the intensity rule says (parity)."""
    vol, mask = short_object_volume()
    box3d = [30, 34, 4, 62, 66, 14]  # z 4..14 reaches 4 slices past the object on both sides
    on = segment_volume(vol, [ObjectPrompt(box3d=box3d)], counting, preset="percentile")
    off = segment_volume(
        vol, [ObjectPrompt(box3d=box3d)], counting, preset="percentile", options=PropagationOptions(max_intensity_shift=None)
    )
    np.testing.assert_array_equal(on.labels, off.labels)
    assert on.objects[0]["slices"][0] < 8 and on.objects[0]["slices"][1] > 10  # not stopped at the object's end


def test_intensity_shift_is_in_key_interquartile_ranges() -> None:
    picture = np.zeros((4, 10), np.uint8)
    picture[0] = np.arange(100, 200, 10)  # key mask values 100..190: median 145, IQR 45
    key = np.zeros_like(picture, bool)
    key[0] = True
    ref = _intensity_reference(picture, key)
    assert ref == pytest.approx((145.0, 45.0))
    picture[1] = 235
    row1 = np.zeros_like(key)
    row1[1] = True
    assert _intensity_shift(picture, row1, ref) == pytest.approx(2.0)  # (235 - 145) / 45
    flat = np.full((2, 2), 80, np.uint8)  # a uniform key mask: the spread is floored at 4 grey levels
    assert _intensity_reference(flat, np.ones((2, 2), bool)) == (80.0, 4.0)
    assert _intensity_reference(flat, np.zeros((2, 2), bool)) is None


def test_other_axis_and_points(counting) -> None:
    vol, mask = ellipsoid_volume(shape=(24, 40, 80), centre=(12, 20, 44), radii=(7, 8, 18))
    y = 20  # a coronal slice: 2D coordinates are (x, z)
    zs, xs = np.nonzero(mask[:, y, :])
    seg = segment_volume(
        vol, [ObjectPrompt(box=[xs.min(), zs.min(), xs.max(), zs.max()], slice_index=y)], counting, axis="y", preset="soft_tissue"
    )
    assert dice(seg.labels > 0, mask) > 0.75
    pts = [(44, 20, 12, 1), (38, 20, 12, 1), (50, 20, 12, 1)]  # (x, y, z, label) on slice z = 12
    seg_p = segment_volume(vol, [ObjectPrompt(points=pts)], counting, preset="soft_tissue")
    assert seg_p.labels[12, 20, 44] == 1  # the clicked object, key slice included
    assert not (seg_p.labels.astype(bool) & ~np.pad(mask, 2, mode="edge")[2:-2, 2:-2, 2:-2]).sum() > 0.2 * mask.sum()


def test_two_objects_share_slice_embeddings() -> None:
    p = CountingPredictor("litemedsam")
    vol, m1 = ellipsoid_volume(centre=(12, 36, 22), radii=(6, 12, 12))
    vol2, m2 = ellipsoid_volume(centre=(12, 36, 60), radii=(6, 12, 12), seed=1)
    vol = np.where(m2, vol2, vol)
    seg = segment_volume(
        vol, [ObjectPrompt(label=1, box3d=_box3d(m1)), ObjectPrompt(label=2, box3d=_box3d(m2))], p, preset="soft_tissue"
    )
    assert dice(seg.labels == 1, m1) > 0.8 and dice(seg.labels == 2, m2) > 0.8
    assert p.encodes == len(np.flatnonzero((m1 | m2).any(axis=(1, 2))))  # each slice encoded once


@pytest.mark.parametrize(
    "prompt, msg",
    [
        (ObjectPrompt(box3d=[0, 0, 0, 10, 10, 40]), r"outside the 80x72x24 volume \(z must be in 0..23\)"),
        (ObjectPrompt(box3d=[5, 5, 9, 10, 10, 3]), "z0 > z1"),
        (ObjectPrompt(box3d=[1, 2, 3]), "6 numbers"),
        (ObjectPrompt(box=[1, 2, 30, 40]), "needs the slice index"),
        (ObjectPrompt(box=[1, 2, 30, 40], slice_index=30), "slice 30 is outside"),
        (ObjectPrompt(box=[1, 2, 90, 40], slice_index=3), "outside the 80x72 slice"),
        (ObjectPrompt(points=[(1, 2, 3), (1, 2, 4)]), "one slice"),
        (ObjectPrompt(box=[1, 2, 3, 4], slice_index=1, box3d=[0, 0, 0, 1, 1, 1]), "exactly one"),
    ],
)
def test_bad_volume_prompts(prompt: ObjectPrompt, msg: str) -> None:
    vol, _ = ellipsoid_volume()
    with pytest.raises(ValueError, match=msg):
        segment_volume(vol, [prompt], predictor=object())  # type: ignore[arg-type] - fails before any model use


def test_bad_volumes() -> None:
    with pytest.raises(ValueError, match="needs a 3D volume"):
        segment_volume(np.zeros((4, 5)), [ObjectPrompt(box3d=[0, 0, 0, 1, 1, 1])], predictor=object())  # type: ignore[arg-type]
    nan = np.zeros((3, 8, 8), np.float32)
    nan[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        segment_volume(nan, [ObjectPrompt(box3d=[0, 0, 0, 4, 4, 2])], predictor=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distinct"):
        segment_volume(nan, [ObjectPrompt(label=1, box3d=[0, 0, 0, 1, 1, 1])] * 2, predictor=object())  # type: ignore[arg-type]


@requires_shared
def test_hippocampus_beats_the_official_procedure(counting) -> None:
    """One reference case of ../shared/reference/litemedsam (3D boxes from the ground truth, MR preset)."""
    img = read_image(DATA / "msd_hippocampus_mri_3d" / "images" / "hippocampus_035.nii.gz")
    gt = read_image(DATA / "msd_hippocampus_mri_3d" / "masks" / "hippocampus_035.nii.gz").array
    boxes = [[6, 27, 5, 26, 41, 20], [6, 4, 12, 25, 27, 32]]  # the reference's boxes for labels 1 and 2
    prompts = [ObjectPrompt(label=i + 1, box3d=b) for i, b in enumerate(boxes)]
    official = segment_volume(img, prompts, counting, preset="percentile", method="official")
    ours = segment_volume(img, prompts, counting, preset="percentile")
    d_off = [dice(official.labels == v, gt == v) for v in (1, 2)]
    d_ours = [dice(ours.labels == v, gt == v) for v in (1, 2)]
    # the official script's own Dice for this case: 0.2906, 0.3530 (reference manifest)
    assert d_off == pytest.approx([0.2906, 0.353], abs=0.015)
    assert np.mean(d_ours) >= np.mean(d_off) + 0.05, (d_ours, d_off)


def test_propagation_options_are_validated(counting) -> None:
    vol, mask = ellipsoid_volume()
    with pytest.raises(ValueError, match="unknown output selection"):
        segment_volume(
            vol,
            [ObjectPrompt(box3d=_box3d(mask))],
            counting,
            preset="soft_tissue",
            options=PropagationOptions(output_selection="largest"),
        )
    with pytest.raises(ValueError, match="max_intensity_shift must be > 0 or None"):
        segment_volume(
            vol,
            [ObjectPrompt(box=[30, 30, 50, 50], slice_index=12)],
            counting,
            preset="soft_tissue",
            options=PropagationOptions(max_intensity_shift=0),
        )
    with pytest.raises(ValueError, match="method 'official' needs a 3D box"):
        segment_volume(
            vol, [ObjectPrompt(box=[30, 30, 50, 50], slice_index=12)], counting, method="official", preset="soft_tissue"
        )


class SpyPredictor(Predictor):
    """A predictor on another predictor's engine and embedding cache that records every ``predict`` call: the
    ``mask_input`` it was given and the low-res logits it returned."""

    def __init__(self, base: Predictor) -> None:
        super().__init__(engine=base.engine, cache=base.cache)
        self.calls: list[tuple[np.ndarray | None, np.ndarray]] = []

    def predict(self, *args, **kwargs):  # type: ignore[override]
        res = super().predict(*args, **kwargs)
        mask_input = kwargs.get("mask_input")
        self.calls.append((None if mask_input is None else np.array(mask_input), res.low_res_logits[0].copy()))
        return res


def _prompt_kinds() -> dict[str, ObjectPrompt]:
    _, mask = ellipsoid_volume()
    ys, xs = np.nonzero(mask[12])
    return {
        "2d box": ObjectPrompt(box=[xs.min(), ys.min(), xs.max(), ys.max()], slice_index=12),
        "3d box": ObjectPrompt(box3d=_box3d(mask)),
        "points": ObjectPrompt(points=[(44, 36, 12, 1), (38, 36, 12, 1), (50, 36, 12, 1)]),
    }


@pytest.mark.parametrize("kind", ["2d box", "3d box", "points"])
def test_mask_prompt_feeds_the_previous_slice_logits(counting, kind: str) -> None:
    """With ``mask_prompt`` the key slice is decoded without a mask input and every later slice with the logits
    kept on the slice before it: the walk up starts from the key slice's, each next slice takes those of the
    call just before; the walk down starts again from the key slice's."""
    vol, mask = ellipsoid_volume()
    spy = SpyPredictor(counting)
    seg = segment_volume(vol, [_prompt_kinds()[kind]], spy, preset="soft_tissue", options=PropagationOptions(mask_prompt=True))
    lo, hi = seg.objects[0]["slices"]
    assert len(spy.calls) >= hi - lo + 1 >= 5  # one decode per segmented slice (+ the ones where a walk stopped)
    assert spy.calls[0][0] is None  # the key slice gets no mask prompt
    for i in range(1, len(spy.calls)):
        given = spy.calls[i][0]
        assert given is not None, f"decode {i} (after the key slice) got no mask input"
        assert given.shape == (256, 256) and given.dtype == np.float32
        # the logits kept on the previous slice: one output of the call before, or of the key slice's call (the
        # first step down); never anything else
        sources = [spy.calls[i - 1][1], spy.calls[0][1]]
        assert any((given == out).all() for src in sources for out in src), f"decode {i}: not the previous slice's logits"
        # and the output that was kept: its mask is one of the segmented slices
        given_mask = spy.transform.logits_to_image(given[None, None], spy.geometry)[0, 0] > 0
        assert any((given_mask == (seg.labels[z] > 0)).all() for z in range(lo, hi + 1)), f"decode {i}: not a kept mask"
    # the first step down takes the key slice's kept logits; steps up chain: at least one takes the call before's
    chained = sum(any((spy.calls[i][0] == out).all() for out in spy.calls[i - 1][1]) for i in range(2, len(spy.calls)))
    assert chained >= 2
    if kind != "points":  # the box-trained LiteMedSAM segments clicks badly with or without it (issue 16)
        # measured 0.992 (2D box) and 0.966 (3D box), 0.990 and 0.957 without the mask prompt
        assert dice(seg.labels > 0, mask) > 0.9, "the fed-back logits must not derail the walk on a plain ellipsoid"


def test_mask_prompt_off_gives_no_mask_input_and_the_default_results(counting) -> None:
    vol, _ = ellipsoid_volume()
    prompt = [_prompt_kinds()["2d box"]]
    spy = SpyPredictor(counting)
    off = segment_volume(vol, prompt, spy, preset="soft_tissue", options=PropagationOptions(mask_prompt=False))
    assert len(spy.calls) >= 5 and all(given is None for given, _ in spy.calls)
    default = segment_volume(vol, prompt, counting, preset="soft_tissue")
    np.testing.assert_array_equal(off.labels, default.labels)
    assert off.objects == default.objects


def test_mask_prompt_is_refused_with_the_official_method(counting) -> None:
    vol, mask = ellipsoid_volume()
    with pytest.raises(ValueError, match="mask_prompt applies to method 'medsamkit' only"):
        segment_volume(
            vol,
            [ObjectPrompt(box3d=_box3d(mask))],
            counting,
            method="official",
            preset="soft_tissue",
            options=PropagationOptions(mask_prompt=True),
        )


def test_mask_prompt_default_follows_the_decoder(counting) -> None:
    """``mask_prompt=None`` (default) feeds the previous slice's logits exactly when the predictor's decoder was
    trained with its mask fed back (the registry's ``mask_feedback``), and never with the official method."""
    from medsamkit.models.registry import get_entry
    from medsamkit.predict.predictor import _mask_feedback

    assert get_entry("litemedsam-interactive").mask_feedback and not get_entry("litemedsam").mask_feedback
    assert _mask_feedback("litemedsam-interactive") and not _mask_feedback("litemedsam") and not _mask_feedback("nope")
    assert counting.mask_feedback is False
    vol, mask = ellipsoid_volume()
    spy = SpyPredictor(counting)
    spy.mask_feedback = True  # as Predictor("litemedsam-interactive") sets it
    segment_volume(vol, [_prompt_kinds()["2d box"]], spy, preset="soft_tissue")
    assert spy.calls[0][0] is None and len(spy.calls) >= 5
    assert all(given is not None for given, _ in spy.calls[1:])
    box3d = [ObjectPrompt(box3d=_box3d(mask))]
    official = segment_volume(vol, box3d, spy, method="official", preset="soft_tissue")  # no error: off there
    plain = segment_volume(vol, box3d, counting, method="official", preset="soft_tissue")
    np.testing.assert_array_equal(official.labels, plain.labels)
