"""The annotation page in a real browser: headless Chromium (Debian package, driven by Playwright) against a live
uvicorn server on 127.0.0.1 that serves the NiiVue viewer from npm's node_modules and shares the session's
predictor.

Orientation is checked against geometry computed here, not by the page: a voxel's world position comes from
nibabel's affine, NiiVue places that position on its canvas (``mm2frac`` + ``frac2canvasPosWithTile``), the
mouse goes there, and the prompt the page builds must name that voxel in the API's slice frame. The volumes:
a RAS hippocampus MRI (identity affine), the TotalSegmentator MR example (LPS: flipped x and y) and a 2D
ultrasound picture.

Needs /usr/bin/chromium (``apt-get install chromium``), ``pip install playwright`` (never ``playwright
install``) and ``npm ci --prefix src/medsamkit/app/web``; skipped without them unless MEDSAMKIT_REQUIRE_BROWSER
is set (CI). Screenshots go to the test's tmp folder, and to docs/images/app-*.png with
MEDSAMKIT_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
nib = pytest.importorskip("nibabel")
from PIL import Image  # noqa: E402

from medsamkit.app import create_app  # noqa: E402
from medsamkit.app.limits import Limits  # noqa: E402
from medsamkit.app.routes import page as app_page  # noqa: E402
from tests.app.live import served  # noqa: E402
from tests.conftest import DATA, box_of, dice, requires_shared  # noqa: E402

CHROMIUM = Path(os.environ.get("MEDSAMKIT_CHROMIUM", "/usr/bin/chromium"))
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
HIPPO = "msd_hippocampus_mri_3d/images/hippocampus_035.nii.gz"
MR = "totalseg_examples_3d/images/mr_sm.nii.gz"
KIDNEY_LEFT = 3  # in totalseg_examples_3d/labels.json
US2D = "busi_breast_us/images/malignant_10.png"
AXIAL, CORONAL, SAGITTAL = 0, 1, 2  # NiiVue's tiles (axCorSag)
PROPAGATE_CAP = 16


def _missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; it drives the system Chromium)"
    if not (app_page.NIIVUE_DIST / "index.js").is_file():
        return "the NiiVue npm package is not installed (npm ci --prefix src/medsamkit/app/web)"
    return None


@pytest.fixture(scope="module")
def browser():
    why = _missing()
    if why:
        if os.environ.get("MEDSAMKIT_REQUIRE_BROWSER"):
            pytest.fail(f"the browser tests are required here: {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(browser, predictor, tmp_path_factory):
    """A live server on a free port of 127.0.0.1 (uvicorn in a thread); the data folder is ../shared/data/real."""
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    # propagation is capped below the MR example's 20 slices: the page must send a window around its slice
    limits = Limits(max_propagate_slices=PROPAGATE_CAP)
    app = create_app(DATA, state_dir=tmp_path_factory.mktemp("state"), predictor=predictor, limits=limits, preencode_slices=0)
    with served(app) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    pg = ctx.new_page()
    errors: list[str] = []
    blocked: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # the page runs under the server's Content-Security-Policy: anything it blocks is an error here
    pg.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    pg.set_default_timeout(30_000)
    pg.goto(server + "/")
    pg.wait_for_function("() => window.medsamkit && window.medsamkit.state.ready")  # a function: no eval under the CSP
    # the policy is in force: an inline script (the usual XSS payload) is refused, and the browser says why
    directive = pg.evaluate(
        """() => new Promise((done) => {
             document.addEventListener("securitypolicyviolation", (e) => done(e.violatedDirective), { once: true });
             const s = document.createElement("script");
             s.textContent = "window.__inlineRan = true";
             document.head.appendChild(s);
           })"""
    )
    assert directive.startswith("script-src") and not pg.evaluate("() => window.__inlineRan === true")
    yield pg
    ctx.close()
    probe = [m for m in blocked if "inline script" in m]
    assert len(probe) == 1, blocked  # the console reports refusals (so the check below sees them)
    errors += [m for m in blocked if "inline script" not in m]
    assert not errors, errors


# -- helpers -----------------------------------------------------------------------------------------------------
def status(pg) -> tuple[str, str]:
    el = pg.locator("[data-testid=status]")
    return el.text_content() or "", el.get_attribute("class") or ""


def idle(pg) -> None:
    pg.evaluate("window.medsamkit.idle()")


def open_path(pg, rel: str) -> dict:
    pg.fill("[data-testid=path-input]", rel)
    pg.click("[data-testid=open-path]")
    pg.wait_for_function(
        "([src]) => { const s = window.medsamkit.state; return s.info && s.info.source === src && "
        "document.querySelector('[data-testid=status]').className === 'ok' }",
        arg=[rel],
    )
    idle(pg)
    return pg.evaluate("window.medsamkit.state.info")


def open_upload(pg, path: Path) -> dict:
    pg.set_input_files("[data-testid=file-input]", str(path))
    pg.wait_for_function(
        "([src]) => { const s = window.medsamkit.state; return s.info && s.info.source === src && "
        "document.querySelector('[data-testid=status]').className === 'ok' }",
        arg=[path.name],
    )
    idle(pg)
    return pg.evaluate("window.medsamkit.state.info")


def go_to(pg, i: int, j: int, k: int) -> None:
    """Put the crosshair on native voxel (i, j, k): every tile shows a slice through it."""
    pg.evaluate("([i, j, k]) => { const m = window.medsamkit; m.goTo('x', i); m.goTo('y', j); m.goTo('z', k); }", [i, j, k])
    idle(pg)


def screen_of(pg, affine: np.ndarray, ijk, tile: int = AXIAL) -> tuple[float, float]:
    """Page coordinates where NiiVue draws the centre of native voxel ijk on a tile (axial/coronal/sagittal),
    rounded: the page sees mouse events at whole CSS pixels."""
    mm = (affine @ [*ijk, 1.0])[:3].tolist()
    pos = pg.evaluate(
        """([mm, tile]) => { const nv = window.medsamkit.nv; const r = nv.canvas.getBoundingClientRect();
           const q = nv.frac2canvasPosWithTile(nv.mm2frac(mm), tile); const d = nv.uiData.dpr || 1;
           return q ? [r.left + q.pos[0] / d, r.top + q.pos[1] / d] : null }""",
        [mm, tile],
    )
    assert pos is not None, f"voxel {ijk} is not on the {tile} tile"
    return round(pos[0]), round(pos[1])


def slice_rect(pg, affine: np.ndarray, shape, k: int) -> dict:
    """Page rectangle of axial slice k (all of its pixels) as NiiVue draws it."""
    nz, ny, nx = shape
    a = screen_of(pg, affine, (-0.5, -0.5, k))
    b = screen_of(pg, affine, (nx - 0.5, ny - 0.5, k))
    x, y = min(a[0], b[0]), min(a[1], b[1])
    return {"x": x, "y": y, "width": abs(b[0] - a[0]), "height": abs(b[1] - a[1])}


def overlay_pixels(pg, rect: dict) -> int:
    """Screen pixels in rect tinted with label 1's colour (red (230, 25, 75) at 50% over grey)."""
    shot = np.asarray(Image.open(io.BytesIO(pg.screenshot(clip=rect))).convert("RGB")).astype(int)
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    return int(((r - g > 60) & (r - b > 40)).sum())


def drag(pg, p0, p1, steps: int = 6) -> None:
    pg.mouse.move(*p0)
    pg.mouse.down()
    pg.mouse.move(*p1, steps=steps)
    pg.mouse.up()


def api_mask(server: str, sid: str) -> tuple[np.ndarray, np.ndarray]:
    """GET mask.nii.gz as a (Z, Y, X) array, and its affine."""
    with urllib.request.urlopen(f"{server}/api/sessions/{sid}/mask.nii.gz") as r:
        img = nib.Nifti1Image.from_bytes(gzip.decompress(r.read()))
    return np.asarray(img.dataobj).transpose(2, 1, 0), img.affine


def viewer_mask(pg, shape) -> np.ndarray:
    """The page's label layer (NIfTI order, i fastest) as a (Z, Y, X) array."""
    return np.array(pg.evaluate("Array.from(window.medsamkit.labelVolume())"), np.uint8).reshape(shape)


def prompt(pg) -> dict:
    return pg.evaluate("window.medsamkit.state.prompt")


def screenshot(pg, tmp_path: Path, name: str) -> None:
    out = tmp_path / f"app-{name}.png"
    pg.screenshot(path=str(out))
    if os.environ.get("MEDSAMKIT_UPDATE_SCREENSHOTS"):  # 256 colours without dithering: a third of the bytes
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        small = Image.open(out).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        small.save(DOCS_IMAGES / out.name, optimize=True)


def zyx(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj).transpose(2, 1, 0), img.affine


# -- tests -------------------------------------------------------------------------------------------------------
@requires_shared
def test_box_propagate_brush_undo_save(page, server, tmp_path):
    """The whole loop on the LPS MR example: box on the left kidney, propagate, brush, undo, eraser, save."""
    pg = page
    source = nib.load(DATA / MR)
    truth = zyx(DATA / MR.replace("images", "masks"))[0] == KIDNEY_LEFT
    shape = truth.shape
    k = 3  # the kidney spans slices 0..10; large here
    assert truth[k].sum() > 150
    x0, y0, x1, y1 = box_of(truth[k])
    pad = 2

    info = open_path(pg, MR)
    assert info["shape"] == list(shape) and pg.text_content("[data-testid=volume-name]").startswith(MR)
    sid = pg.evaluate("window.medsamkit.state.sid")
    fetched: list[str] = []  # every request after opening: edits must come back as patches, not as the whole mask
    pg.on("request", lambda r: fetched.append(r.url))
    go_to(pg, (x0 + x1) // 2, (y0 + y1) // 2, k)
    axial = slice_rect(pg, source.affine, shape, k)
    assert overlay_pixels(pg, axial) == 0

    # a box drag on the axial tile, corner to corner through NiiVue's own placement of the voxels
    pg.keyboard.press("b")
    drag(pg, screen_of(pg, source.affine, (x0 - pad, y0 - pad, k)), screen_of(pg, source.affine, (x1 + pad, y1 + pad, k)))
    idle(pg)
    text, kind = status(pg)
    assert kind == "ok" and f"z slice {k}" in text, text
    assert prompt(pg) == {"axis": "z", "slice": k, "label": 1, "box": [x0 - pad, y0 - pad, x1 + pad, y1 + pad], "points": []}
    mask, _ = api_mask(server, sid)
    seg = mask[k] == 1
    assert dice(seg, truth[k]) > 0.7, dice(seg, truth[k])
    ys, xs = np.nonzero(seg)
    assert xs.min() >= x0 - pad and xs.max() <= x1 + pad and ys.min() >= y0 - pad and ys.max() <= y1 + pad
    assert np.array_equal(viewer_mask(pg, shape), mask)
    assert overlay_pixels(pg, axial) > 0.5 * seg.sum() * (axial["width"] / shape[2]) ** 2  # drawn where it is
    assert pg.text_content("[data-testid=label-count-1]").startswith(f"{seg.sum()} vx · ")
    screenshot(pg, tmp_path, "box")

    # name the label; the server keeps it
    pg.fill("[data-testid=label-name-1]", "kidney_left")
    pg.press("[data-testid=label-name-1]", "Enter")
    idle(pg)
    with urllib.request.urlopen(f"{server}/api/sessions/{sid}/labels") as r:
        assert '"name":"kidney_left"' in r.read().decode()

    # propagate through the volume, with progress
    pg.click("[data-testid=propagate]")
    pg.wait_for_function("() => document.querySelector('[data-testid=progress-text]').textContent === 'done'", timeout=240_000)
    idle(pg)
    text, kind = status(pg)
    assert kind == "ok" and text.startswith("propagated label 1"), text
    assert shape[0] > PROPAGATE_CAP and pg.evaluate("window.medsamkit.state.progress.total") == PROPAGATE_CAP
    propagated, _ = api_mask(server, sid)
    covered = np.flatnonzero((propagated == 1).any(axis=(1, 2)))
    assert covered.size >= 4 and covered.max() < PROPAGATE_CAP  # inside the window [0, 15] around slice 3
    assert np.array_equal(propagated[k], mask[k])
    near = [z for z in (k - 1, k + 1) if 0 <= z < shape[0] and truth[z].any()]
    assert near and all(dice(propagated[z] == 1, truth[z]) > 0.5 for z in near)
    assert np.array_equal(viewer_mask(pg, shape), propagated)
    go_to(pg, (x0 + x1) // 2, (y0 + y1) // 2, k + 3)
    assert overlay_pixels(pg, axial) > 0
    screenshot(pg, tmp_path, "propagated")
    go_to(pg, (x0 + x1) // 2, (y0 + y1) // 2, k)

    # brush: a short stroke in an empty part of the slice adds exactly those pixels on that slice
    free = propagated[k] == 0
    row, col = next(
        (r, c) for r in range(5, shape[1] - 5) for c in range(5, shape[2] - 12) if free[r - 4 : r + 5, c - 4 : c + 13].all()
    )
    pg.keyboard.press("r")
    pg.keyboard.press("[")  # radius 2 -> 1
    assert pg.text_content("#brush-size-value") == "1"
    drag(pg, screen_of(pg, source.affine, (col, row, k)), screen_of(pg, source.affine, (col + 8, row, k)))
    idle(pg)
    brushed, _ = api_mask(server, sid)
    added = (brushed == 1) & (propagated != 1)
    assert np.flatnonzero(added.any(axis=(1, 2))).tolist() == [k]
    assert added[k, row, col : col + 9].all() and 9 <= added.sum() <= 3 * 11
    ys, xs = np.nonzero(added[k])
    assert ys.min() >= row - 1 and ys.max() <= row + 1 and xs.min() >= col - 1 and xs.max() <= col + 9
    assert np.array_equal(viewer_mask(pg, shape), brushed)

    # ctrl+z takes the stroke back, ctrl+shift+z makes it again, ctrl+y after another ctrl+z too
    for key, expected in (
        ("Control+z", propagated),
        ("Control+Shift+z", brushed),
        ("Control+z", propagated),
        ("Control+y", brushed),
    ):
        pg.keyboard.press(key)
        idle(pg)
        assert np.array_equal(api_mask(server, sid)[0], expected), key
        assert np.array_equal(viewer_mask(pg, shape), expected), key
    assert pg.evaluate("window.medsamkit.state.history") == {"undo": 3, "redo": 0, "unsaved": True}
    pg.keyboard.press("Control+z")
    idle(pg)

    # eraser across the kidney's middle row
    mid = (y0 + y1) // 2
    cols = np.flatnonzero(propagated[k, mid] == 1)
    pg.keyboard.press("e")
    drag(pg, screen_of(pg, source.affine, (int(cols[0]) - 1, mid, k)), screen_of(pg, source.affine, (int(cols[-1]) + 1, mid, k)))
    idle(pg)
    erased, _ = api_mask(server, sid)
    assert not (erased[k, mid] == 1).any() and (erased[k] == 1).sum() < (propagated[k] == 1).sum()
    assert np.array_equal(np.delete(erased, k, axis=0), np.delete(propagated, k, axis=0))
    screenshot(pg, tmp_path, "corrected")

    # save as NIfTI through the page: the download is the server's mask on the source grid
    pg.select_option("[data-testid=save-format]", "nii.gz")
    with pg.expect_download() as dl:
        pg.keyboard.press("s")
    saved = tmp_path / dl.value.suggested_filename
    dl.value.save_as(saved)
    assert saved.name == "segmentation.nii.gz"
    voxels, affine = zyx(saved)
    assert np.array_equal(voxels, erased) and np.allclose(affine, source.affine, atol=1e-5)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    assert pg.get_attribute("[data-testid=download-link]", "href").endswith("/download/segmentation.nii.gz")
    assert pg.evaluate("window.medsamkit.state.history.unsaved") is False

    # segments: hidden, label 1 draws nothing; shown again, it does
    pg.click("[data-testid=label-visible-1]")
    idle(pg)
    assert overlay_pixels(pg, axial) == 0
    pg.click("[data-testid=label-visible-1]")
    idle(pg)
    assert overlay_pixels(pg, axial) > 0
    # locked, label 1 keeps its pixels under a stroke of a new label 2 drawn across it
    pg.click("[data-testid=label-locked-1]")
    pg.click("[data-testid=add-label]")
    idle(pg)
    assert pg.evaluate("window.medsamkit.state.label") == 2
    row2 = mid + 2
    cols2 = np.flatnonzero(erased[k, row2] == 1)
    pg.keyboard.press("r")
    drag(
        pg,
        screen_of(pg, source.affine, (int(cols2[0]) - 3, row2, k)),
        screen_of(pg, source.affine, (int(cols2[-1]) + 3, row2, k)),
    )
    idle(pg)
    locked, _ = api_mask(server, sid)
    assert np.array_equal(locked == 1, erased == 1) and (locked[k] == 2).sum() >= 6
    assert np.array_equal(viewer_mask(pg, shape), locked)
    screenshot(pg, tmp_path, "segments")

    # window/level live: a window re-maps the picture the viewer and the model see; labels and undo stay
    before = pg.evaluate("Array.from(window.medsamkit.nv.volumes[0].img.slice(0, 4096))")
    pg.fill("[data-testid=window]", "300,300")
    pg.press("[data-testid=window]", "Enter")
    idle(pg)
    text, kind = status(pg)
    assert kind == "ok" and "labels and undo kept" in text, text
    assert pg.evaluate("window.medsamkit.state.info.preset.window_level_width") == [300, 300]
    assert pg.evaluate("Array.from(window.medsamkit.nv.volumes[0].img.slice(0, 4096))") != before
    assert np.array_equal(viewer_mask(pg, shape), locked)
    pg.locator("[data-testid=window]").blur()  # keys typed into a field are the field's
    pg.keyboard.press("Control+z")
    idle(pg)
    assert np.array_equal(api_mask(server, sid)[0], erased) and np.array_equal(viewer_mask(pg, shape), erased)
    screenshot(pg, tmp_path, "window")
    assert not [u for u in fetched if "mask.nii.gz" in u and "/download/" not in u], fetched


@requires_shared
def test_review_an_existing_mask_with_slice_tools(page, server, tmp_path):
    """Open the MR example with its ground-truth mask, review the left kidney (jump between its slices, mark it
    reviewed, name and type it), take two of its slices out and fill them back between the others, fill a hole,
    and save it as NRRD that carries 3D Slicer's segment keys."""
    pg = page
    truth = zyx(DATA / MR.replace("images", "masks"))[0]
    kidney = truth == KIDNEY_LEFT
    slices = [int(k) for k in np.flatnonzero(kidney.any(axis=(1, 2)))]
    pg.fill("[data-testid=path-input]", MR)
    pg.fill("[data-testid=mask-path]", MR.replace("images", "masks"))
    pg.click("[data-testid=open-path]")
    pg.wait_for_function("() => document.querySelector('[data-testid=status]').textContent.includes('with the mask')")
    idle(pg)
    sid = pg.evaluate("window.medsamkit.state.sid")
    assert np.array_equal(viewer_mask(pg, truth.shape), truth) and np.array_equal(api_mask(server, sid)[0], truth)
    listed = pg.evaluate("[...window.medsamkit.state.labels.values()].filter((l) => l.voxels > 0).map((l) => l.value)")
    assert listed == [int(v) for v in np.unique(truth) if v]
    # jump through the kidney's slices from below it: first, second, ..., and back
    go_to(pg, 50, 50, 0)
    for _ in range(3):
        pg.click(f"[data-testid=label-next-{KIDNEY_LEFT}]")
        idle(pg)
    text, kind = status(pg)
    third = [k for k in slices if k > 0][2]  # the third slice after slice 0 that holds the kidney
    i = slices.index(third)
    assert kind == "ok" and text.startswith(f"segment {KIDNEY_LEFT}: axial slice {third} ({i + 1} of {len(slices)})"), text
    pg.click(f"[data-testid=label-prev-{KIDNEY_LEFT}]")
    assert status(pg)[0].startswith(f"segment {KIDNEY_LEFT}: axial slice {slices[i - 1]} ({i} of")
    # review: name, type, reviewed
    pg.fill(f"[data-testid=label-name-{KIDNEY_LEFT}]", "kidney_left")
    pg.press(f"[data-testid=label-name-{KIDNEY_LEFT}]", "Enter")
    pg.select_option(f"[data-testid=label-type-{KIDNEY_LEFT}]", "anatomical structure|kidney")
    pg.click(f"[data-testid=label-reviewed-{KIDNEY_LEFT}]")
    idle(pg)
    with urllib.request.urlopen(f"{server}/api/sessions/{sid}/labels") as r:
        seg = next(x for x in json.load(r)["labels"] if x["value"] == KIDNEY_LEFT)
    assert (seg["name"], seg["type"], seg["reviewed"], seg["slices"]) == ("kidney_left", "kidney", True, slices)

    # take two inner slices out (as a reviewer erasing them would), then fill between the others
    gap = slices[len(slices) // 2 - 1 : len(slices) // 2 + 1]
    pg.locator(f"[data-testid=label-{KIDNEY_LEFT}]").click(position={"x": 2, "y": 2})
    assert pg.evaluate("window.medsamkit.state.label") == KIDNEY_LEFT
    for k in gap:  # an empty mask of the kidney on slice k
        req = urllib.request.Request(
            f"{server}/api/sessions/{sid}/mask/z/{k}?label={KIDNEY_LEFT}",
            data=bytes(truth.shape[1] * truth.shape[2]),
            method="PUT",
            headers={"content-type": "application/octet-stream"},
        )
        urllib.request.urlopen(req).close()
    pg.reload()  # the page restores the session from its address, labels and all
    pg.wait_for_function("() => window.medsamkit && window.medsamkit.state.info")
    idle(pg)
    pg.locator(f"[data-testid=label-{KIDNEY_LEFT}]").click(position={"x": 2, "y": 2})
    assert not (viewer_mask(pg, truth.shape)[gap] == KIDNEY_LEFT).any()
    pg.click("[data-testid=tool-fill-between]")
    idle(pg)
    filled, _ = api_mask(server, sid)
    assert all(dice(filled[k] == KIDNEY_LEFT, kidney[k]) > 0.8 for k in gap), [
        dice(filled[k] == KIDNEY_LEFT, kidney[k]) for k in gap
    ]
    assert np.array_equal(viewer_mask(pg, truth.shape), filled)
    assert np.array_equal(np.delete(filled, gap, axis=0), np.delete(truth, gap, axis=0))  # nothing else changed
    k = slices[len(slices) // 2 - 1]
    go_to(pg, 50, 50, k)
    screenshot(pg, tmp_path, "review")

    # the ⋯ menu: merge the right kidney into the selected left one, then undo it
    right = 2  # kidney_right in totalseg_examples_3d/labels.json
    pg.once("dialog", lambda d: d.accept("merge"))
    pg.click(f"[data-testid=label-more-{right}]")
    idle(pg)
    merged, _ = api_mask(server, sid)
    assert (
        not (merged == right).any() and (merged == KIDNEY_LEFT).sum() == (filled == KIDNEY_LEFT).sum() + (filled == right).sum()
    )
    assert np.array_equal(viewer_mask(pg, truth.shape), merged)
    pg.keyboard.press("Control+z")
    idle(pg)
    assert np.array_equal(api_mask(server, sid)[0], filled) and np.array_equal(viewer_mask(pg, truth.shape), filled)

    # save as NRRD: 3D Slicer's keys name and type the kidney
    pg.select_option("[data-testid=save-format]", "nrrd")
    with pg.expect_download() as dl:
        pg.click("[data-testid=save]")
    saved = tmp_path / dl.value.suggested_filename
    dl.value.save_as(saved)
    header = saved.read_bytes().split(b"\n\n", 1)[0].decode()
    n = next(line.split("_")[0][len("Segment") :] for line in header.splitlines() if line.endswith(f"_LabelValue:={KIDNEY_LEFT}"))
    assert f"Segment{n}_Name:=kidney_left" in header and "SCT^64033007^Kidney" in header


@requires_shared
def test_clicks_name_the_voxel_under_the_mouse(page, server, tmp_path):
    """Each tile maps the mouse to (axis, slice, x, y) of the API, for a RAS volume and for a 2D picture."""
    pg = page
    source = nib.load(DATA / HIPPO)
    assert nib.aff2axcodes(source.affine) == ("R", "A", "S")
    open_upload(pg, DATA / HIPPO)  # this one as an upload
    sid = pg.evaluate("window.medsamkit.state.sid")
    i, j, k = 12, 30, 21  # an off-centre voxel of the 35 x 47 x 37 grid
    go_to(pg, i, j, k)
    pg.keyboard.press("n")  # negative clicks alone are not sent: no model work, just the mapping
    for tile, axis, slice_, point in ((AXIAL, "z", k, [i, j]), (CORONAL, "y", j, [i, k]), (SAGITTAL, "x", i, [j, k])):
        pg.mouse.click(*screen_of(pg, source.affine, (i, j, k), tile))
        assert prompt(pg) == {"axis": axis, "slice": slice_, "label": 1, "box": None, "points": [[*point, 0]]}, tile
        assert status(pg)[1] == "error"
        pg.keyboard.press("Escape")
        assert prompt(pg) is None

    # a box around the hippocampus, refined with a positive click: both reach the server in its slice frame
    truth = zyx(DATA / HIPPO.replace("images", "masks"))[0] > 0
    kz = int(truth.sum(axis=(1, 2)).argmax())
    x0, y0, x1, y1 = box_of(truth[kz])
    box = [x0 - 3, y0 - 3, x1 + 3, y1 + 3]
    ys, xs = np.nonzero(truth[kz])
    cy, cx = (int(v) for v in min(zip(ys, xs), key=lambda p: (p[0] - ys.mean()) ** 2 + (p[1] - xs.mean()) ** 2))
    go_to(pg, cx, cy, kz)
    pg.keyboard.press("b")
    drag(pg, screen_of(pg, source.affine, (box[0], box[1], kz)), screen_of(pg, source.affine, (box[2], box[3], kz)))
    idle(pg)
    mask, affine = api_mask(server, sid)
    assert dice(mask[kz] == 1, truth[kz]) > 0.3 and np.allclose(affine, source.affine)  # LiteMedSAM on this: ~0.44
    pg.keyboard.press("p")
    pg.mouse.click(*screen_of(pg, source.affine, (cx, cy, kz)))
    idle(pg)
    assert status(pg)[1] == "ok", status(pg)
    assert prompt(pg) == {"axis": "z", "slice": kz, "label": 1, "box": box, "points": [[cx, cy, 1]]}
    ys, xs = np.nonzero(api_mask(server, sid)[0][kz] == 1)
    assert ys.size and xs.min() >= box[0] and xs.max() <= box[2] and ys.min() >= box[1] and ys.max() <= box[3]

    # opening another volume over unsaved labels asks first: declined, the volume stays
    asked: list[str] = []
    pg.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    pg.fill("[data-testid=path-input]", US2D)
    pg.click("[data-testid=open-path]")
    pg.wait_for_function("() => document.querySelector('[data-testid=status]').textContent === 'kept the open volume'")
    assert "not saved" in asked[0] and pg.evaluate("window.medsamkit.state.info.source") == Path(HIPPO).name
    pg.once("dialog", lambda d: (asked.append(d.message), d.accept()))

    # a 2D picture is shown as stored (column 0 on the left, row 0 at the top) and its pixels map the same way
    info = open_path(pg, US2D)
    assert len(asked) == 2
    assert info["is_2d"]
    h, w = info["shape"][1:]
    with urllib.request.urlopen(f"{server}/api/sessions/{sid}/volume.nii.gz") as r:
        affine = nib.Nifti1Image.from_bytes(gzip.decompress(r.read())).affine
    first, last = screen_of(pg, affine, (0, 0, 0)), screen_of(pg, affine, (w - 1, h - 1, 0))
    assert first[0] < last[0] and first[1] < last[1]
    pg.keyboard.press("n")
    for x, y in ((int(0.2 * w), int(0.3 * h)), (int(0.8 * w), int(0.7 * h))):
        pg.mouse.click(*screen_of(pg, affine, (x, y, 0)))
        assert prompt(pg)["points"] == [[x, y, 0]] and prompt(pg)["axis"] == "z"
        pg.keyboard.press("Escape")

    # and a box around the lesion segments it
    lesion = np.asarray(Image.open(DATA / US2D.replace("images", "masks"))) > 0
    x0, y0, x1, y1 = box_of(lesion)
    pg.keyboard.press("b")
    drag(pg, screen_of(pg, affine, (x0 - 4, y0 - 4, 0)), screen_of(pg, affine, (x1 + 4, y1 + 4, 0)))
    idle(pg)
    assert prompt(pg)["box"] == [x0 - 4, y0 - 4, x1 + 4, y1 + 4]
    mask = api_mask(server, sid)[0][0] == 1
    assert dice(mask, lesion) > 0.6, dice(mask, lesion)
    screenshot(pg, tmp_path, "2d")


def test_page_says_when_the_viewer_is_not_installed(browser, server):
    """Without `npm ci` the vendor route is a 404 with the fix, and the page shows it."""
    ctx = browser.new_context()
    pg = ctx.new_page()
    message = '{"error": "the NiiVue viewer is not installed: run `npm ci --prefix src/medsamkit/app/web`"}'
    pg.route("**/vendor/niivue/*", lambda route: route.fulfill(status=404, body=message, content_type="application/json"))
    pg.goto(server + "/")
    box = pg.locator("[data-testid=viewer-message]")
    box.wait_for(state="visible")
    assert "npm ci --prefix src/medsamkit/app/web" in box.text_content()
    assert "Error" in (pg.text_content("[data-testid=status]") or "")
    ctx.close()


def test_vendor_route(tmp_path, monkeypatch):
    """/vendor/niivue/ serves the npm package's dist files as JavaScript, and a clear 404 without them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from fastapi.testclient import TestClient

    client = TestClient(create_app(None, state_dir=tmp_path / "state"), base_url="http://localhost")
    monkeypatch.setattr(app_page, "NIIVUE_DIST", tmp_path / "nowhere")
    r = client.get("/vendor/niivue/index.js")
    assert r.status_code == 404 and "npm ci --prefix src/medsamkit/app/web" in r.json()["error"]
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.js").write_text("export const x = 1;\n")
    monkeypatch.setattr(app_page, "NIIVUE_DIST", dist)
    r = client.get("/vendor/niivue/index.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript") and "export" in r.text
    for bad in ("../package.json", ".hidden", "missing.js"):
        assert client.get(f"/vendor/niivue/{bad}").status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and 'src="/static/app.js"' in page.text
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")


@pytest.fixture(scope="module")
def preencoding_server(browser, predictor, tmp_path_factory):
    """A live server that pre-encodes opened volumes in the background (the default of ``medsamkit serve``)."""
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    app = create_app(DATA, state_dir=tmp_path_factory.mktemp("state"), predictor=predictor)
    try:
        with served(app) as port:
            yield f"http://127.0.0.1:{port}", app
    finally:
        app.state.preencoder.close()


@requires_shared
def test_volume_is_pre_encoded_with_progress_then_propagates_from_the_cache(browser, preencoding_server, tmp_path):
    """Opening a volume shows the background encoding's progress; once every slice is ready, a box and a
    propagation through all of them encode nothing more."""
    url, app = preencoding_server
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(30_000)
    pg.goto(url + "/")
    pg.wait_for_function("() => window.medsamkit && window.medsamkit.state.ready")
    source = nib.load(DATA / MR)
    truth = zyx(DATA / MR.replace("images", "masks"))[0] == KIDNEY_LEFT
    n = truth.shape[0]
    info = open_path(pg, MR)
    row = pg.locator("[data-testid=encoding-row]")
    assert row.is_visible() and info["encoding"]["total"] == n
    seen = pg.text_content("[data-testid=encoding-text]") or ""
    assert seen.endswith(f"/{n} slices along z") or seen == f"{n}/{n} slices along z: ready", seen
    pg.wait_for_function(
        "() => { const r = document.querySelector('[data-testid=encoding-row]'); "
        "return r.dataset.running === 'false' && r.dataset.done === r.dataset.total }",
        timeout=180_000,
    )
    assert pg.text_content("[data-testid=encoding-text]") == f"{n}/{n} slices along z: ready"
    assert pg.evaluate("document.querySelector('[data-testid=encoding]').value") == n
    screenshot(pg, tmp_path, "preencoded")

    cache = app.state.models.cache
    misses = cache.misses
    k = 3
    x0, y0, x1, y1 = box_of(truth[k])
    go_to(pg, (x0 + x1) // 2, (y0 + y1) // 2, k)
    pg.keyboard.press("b")
    drag(pg, screen_of(pg, source.affine, (x0 - 2, y0 - 2, k)), screen_of(pg, source.affine, (x1 + 2, y1 + 2, k)))
    idle(pg)
    pg.click("[data-testid=propagate]")
    pg.wait_for_function("() => document.querySelector('[data-testid=progress-text]').textContent === 'done'", timeout=120_000)
    idle(pg)
    text, kind = status(pg)
    assert kind == "ok" and text.startswith("propagated label 1"), text
    sid = pg.evaluate("window.medsamkit.state.sid")
    with urllib.request.urlopen(f"{url}/api/sessions/{sid}/progress") as r:
        assert json.loads(r.read())["total"] == n  # the propagation covered every slice of the volume
    propagated, _ = api_mask(server=url, sid=sid)
    assert dice(propagated[k] == 1, truth[k]) > 0.7
    assert cache.misses == misses  # the box and all n slices of the propagation came from the background's work
    ctx.close()
    assert not errors, errors
