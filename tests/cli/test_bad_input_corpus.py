"""The bad-input corpus: every case is a file, prompt, option or output a user (or an attacker) could give the
command line. Each case asserts the exit status (2: the user's input; never 0 for a wrong result, never 1, which
means a bug), one clear ``medsamkit: error:`` line naming the problem (no traceback), that no input changed
and that no partial output remains. Files are made by the builders below; nothing is read from the network.

Exit statuses (cli/main.py): 0 done, 1 a bug (traceback in a log file) or the environment, 2 an input error,
3 finished with failed items.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsamkit.cli.main import main
from tests.dicom_series import write_series

Builder = Callable[[Path, Path], list[str]]


@dataclass(frozen=True)
class Bad:
    """One corpus case: ``build(inputs, outputs)`` writes its files into the two folders and returns argv."""

    name: str
    build: Builder
    words: str  # a fragment of the one-line message
    code: int = 2


# -- inputs ------------------------------------------------------------------------------------------------------


def png(folder: Path, name: str = "in.png", shape: tuple[int, ...] = (48, 64), value: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    arr = np.full(shape, value, np.uint8) if value is not None else rng.integers(0, 255, shape, dtype=np.uint8)
    p = folder / name
    Image.fromarray(arr).save(p)
    return p


def nifti(folder: Path, data: np.ndarray | None = None, name: str = "in.nii.gz") -> Path:
    if data is None:
        data = np.random.default_rng(0).normal(0, 100, (24, 20, 6)).astype(np.int16)
    p = folder / name
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), p)
    return p


def truncated(src: Path, keep: float = 0.5) -> Path:
    raw = src.read_bytes()
    src.write_bytes(raw[: int(len(raw) * keep)])
    return src


def huge_nifti_header(folder: Path) -> Path:
    """A 1 KB .nii.gz whose header declares 30000 x 30000 x 30000 float32 voxels (108 TB)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 30000))
    hdr.set_data_dtype(np.float32)
    p = folder / "huge.nii.gz"
    p.write_bytes(gzip.compress(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 64))
    return p


def mha(folder: Path, header_extra: str = "", data_file: str = "LOCAL", body: bytes = b"\x00" * (4 * 4 * 3 * 2)) -> Path:
    head = (
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 3\nElementType = MET_SHORT\nElementSpacing = 1 1 1\n"
        f"{header_extra}ElementDataFile = {data_file}\n"
    )
    p = folder / ("in.mha" if data_file == "LOCAL" else "in.mhd")
    p.write_bytes(head.encode() + (body if data_file == "LOCAL" else b""))
    return p


def nrrd(folder: Path, extra: str = "", body: bytes = b"\x00" * (4 * 4 * 3 * 2)) -> Path:
    head = f"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 3\nencoding: raw\nendian: little\n{extra}\n"
    p = folder / "in.nrrd"
    p.write_bytes(head.encode() + body)
    return p


def npz(folder: Path, **arrays: np.ndarray) -> Path:
    p = folder / "in.npz"
    with open(p, "wb") as f:
        np.savez(f, **arrays)
    return p


def series(folder: Path, **kw: Any) -> Path:
    return write_series(folder / "series", **kw)


def seg(image: Path, out: Path, *args: str, o: str = "m.png") -> list[str]:
    return ["segment", str(image), *args, "-o", str(out / o)]


def vol(inp: Path, out: Path, *args: str, o: str = "m.nii.gz") -> list[str]:
    return seg(nifti(inp), out, *args, o=o)


BOX = ("--box", "5,5,30,30")
BOX3D = ("--box3d", "2,2,1,12,12,4")


def _hard_link(inp: Path, out: Path) -> list[str]:
    src = png(inp)
    os.link(src, out / "alias.png")
    return seg(src, out, *BOX, o="alias.png")


def _symlink(inp: Path, out: Path) -> list[str]:
    src = png(inp)
    (out / "link.png").symlink_to(src)
    return seg(src, out, *BOX, o="link.png")


def _parent_is_file(inp: Path, out: Path) -> list[str]:
    (out / "afile").write_text("x")
    return seg(png(inp), out, *BOX, o="afile/m.png")


def _two_series(inp: Path, out: Path) -> list[str]:
    write_series(inp / "s", n=3, uid="1.2.826.0.1.3680043.8.498.7", prefix="a")
    write_series(inp / "s", n=3, uid="1.2.826.0.1.3680043.8.498.8", prefix="b")
    return ["segment", str(inp / "s"), *BOX3D, "-o", str(out / "m.nii.gz")]


def _checkpoint(inp: Path, out: Path, content: bytes) -> list[str]:
    (inp / "w.pth").write_bytes(content)
    return seg(png(inp), out, *BOX, "--checkpoint", str(inp / "w.pth"))


def _pickle_npz(inp: Path, out: Path) -> list[str]:
    p = inp / "in.npz"
    with open(p, "wb") as f:
        np.savez(f, imgs=np.array([{"a": 1}], dtype=object))
    return seg(p, out, *BOX3D, o="m.nii.gz")


def _tiff(inp: Path, out: Path) -> list[str]:
    p = inp / "in.tif"
    p.write_bytes(b"II*\x00" + struct.pack("<I", 8) + b"\xff" * 40)
    return seg(p, out, *BOX)


def _corrupt_dcm(inp: Path, out: Path) -> list[str]:
    """A DICOM preamble and one broken file-meta element: no pixel data to read."""
    p = inp / "x.dcm"
    p.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + bytes(range(64)))
    return seg(p, out, *BOX)


def _truncated_dcm(inp: Path, out: Path) -> list[str]:
    """A valid single CT slice with its pixel data cut in half."""
    from tests.dicom_series import write_series

    one = sorted(write_series(inp / "s", n=1, size=32).glob("*.dcm"))[0]
    p = inp / "cut.dcm"
    data = one.read_bytes()
    p.write_bytes(data[: len(data) - 32 * 32])
    one.unlink()
    return seg(p, out, *BOX)


def _jpeg(inp: Path, out: Path) -> list[str]:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(buf, format="JPEG")
    p = inp / "in.jpg"
    p.write_bytes(buf.getvalue()[:200])
    return seg(p, out, *BOX)


def _zip_bomb_npz(inp: Path, out: Path) -> list[str]:
    """0.1 MB on disk, a (4096, 4096, 4096) uint8 array declared (64 GiB)."""
    p = inp / "in.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (4096, 4096, 4096)})
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("imgs.npy", header.getvalue() + b"\x00" * 100_000)
    return seg(p, out, *BOX3D, o="m.nii.gz")


def _with(a: np.ndarray, v: float) -> np.ndarray:
    a[2, 2, 2] = v
    return a


def _truncated_nifti(folder: Path) -> Path:
    good = nifti(folder, np.random.default_rng(1).random((30, 30, 30)).astype(np.float32))
    raw = gzip.decompress(good.read_bytes())
    good.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    return good


def _huge_mha(folder: Path) -> Path:
    """A MetaImage header declaring 40000^3 float32 voxels (256 TB) over 16 bytes of data."""
    head = "ObjectType = Image\nNDims = 3\nDimSize = 40000 40000 40000\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
    return raw(folder, "in.mha", head.encode() + b"\x00" * 16)


def _dicom_over_itself(inp: Path, out: Path) -> list[str]:
    one = sorted(write_series(inp / "s", n=2).iterdir())[0]
    return ["segment", str(one), *BOX, "-o", str(one)]


def _apng(folder: Path) -> Path:
    frames = [Image.fromarray(np.full((20, 20), v, np.uint8)) for v in (0, 80, 160, 240)]
    p = folder / "anim.png"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    return p


def _png_named(folder: Path, name: str) -> Path:
    return png(folder, name)


def raw(folder: Path, name: str, data: bytes) -> Path:
    p = folder / name
    p.write_bytes(data)
    return p


def _empty_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return buf.getvalue()


def _manifest(folder: Path, text: str, name: str = "m.csv") -> Path:
    p = folder / name
    p.write_text(text)
    return p


CASES = [
    # --- files that cannot be read ------------------------------------------------------------------------------
    Bad("missing file", lambda i, o: seg(i / "nope.png", o, *BOX), "image not found"),
    Bad("unsupported suffix", lambda i, o: seg(raw(i, "notes.txt", b"x"), o, *BOX), "unsupported file type .txt"),
    Bad("empty png", lambda i, o: seg(raw(i, "e.png", b""), o, *BOX), "cannot read e.png"),
    Bad("png garbage", lambda i, o: seg(raw(i, "g.png", b"\x89PNG\r\n\x1a\ngarbage"), o, *BOX), "cannot read g.png"),
    Bad("png truncated", lambda i, o: seg(truncated(png(i, shape=(200, 200))), o, *BOX), "cannot read in.png"),
    Bad("jpeg truncated", _jpeg, "cannot read in.jpg"),
    Bad("tiff corrupt", _tiff, "cannot read in.tif"),
    Bad("bmp corrupt", lambda i, o: seg(raw(i, "b.bmp", b"BM" + b"\x00" * 30), o, *BOX), "cannot read b.bmp"),
    Bad("png 4 frames (APNG)", lambda i, o: seg(_apng(i), o, *BOX), "frames"),
    Bad("nifti truncated", lambda i, o: seg(_truncated_nifti(i), o, *BOX3D, o="m.nii.gz"), "truncated or corrupt"),
    Bad("nifti garbage", lambda i, o: seg(raw(i, "g.nii", os.urandom(400)), o, *BOX3D, o="m.nii.gz"), "cannot read g.nii"),
    Bad("nifti huge header", lambda i, o: seg(huge_nifti_header(i), o, *BOX3D, o="m.nii.gz"), "over the limit"),
    Bad("nifti 4D", lambda i, o: seg(nifti(i, np.zeros((8, 8, 4, 3), np.int16)), o, *BOX3D, o="m.nii.gz"), "4D image"),
    Bad(
        "nifti NaN", lambda i, o: seg(nifti(i, _with(np.zeros((16, 16, 6), np.float32), np.nan)), o, *BOX3D, o="m.nii.gz"), "NaN"
    ),
    Bad(
        "nifti Inf",
        lambda i, o: seg(nifti(i, _with(np.zeros((16, 16, 6), np.float32), np.inf)), o, *BOX3D, o="m.nii.gz"),
        "infinite",
    ),
    Bad("nifti complex", lambda i, o: seg(nifti(i, np.zeros((16, 16, 6), np.complex64)), o, *BOX3D, o="m.nii.gz"), "complex"),
    Bad("nrrd corrupt", lambda i, o: seg(nrrd(i, body=b"\x00" * 5), o, *BOX3D, o="m.nii.gz"), "cannot read in.nrrd"),
    Bad(
        "nrrd missing data file",
        lambda i, o: seg(nrrd(i, extra="data file: gone.raw", body=b""), o, *BOX3D, o="m.nii.gz"),
        "cannot read in.nrrd",
    ),
    Bad("mha truncated", lambda i, o: seg(mha(i, body=b"\x00" * 7), o, *BOX3D, o="m.nii.gz"), "cannot read in.mha"),
    Bad("mhd missing raw", lambda i, o: seg(mha(i, data_file="gone.raw"), o, *BOX3D, o="m.nii.gz"), "cannot read in.mhd"),
    Bad("mha huge header", lambda i, o: seg(_huge_mha(i), o, *BOX3D, o="m.nii.gz"), "over the limit"),
    Bad("npz not a zip", lambda i, o: seg(raw(i, "x.npz", b"hello"), o, *BOX3D, o="m.nii.gz"), "not a valid npz"),
    Bad(
        "npz truncated",
        lambda i, o: seg(truncated(npz(i, imgs=np.ones((6, 16, 16), np.uint8))), o, *BOX3D, o="m.nii.gz"),
        "not a valid npz",
    ),
    Bad(
        "npz unknown keys",
        lambda i, o: seg(npz(i, a=np.zeros(3), b=np.zeros(3)), o, *BOX3D, o="m.nii.gz"),
        "expected a key 'imgs'",
    ),
    Bad("npz object array", _pickle_npz, "object voxel values are not supported"),
    Bad("npz 4D", lambda i, o: seg(npz(i, imgs=np.zeros((2, 3, 8, 8), np.uint8)), o, *BOX3D, o="m.nii.gz"), "expected 2D or 3D"),
    Bad("npz bomb", _zip_bomb_npz, "over the limit"),
    Bad("dicom file corrupt", _corrupt_dcm, "x.dcm is a DICOM object without pixel data"),
    Bad("dicom pixel data truncated", _truncated_dcm, "cut.dcm: cannot decode pixel data"),
    Bad("empty folder", lambda i, o: seg(i, o, *BOX3D, o="m.nii.gz"), "no DICOM image files"),
    Bad("two series, none chosen", _two_series, "holds 2 DICOM series"),
    Bad(
        "unknown --series",
        lambda i, o: ["segment", str(series(i, n=4)), *BOX3D, "--series", "9.9", "-o", str(o / "m.nii.gz")],
        "no series 9.9; the 1 series here: 1.2.826",
    ),
    Bad(
        "mixed orientations",
        lambda i, o: seg(series(i, n=5, orientations={2: [1, 0, 0, 0, 0, -1]}), o, *BOX3D, o="m.nii.gz"),
        "another ImageOrientationPatient",
    ),
    Bad("mixed sizes", lambda i, o: seg(series(i, n=5, sizes={1: 16}), o, *BOX3D, o="m.nii.gz"), "mixed series"),
    Bad("duplicated slice", lambda i, o: seg(series(i, n=5, positions={3: 4.0}), o, *BOX3D, o="m.nii.gz"), "same position"),
    Bad(
        "gapped series as NIfTI",
        lambda i, o: seg(series(i, n=12, keep=[0, 1, 2, 3, 4, 8, 9, 10, 11]), o, *BOX3D, o="m.nii.gz"),
        "8 mm apart",
    ),
    Bad(
        "gapped series as MHA",
        lambda i, o: seg(series(i, n=12, keep=[0, 1, 2, 3, 4, 8, 9, 10, 11]), o, *BOX3D, o="m.mha"),
        "--resample",
    ),
    Bad("tilted series as NRRD", lambda i, o: seg(series(i, n=8, shear_mm=1.0), o, *BOX3D, o="m.nrrd"), "gantry tilt"),
    Bad(
        "tilted series --resample",
        lambda i, o: seg(series(i, n=8, shear_mm=1.0), o, *BOX3D, "--resample", o="m.nii.gz"),
        "uneven slice spacing only",
    ),
    Bad(
        "gapped series --world",
        lambda i, o: seg(series(i, n=12, keep=[0, 1, 2, 3, 4, 8, 9, 10, 11]), o, "--world", "--box3d", "1,1,1,5,5,5", o="m.dcm"),
        "--world coordinates",
    ),
    Bad(
        "gapped --resample as DICOM-SEG",
        lambda i, o: seg(series(i, n=12, keep=[0, 1, 2, 8, 9]), o, *BOX3D, "--resample", o="m.dcm"),
        "drop --resample",
    ),
    # --- outputs ------------------------------------------------------------------------------------------------
    Bad("-o is the input", lambda i, o: ["segment", str(png(i)), *BOX, "-o", str(i / "in.png")], "is the input file"),
    Bad(
        "-o is the input, another spelling",
        lambda i, o: ["segment", str(png(i)), *BOX, "-o", str(i / ".." / i.name / "in.png")],
        "is the input file",
    ),
    Bad("-o symlink to the input", _symlink, "is the input file"),
    Bad("-o hard link to the input", _hard_link, "is the input file"),
    Bad("--overlay is the input", lambda i, o: seg(png(i), o, *BOX, "--overlay", str(i / "in.png")), "--overlay"),
    Bad("-o and --overlay the same", lambda i, o: seg(png(i), o, *BOX, "--overlay", str(o / "m.png")), "are the same file"),
    Bad("-o is the input DICOM file", _dicom_over_itself, "is the input file"),
    Bad(
        "-o inside the DICOM folder",
        lambda i, o: ["segment", str(series(i, n=4)), *BOX3D, "-o", str(i / "series" / "seg.dcm")],
        "inside the input folder",
    ),
    Bad("-o is a folder", lambda i, o: ["segment", str(png(i)), *BOX, "-o", str(o)], "is a folder"),
    Bad("-o under a file", _parent_is_file, "is a file, not a folder"),
    Bad(
        "-o not writable",
        lambda i, o: ["segment", str(png(i)), *BOX, "-o", "/proc/medsamkit-test/m.png"],
        "cannot write to the folder",
    ),
    Bad("-o unknown format", lambda i, o: seg(png(i), o, *BOX, o="m.xyz"), "unsupported mask format"),
    Bad("-o PNG for a volume", lambda i, o: vol(i, o, *BOX3D, o="m.png"), "cannot be a PNG"),
    Bad("-o DICOM-SEG for NIfTI", lambda i, o: vol(i, o, *BOX3D, o="m.dcm"), "needs a DICOM series"),
    Bad("-o NIfTI for a 2D image", lambda i, o: seg(png(i), o, *BOX, o="m.nii.gz"), "written as .png"),
    Bad("--overlay not PNG", lambda i, o: seg(png(i), o, *BOX, "--overlay", str(o / "ov.jpg")), "name it .png"),
    Bad("--overlay for a volume", lambda i, o: vol(i, o, *BOX3D, "--overlay", str(o / "ov.png")), "--overlay is for 2D"),
    # --- prompts ------------------------------------------------------------------------------------------------
    Bad("box outside", lambda i, o: seg(png(i), o, "--box", "5,5,70,30"), "lies outside the 64x48 image"),
    Bad("box reversed", lambda i, o: seg(png(i), o, "--box", "30,5,5,30"), "x0 <= x1"),
    Bad("box NaN", lambda i, o: seg(png(i), o, "--box", "nan,1,5,5"), "NaN"),
    Bad("box inf", lambda i, o: seg(png(i), o, "--box", "1,1,inf,5"), "infinite"),
    Bad("box three numbers", lambda i, o: seg(png(i), o, "--box", "1,2,3"), "X0,Y0,X1,Y1"),
    Bad("box text", lambda i, o: seg(png(i), o, "--box", "a,b,c,d"), "X0,Y0,X1,Y1"),
    Bad("point outside", lambda i, o: seg(png(i), o, "--point", "100,5"), "lies outside the 64x48 image"),
    Bad("point label 5", lambda i, o: seg(png(i), o, "--point", "10,5,5"), "LABEL must be 1"),
    Bad("points with several boxes", lambda i, o: seg(png(i), o, *BOX, "--box", "1,1,4,4", "--point", "10,10"), "several boxes"),
    Bad("256 boxes", lambda i, o: seg(png(i), o, *[a for _ in range(256) for a in BOX]), "at most 255"),
    Bad("no prompt", lambda i, o: seg(png(i), o), "at least one --box"),
    Bad("--box3d on a 2D image", lambda i, o: seg(png(i), o, *BOX3D), "are for volumes"),
    Bad("box3d outside", lambda i, o: vol(i, o, "--box3d", "0,0,0,30,10,5"), "outside the 24x20x6 volume"),
    Bad("box3d five numbers", lambda i, o: vol(i, o, "--box3d", "0,0,0,5,5"), "X0,Y0,Z0,X1,Y1,Z1"),
    Bad("box on a volume without --slice", lambda i, o: vol(i, o, *BOX), "needs --slice"),
    Bad("--slice outside", lambda i, o: vol(i, o, "--box", "2,2,10,10", "--slice", "9"), "slice 9 is outside 0..5"),
    Bad("2D point on a volume", lambda i, o: vol(i, o, "--point", "3,4"), "X,Y,Z"),
    Bad("point with a box3d", lambda i, o: vol(i, o, *BOX3D, "--point", "3,4,2"), "do not mix"),
    Bad("points on two slices", lambda i, o: vol(i, o, "--point", "3,4,2", "--point", "3,4,3"), "one slice"),
    Bad(
        "too many label names", lambda i, o: seg(png(i), o, *BOX, "--label", "a", "--label", "b"), "2 --label names for 1 object"
    ),
    # --- options ------------------------------------------------------------------------------------------------
    Bad("--window one number", lambda i, o: vol(i, o, *BOX3D, "--window", "40"), "LEVEL,WIDTH"),
    Bad("--window zero width", lambda i, o: vol(i, o, *BOX3D, "--window", "40,0"), "WIDTH must be positive"),
    Bad("--preset unknown", lambda i, o: vol(i, o, *BOX3D, "--preset", "abdomen"), "unknown intensity preset"),
    Bad("--modality unknown", lambda i, o: vol(i, o, *BOX3D, "--modality", "banana"), "unknown modality"),
    Bad("--model unknown", lambda i, o: seg(png(i), o, *BOX, "--model", "no_such"), "unknown model 'no_such'"),
    Bad("--checkpoint missing", lambda i, o: seg(png(i), o, *BOX, "--checkpoint", str(i / "none.pth")), "checkpoint not found"),
    Bad("--checkpoint garbage", lambda i, o: _checkpoint(i, o, os.urandom(2000)), "not a PyTorch checkpoint"),
    Bad("--checkpoint a zip of nothing", lambda i, o: _checkpoint(i, o, _empty_zip()), "not a PyTorch checkpoint"),
    Bad("--threads 0", lambda i, o: seg(png(i), o, *BOX, "--threads", "0"), "must be at least 1"),
    Bad("--backend cuda", lambda i, o: seg(png(i), o, *BOX, "--backend", "cuda"), "invalid choice"),
    Bad("--axis w", lambda i, o: vol(i, o, *BOX3D, "--axis", "w"), "invalid choice"),
    Bad("unknown command", lambda i, o: ["frobnicate"], "invalid choice"),
    Bad("evaluate: no dataset", lambda i, o: ["evaluate", str(i / "none"), "-o", str(o / "run")], "dataset folder not found"),
    Bad(
        "evaluate: bad protocol",
        lambda i, o: ["evaluate", str(i), "--prompt", "box-jitter:2", "-o", str(o / "run")],
        "jitter ratio",
    ),
    Bad(
        "everything: -o is a file",
        lambda i, o: ["everything", str(png(i)), "-o", str(raw(o, "afile", b"x"))],
        "is a file, not a folder",
    ),
    Bad(
        "batch: manifest missing",
        lambda i, o: ["batch", "segment", str(i / "none.csv"), "-o", str(o / "b")],
        "manifest not found",
    ),
    Bad(
        "batch: manifest without image column",
        lambda i, o: ["batch", "segment", str(_manifest(i, "file,box\nx.png,1\n")), "-o", str(o / "b")],
        "no 'image' column",
    ),
    Bad(
        "batch: manifest .txt",
        lambda i, o: ["batch", "segment", str(_manifest(i, "x", "m.txt")), "-o", str(o / "b")],
        "a manifest is a .csv",
    ),
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and link under root -> its content hash (links: their target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p)] = "dir"
    return out


def run_case(case: Bad, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    argv = case.build(inp, out)
    assert argv, f"{case.name}: the builder made no command"
    before = _snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert code == case.code, f"{case.name}: exit {code}, expected {case.code}: {err}"
    assert lines and lines[-1].startswith("medsamkit"), err
    assert all(line.startswith("medsamkit") for line in lines), err  # warnings and the error, one line each
    errors = [line for line in lines if "warning:" not in line]
    assert len(errors) == 1, err
    assert case.words in errors[0], f"{case.name}: {errors[0]!r} lacks {case.words!r}"
    assert "np.float64" not in errors[0] and ".tmp" not in errors[0] and "Errno" not in errors[0], errors[0]
    after = _snapshot(tmp_path)
    assert after == before, f"{case.name}: files changed or appeared: {set(after) ^ set(before) or 'contents'}"
    return errors[0]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Bad, tmp_path, capsys) -> None:
    run_case(case, tmp_path, capsys)


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


def test_exit_status_1_is_a_bug_with_a_logged_traceback(tmp_path, monkeypatch, capsys) -> None:
    """A failure that is not an input error (here: a bug injected into the reader) is exit 1, one line, and the
    traceback goes to a log file (never to the terminal)."""
    import medsamkit.io as mio

    monkeypatch.setenv("MEDSAMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDSAMKIT_DEBUG", raising=False)

    def broken(*a: object, **k: object) -> NoReturn:
        raise ValueError("operands could not be broadcast together")  # a numpy-style bug, not the user's fault

    monkeypatch.setattr(mio, "read_image", broken)
    code = main(seg(png(tmp_path), tmp_path, *BOX))
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "internal error" in err and "Traceback" not in err
    log = next((tmp_path / "cache" / "logs").glob("error-*.log"))
    assert "Traceback" in log.read_text() and "operands could not be broadcast" in log.read_text()
    assert log.read_text().startswith("medsamkit segment ")  # the command that failed, as called
    assert str(log) in err


def test_warnings_instead_of_plausible_objects(tmp_path, capsys) -> None:
    """A constant image and a prompt of background points only: exit 0, an empty mask, and a warning line."""
    flat = png(tmp_path, "flat.png", value=90)
    code = main(["segment", str(flat), *BOX, "-o", str(tmp_path / "a.png")])
    err = capsys.readouterr().err
    assert code == 0 and "warning: the picture the model sees is constant" in err
    assert not np.asarray(Image.open(tmp_path / "a.png")).any()
    noisy = png(tmp_path, "noisy.png")
    code = main(["segment", str(noisy), "--point", "10,10,0", "--point", "20,20,0", "-o", str(tmp_path / "b.png")])
    err = capsys.readouterr().err
    assert code == 0 and "only background points" in err
    assert not np.asarray(Image.open(tmp_path / "b.png")).any()
    zeros = nifti(tmp_path, np.zeros((24, 20, 6), np.int16), "zeros.nii.gz")
    code = main(["segment", str(zeros), *BOX3D, "-o", str(tmp_path / "c.nii.gz")])
    err = capsys.readouterr().err
    assert code == 0 and "is constant" in err
    assert not np.asarray(nib.load(tmp_path / "c.nii.gz").dataobj).any()
    info = json.loads((tmp_path / "c.nii.gz.json").read_text())
    assert info["objects"][0]["voxels"] == 0


def test_outputs_are_checked_before_the_model_loads(tmp_path, monkeypatch, capsys) -> None:
    """-o m.xyz, a PNG for a volume, DICOM-SEG for NIfTI, a prompt outside: refused before any model work."""
    import medsamkit.cli.segment as cli_segment

    def no_model(args: argparse.Namespace) -> NoReturn:
        raise AssertionError("the model was loaded for a request that was bound to fail")

    monkeypatch.setattr(cli_segment, "_predictor", no_model)
    src = nifti(tmp_path)
    for o, words in (("m.xyz", "unsupported mask format"), ("m.png", "cannot be a PNG"), ("m.dcm", "needs a DICOM series")):
        assert main(["segment", str(src), *BOX3D, "-o", str(tmp_path / o)]) == 2
        assert words in capsys.readouterr().err
    assert main(["segment", str(png(tmp_path)), "--box", "1,1,99,5", "-o", str(tmp_path / "m.png")]) == 2
    assert "lies outside" in capsys.readouterr().err
    # volume prompts too (x in 0..23, y in 0..19, z in 0..5)
    for prompt, words in (
        (("--box3d", "2,2,1,30,12,4"), "lies outside"),
        (("--box", "2,2,12,12", "--slice", "9"), "slice 9 is outside"),
        (("--point", "5,5,1", "--point", "6,6,3"), "one slice"),
    ):
        assert main(["segment", str(src), *prompt, "-o", str(tmp_path / "v.nii.gz")]) == 2
        assert words in capsys.readouterr().err
