"""Weights overlays: the file format, applying one to a base model, registry entries built on them, engines."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medsamkit.errors import FileInputError, MissingFileError, OptionError
from medsamkit.models import ARCHS, ModelEntry, WeightsError, availability, get_entry, load, register, resolve_weights
from medsamkit.models.adapted import ADAPTER_FORMAT, arch_to_dict, load_adapted, weights_digest
from medsamkit.models.backends import create_engine
from medsamkit.models.backends.onnx import OnnxEngine, engine_dir
from medsamkit.models.overlay import (
    OVERLAY_FORMAT,
    Overlay,
    apply_overlay,
    combined_sha256,
    overlay_from_adapter,
    overlay_info,
    read_overlay,
    save_overlay,
)
from medsamkit.models.registry import LITEMEDSAM_INTERACTIVE_FILE, LITEMEDSAM_INTERACTIVE_SHA256, unregister
from medsamkit.models.sam import SamModel
from medsamkit.models.weights import PackageFile
from medsamkit.predict import Predictor
from tests.models.test_layouts import SMALL, _random_model

SPEC = SMALL["litemedsam"]
BASE = "tiny-ov-base"
SHA_A = "a" * 64


# ------------------------------------------------------------------------------------------------------ helpers


def perturbed_decoder(
    model: SamModel, seed: int = 0, scale: float = 0.05, keys: str = "mask_decoder."
) -> dict[str, torch.Tensor]:
    """The model's ``keys*`` parameters plus seeded noise (an overlay a test can tell from the base)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith(keys) and v.is_floating_point():
            out[k] = v + scale * torch.randn(v.shape, generator=g)
    return out


def fake_package(root: Path, monkeypatch: pytest.MonkeyPatch, name: str = "medsamkit_test_overlays") -> Path:
    """An importable package folder ``root/name`` on sys.path (where a PackageFile source can point)."""
    pkg = root / name
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))
    return pkg


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("MEDSAMKIT_CACHE", str(d))
    monkeypatch.setenv("MEDSAMKIT_OFFLINE", "1")
    return d


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> Iterator[tuple[Path, SamModel]]:
    """A registered tiny base model ``tiny-ov-base`` shipped in a fake package; yields (package folder, base)."""
    pkg = fake_package(tmp_path / "site", monkeypatch)
    path = pkg / "models" / "base.pth"
    torch.save(_random_model(SPEC, seed=3).state_dict(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    register(ModelEntry(BASE, SPEC, "tiny base", "MIT", "tiny_ov_base.pth", sha, (PackageFile(pkg.name, "models/base.pth"),)))
    try:
        yield pkg, load(BASE)
    finally:
        unregister(BASE)


def overlay_entry(name: str, pkg: Path, sha: str | None, base: str = BASE, arch=SPEC) -> ModelEntry:
    return ModelEntry(
        name,
        arch,
        "test overlay",
        "MIT",
        f"{name}.safetensors",
        sha,
        (PackageFile(pkg.name, f"models/{name}.safetensors"),),
        base=base,
    )


@pytest.fixture
def tiny_overlay(tiny) -> Iterator[tuple[Path, SamModel, Path]]:
    """``tiny-ov`` registered: an overlay of the tiny base's perturbed decoder; yields (package, base, overlay file)."""
    pkg, base = tiny
    path = save_overlay(
        pkg / "models" / "tiny-ov.safetensors",
        perturbed_decoder(base),
        base=BASE,
        base_sha256=base.weights.sha256,
        arch=SPEC.name,
    )
    register(overlay_entry("tiny-ov", pkg, hashlib.sha256(path.read_bytes()).hexdigest()))
    try:
        yield pkg, base, path
    finally:
        unregister("tiny-ov")


def _decode(model: SamModel, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.tensor([[[10.0, 12.0], [40.0, 50.0]], [[30.0, 30.0], [0.0, 0.0]]])
    labels = torch.tensor([[2.0, 3.0], [1.0, -1.0]])
    with torch.inference_mode():
        return model.decode(emb, coords, labels)


# ------------------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("dtype, tag", [(torch.float16, "F16"), (torch.float32, "F32")])
def test_save_read_round_trip(tmp_path: Path, dtype: torch.dtype, tag: str) -> None:
    model = _random_model(SPEC)
    tensors = perturbed_decoder(model)
    tensors["image_encoder.patch_embed.seq.0.bn.num_batches_tracked"] = torch.tensor(7)  # not floating: kept as is
    path = save_overlay(
        tmp_path / "o.safetensors",
        tensors,
        base="tiny",
        base_sha256=SHA_A,
        arch=SPEC.name,
        dtype=dtype,
        metadata={"recipe": "test", "seed": "0"},
    )
    ov = read_overlay(path)
    assert ov.path == path and ov.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert set(ov.tensors) == set(tensors)
    for k, v in tensors.items():
        got = ov.tensors[k]
        assert got.shape == v.shape
        if v.is_floating_point():
            assert got.dtype == dtype and torch.equal(got, v.to(dtype))
        else:
            assert got.dtype == torch.int64 and int(got) == 7
    assert ov.metadata == {
        "format": OVERLAY_FORMAT,
        "base": "tiny",
        "base_sha256": SHA_A,
        "arch": SPEC.name,
        "recipe": "test",
        "seed": "0",
    }
    assert ov.base == "tiny" and ov.base_sha256 == SHA_A and ov.arch == SPEC.name and ov.touches_encoder
    info = overlay_info(path)  # the header alone agrees
    assert info.metadata == ov.metadata and info.shapes == ov.shapes and info.touches_encoder
    assert {info.dtypes[k] for k in tensors if tensors[k].is_floating_point()} == {tag}
    assert not list(tmp_path.glob(".*tmp"))  # atomic write: nothing left beside it
    # the same tensors and metadata give the same bytes (a registry digest stays valid when a file is rewritten)
    again = save_overlay(
        tmp_path / "o2.safetensors", tensors, base="tiny", base_sha256=SHA_A, arch=SPEC.name, dtype=dtype,
        metadata={"seed": "0", "recipe": "test"},
    )  # fmt: skip
    assert again.read_bytes() == path.read_bytes()


def test_fp16_halves_the_file(tmp_path: Path) -> None:
    tensors = perturbed_decoder(_random_model(SPEC))
    kw = {"base": "tiny", "base_sha256": SHA_A, "arch": SPEC.name}
    f16 = save_overlay(tmp_path / "a.safetensors", tensors, **kw).stat().st_size  # default: float16
    f32 = save_overlay(tmp_path / "b.safetensors", tensors, dtype=torch.float32, **kw).stat().st_size
    n = sum(v.numel() for v in tensors.values())
    assert 0 <= (f32 - f16) - 2 * n < 1024  # two bytes less per value; headers differ only in offsets' digits


@pytest.mark.parametrize(
    "change, match",
    [
        ({"dtype": torch.bfloat16}, "float16 or torch.float32"),
        ({"tensors": {}}, "at least one tensor"),
        ({"metadata": {"format": "x"}}, "may not set format"),
        ({"metadata": {"seed": 0}}, "strings to strings; not so for 'seed'"),
        ({"base_sha256": "ABC"}, "'ABC' is not a sha256"),
        ({"base": ""}, "base must be a non-empty string"),
        ({"tensors": {"mask_decoder.x": torch.full((2,), 1e6)}}, "mask_decoder.x: values beyond the range of torch.float16"),
        ({"tensors": {"mask_decoder.x": [1.0]}}, "not so for 'mask_decoder.x'"),
    ],
)
def test_save_refuses_bad_input(tmp_path: Path, change: dict, match: str) -> None:
    kw = {"tensors": {"mask_decoder.x": torch.ones(2)}, "base": "tiny", "base_sha256": SHA_A, "arch": SPEC.name, **change}
    tensors = kw.pop("tensors")
    with pytest.raises(OptionError, match=match):
        save_overlay(tmp_path / "o.safetensors", tensors, **kw)
    assert not list(tmp_path.iterdir())


def _raw_safetensors(path: Path, metadata: dict[str, str] | None, tensors: dict | None = None) -> Path:
    from safetensors.torch import save_file

    save_file(tensors if tensors is not None else {"mask_decoder.x": torch.ones(2)}, str(path), metadata=metadata)
    return path


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    good = {"format": OVERLAY_FORMAT, "base": "tiny", "base_sha256": SHA_A, "arch": SPEC.name}
    cases: list[tuple[Path, type[Exception], str]] = [
        (tmp_path / "absent.safetensors", MissingFileError, "overlay file not found"),
        (tmp_path, MissingFileError, "it is a folder"),
    ]
    text = tmp_path / "text.safetensors"
    text.write_text("not a tensor file at all")
    cases.append((text, FileInputError, "is not a safetensors file"))
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    cases.append((short, FileInputError, r"not a safetensors file \(only 2 bytes\)"))
    pth = tmp_path / "model.pth"
    torch.save({"mask_decoder.x": torch.ones(2)}, pth)
    cases.append((pth, FileInputError, "is not a safetensors file"))
    full = _raw_safetensors(tmp_path / "full.safetensors", good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[:-3])
    cases.append((cut, FileInputError, "truncated or padded"))
    cases.append((_raw_safetensors(tmp_path / "plain.safetensors", None), FileInputError, "it has no format tag"))
    wrong = _raw_safetensors(tmp_path / "wrong.safetensors", {**good, "format": "medsamkit.overlay/0"})
    cases.append((wrong, FileInputError, "it has format 'medsamkit.overlay/0'"))
    lacking = {k: v for k, v in good.items() if k not in ("base_sha256", "arch")}
    cases.append((_raw_safetensors(tmp_path / "lacking.safetensors", lacking), FileInputError, "lacks base_sha256, arch"))
    bad_sha = _raw_safetensors(tmp_path / "badsha.safetensors", {**good, "base_sha256": "xyz"})
    cases.append((bad_sha, FileInputError, "base_sha256 'xyz' is not a sha256"))
    cases.append((_raw_safetensors(tmp_path / "empty.safetensors", good, {}), FileInputError, "holds no tensors"))
    for path, cls, match in cases:
        for reader in (read_overlay, overlay_info):
            with pytest.raises(cls, match=match) as e:
                reader(path)
            assert str(path) in str(e.value), (reader.__name__, str(e.value))
    assert read_overlay(_raw_safetensors(tmp_path / "ok.safetensors", good)).base == "tiny"  # the control case reads


# ------------------------------------------------------------------------------------------------------ applying


def test_apply_changes_the_decoder_and_only_the_overlaid_keys(tmp_path: Path, tiny) -> None:
    _, base = tiny
    before = {k: v.clone() for k, v in base.state_dict().items()}
    emb = torch.randn(1, 256, SPEC.embed_grid, SPEC.embed_grid, generator=torch.Generator().manual_seed(1))
    logits0, iou0 = _decode(base, emb)
    tensors = {k: v for k, v in perturbed_decoder(base).items() if ".output_hypernetworks_mlps." in k or "iou_prediction" in k}
    path = save_overlay(tmp_path / "dec.safetensors", tensors, base=BASE, base_sha256=base.weights.sha256, arch=SPEC.name)
    out = apply_overlay(base, path)
    assert out is base  # in place
    after = base.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == set(tensors)
    for k, v in tensors.items():
        assert after[k].dtype == torch.float32 and torch.equal(after[k], v.half().float())  # fp16 file, fp32 model
    logits1, iou1 = _decode(base, emb)
    assert (logits1 - logits0).abs().max() > 1e-2 and (iou1 - iou0).abs().max() > 1e-3
    ov_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    ref = base.weights
    assert ref.name == f"{BASE}+dec" and ref.path == path and ref.arch == SPEC
    assert ref.sha256 == combined_sha256(ref.base.sha256, ov_sha) != ref.base.sha256
    assert ref.encoder_id == ref.base.sha256 == get_entry(BASE).sha256  # the encoder is the base's
    with pytest.raises(WeightsError, match="not for the model's weights"):
        apply_overlay(base, path)  # already applied: the model is no longer the base


def test_an_overlay_of_encoder_weights_has_its_own_encoder_identity(tmp_path: Path, tiny) -> None:
    _, base = tiny
    tensors = perturbed_decoder(base, keys="image_encoder.neck")
    path = save_overlay(tmp_path / "enc.safetensors", tensors, base=BASE, base_sha256=base.weights.sha256, arch=SPEC.name)
    apply_overlay(base, path, name="enc")
    assert base.weights.name == "enc" and base.weights.encoder_id == base.weights.sha256 != base.weights.base.sha256


def test_apply_refuses_what_does_not_fit_and_changes_nothing(tmp_path: Path, tiny) -> None:
    _, base = tiny
    before = {k: v.clone() for k, v in base.state_dict().items()}
    sha = base.weights.sha256
    kw = {"base": BASE, "base_sha256": sha, "arch": SPEC.name}
    bad = {
        "mask_decoder.iou_token.weight": torch.zeros(1, 256),  # fits
        "mask_decoder.bogus.weight": torch.zeros(3),
        "prompt_encoder.extra": torch.zeros(1),
        "mask_decoder.mask_tokens.weight": torch.zeros(5, 256),
    }
    cases = [
        (
            save_overlay(tmp_path / "keys.safetensors", bad, **kw),
            "unknown keys \\(2\\): mask_decoder.bogus.weight, prompt_encoder.extra",
        ),
        (tmp_path / "keys.safetensors", "mask_decoder.mask_tokens.weight: overlay \\(5, 256\\) vs model \\(4, 256\\)"),
        (
            save_overlay(
                tmp_path / "other.safetensors",
                {"mask_decoder.iou_token.weight": torch.zeros(1, 256)},
                **{**kw, "base_sha256": SHA_A},
            ),
            f"is an overlay for {BASE} \\(weights sha256 aaaaaaaaaaaa...\\), "
            f"not for the model's weights {BASE} \\(sha256 {sha[:12]}",
        ),
        (
            save_overlay(
                tmp_path / "arch.safetensors",
                {"mask_decoder.iou_token.weight": torch.zeros(1, 256)},
                **{**kw, "arch": "litemedsam"},
            ),
            "overlay for the litemedsam architecture, not small_lite",
        ),
    ]
    for path, match in cases:
        with pytest.raises(WeightsError, match=match) as e:
            apply_overlay(base, path)
        assert str(path) in str(e.value)
    after = base.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before) and base.weights.sha256 == sha
    bare = _random_model(SPEC)  # built here: no weights identity
    with pytest.raises(WeightsError, match="carries no weights identity"):
        apply_overlay(bare, cases[2][0])
    # an Overlay built in memory is named as such
    mem = Overlay({"mask_decoder.nope": torch.zeros(1)}, {"base": BASE, "base_sha256": sha, "arch": SPEC.name}, "0" * 64)
    with pytest.raises(
        WeightsError, match="the overlay does not fit the small_lite model; unknown keys \\(1\\): mask_decoder.nope"
    ):
        apply_overlay(base, mem)


# ------------------------------------------------------------------------------------------------------ adapters


def _adapter(path: Path, base: SamModel, mode: str = "decoder", weights_sha: bool = True, digest: str | None = None) -> Path:
    trained = {k: v for k, v in perturbed_decoder(base, seed=5).items()}
    doc = {
        "format": ADAPTER_FORMAT,
        "mode": mode,
        "base": {
            "model": BASE,
            "checkpoint": None,
            "arch": arch_to_dict(base.spec),
            "digest": digest or weights_digest(base),
            "weights_sha256": base.weights.sha256 if weights_sha else None,
        },
        "structure": {},
        "options": {"mode": mode, "epochs": 2},
        "sam": trained,
        "generator": None,
        "epoch": 1,
        "val_dice": 0.5,
        "parameters": {},
    }
    torch.save(doc, path)
    return path


@pytest.mark.parametrize("weights_sha", [True, False])  # False: a file written before the weight digest was recorded
def test_overlay_from_adapter_equals_the_adapted_model(tmp_path: Path, tiny, weights_sha: bool) -> None:
    _, base = tiny
    adapter = _adapter(tmp_path / "adapter.pt", base, weights_sha=weights_sha)
    out = overlay_from_adapter(adapter, tmp_path / "o.safetensors", metadata={"recipe": "unit test"}, dtype=torch.float32)
    ov = read_overlay(out)
    assert ov.base == BASE and ov.base_sha256 == base.weights.sha256 and ov.arch == SPEC.name
    assert ov.metadata["mode"] == "decoder" and ov.metadata["epoch"] == "1" and ov.metadata["recipe"] == "unit test"
    assert json.loads(ov.metadata["options"]) == {"epochs": 2, "mode": "decoder"}
    assert ov.metadata["adapter_sha256"] == hashlib.sha256(adapter.read_bytes()).hexdigest()
    assert all(t.dtype == torch.float32 for t in ov.tensors.values())
    adapted = load_adapted(adapter, prompted=True)
    overlaid = apply_overlay(load(BASE), out)
    emb = torch.randn(1, 256, SPEC.embed_grid, SPEC.embed_grid, generator=torch.Generator().manual_seed(2))
    assert torch.equal(_decode(adapted, emb)[0], _decode(overlaid, emb)[0])
    assert not torch.equal(_decode(base, emb)[0], _decode(overlaid, emb)[0])
    assert (
        read_overlay(overlay_from_adapter(tmp_path, tmp_path / "f16.safetensors")).tensors["mask_decoder.iou_token.weight"].dtype
        == torch.float16
    )  # a run folder works too; float16 by default


def test_overlay_from_adapter_refusals(tmp_path: Path, tiny) -> None:
    _, base = tiny
    with pytest.raises(OptionError, match="a 'lora' run cannot become an overlay"):
        overlay_from_adapter(_adapter(tmp_path / "lora.pt", base, mode="lora"), tmp_path / "x.safetensors")
    empty = tmp_path / "empty.pt"
    torch.save({**torch.load(_adapter(empty, base), weights_only=True), "sam": {}}, empty)
    with pytest.raises(FileInputError, match="holds no trained parameters"):
        overlay_from_adapter(empty, tmp_path / "x.safetensors")
    other = _adapter(tmp_path / "other.pt", base, weights_sha=False, digest="f" * 64)
    with pytest.raises(OptionError, match="was trained on other base weights"):
        overlay_from_adapter(other, tmp_path / "x.safetensors")
    with pytest.raises(MissingFileError, match="adapter file not found"):
        overlay_from_adapter(tmp_path / "none.pt", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


# ------------------------------------------------------------------------------------------------------ registry


def test_shipped_interactive_entry() -> None:
    """litemedsam-interactive: an overlay on litemedsam shipped inside the package, pinned by its sha256, under
    8 MB, touching the decoder only; a file whose bytes differ is refused."""
    e = get_entry("litemedsam-interactive")
    assert e.base == "litemedsam" and e.arch == ARCHS["litemedsam"] and e.license == "Apache-2.0"
    assert e.sources == (LITEMEDSAM_INTERACTIVE_FILE,) and e.sha256 == LITEMEDSAM_INTERACTIVE_SHA256
    shipped = LITEMEDSAM_INTERACTIVE_FILE.locate()
    assert shipped is not None, f"the shipped decoder is missing: {LITEMEDSAM_INTERACTIVE_FILE.expected()}"
    assert e.sha256 is not None and hashlib.sha256(shipped.read_bytes()).hexdigest() == e.sha256
    ok, where = availability(e)
    assert ok and "overlay on litemedsam" in where
    info = overlay_info(shipped)
    assert info.base_sha256 == get_entry("litemedsam").sha256 and not info.touches_encoder
    assert shipped.stat().st_size <= 8_000_000
    model = load("litemedsam-interactive")
    assert model.weights.name == "litemedsam-interactive" and model.weights.encoder_id == get_entry("litemedsam").sha256


def test_registered_overlay_model(tiny) -> None:
    pkg, base = tiny
    file = pkg / "models" / "tiny-ov.safetensors"
    register(overlay_entry("tiny-ov", pkg, None))
    try:
        ok, where = availability(get_entry("tiny-ov"))
        assert not ok and where == f"missing file {file}"
        with pytest.raises(WeightsError, match=f"'tiny-ov' are not available on this machine; missing file {file}"):
            load("tiny-ov")
        save_overlay(file, perturbed_decoder(base), base=BASE, base_sha256=base.weights.sha256, arch=SPEC.name)
        sha = hashlib.sha256(file.read_bytes()).hexdigest()
        assert availability(get_entry("tiny-ov")) == (True, f"{file} (overlay on {BASE})")
        assert resolve_weights("tiny-ov") == file
        m = load("tiny-ov")
        ref = m.weights
        assert ref.name == "tiny-ov" and ref.path == file and ref.base is not None and ref.base.name == BASE
        assert ref.sha256 == combined_sha256(base.weights.sha256, sha) and ref.encoder_id == base.weights.sha256
        sd, sd0 = m.state_dict(), base.state_dict()
        assert all(torch.equal(sd[k], sd0[k]) for k in sd if not k.startswith("mask_decoder."))
        assert not torch.equal(sd["mask_decoder.iou_token.weight"], sd0["mask_decoder.iou_token.weight"])
        register(overlay_entry("tiny-ov", pkg, sha), overwrite=True)  # pinned digest: same model
        assert load("tiny-ov").weights.sha256 == ref.sha256
        register(overlay_entry("tiny-ov", pkg, "0" * 64), overwrite=True)
        with pytest.raises(WeightsError, match="fails its checksum"):
            load("tiny-ov")
        save_overlay(file, perturbed_decoder(base), base="elsewhere", base_sha256=SHA_A, arch=SPEC.name)
        register(overlay_entry("tiny-ov", pkg, None), overwrite=True)
        with pytest.raises(WeightsError, match=f"{file} of tiny-ov was made for elsewhere .*not for the registered base {BASE}"):
            load("tiny-ov")
        with pytest.raises(WeightsError, match="its architecture is small_lite, not litemedsam"):
            load("tiny-ov", arch="litemedsam")
    finally:
        unregister("tiny-ov")


def test_overlay_unavailable_without_its_base(tiny_overlay, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg, _, _ = tiny_overlay
    (pkg / "models" / "base.pth").rename(pkg / "models" / "gone.pth")
    ok, where = availability(get_entry("tiny-ov"))
    assert not ok and f"its base {BASE} is missing" in where
    with pytest.raises(WeightsError, match=f"weights for '{BASE}' are not available"):
        resolve_weights("tiny-ov")


def test_register_checks_the_base() -> None:
    entry = replace(get_entry("litemedsam-interactive"), name="x-ov")
    with pytest.raises(OptionError, match="its base 'nope' is not a registered model"):
        register(replace(entry, base="nope"))
    with pytest.raises(OptionError, match="its base 'x-ov' is not a registered model"):
        register(replace(entry, base="x-ov"))
    with pytest.raises(OptionError, match="must have its base's architecture \\(litemedsam\\), not sam_vit_b"):
        register(replace(entry, arch=ARCHS["sam_vit_b"]))
    with pytest.raises(WeightsError, match="unknown model 'x-ov'"):
        get_entry("x-ov")


# ------------------------------------------------------------------------------------------------------ engines


def test_onnx_and_torch_engines_run_the_overlay_decoder(tiny_overlay) -> None:
    _, base, path = tiny_overlay
    ref = load("tiny-ov").weights
    engines = [create_engine("tiny-ov", backend=b, threads=1) for b in ("onnxruntime", "torch")]
    ort, tch = engines
    assert isinstance(ort, OnnxEngine) and ort.folder == engine_dir(SPEC, ref.sha256)  # keyed by base + overlay
    base_eng = create_engine(BASE, backend="torch", threads=1)
    for e in engines:
        assert e.weights_id == ref.sha256 and e.encoder_id == base.weights.sha256 == base_eng.weights_id
    # an in-memory overlay model keeps the base's encoder identity on ONNX Runtime too
    assert OnnxEngine.from_module(load("tiny-ov")).encoder_id == base.weights.sha256
    assert OnnxEngine.from_module(base).encoder_id == OnnxEngine.from_module(base).weights_id  # ordinary: unchanged
    img = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    preds = [Predictor(engine=e) for e in (*engines, base_eng)]
    prompt = {"boxes": [[5, 8, 40, 30]], "point_coords": [[[20, 20], [35, 10]]], "point_labels": [[1, 0]]}
    outs = []
    for p in preds:
        p.set_image(img)
        outs.append(p.predict(**prompt, return_logits=True))
    emb = [p.get_image_embedding() for p in preds]
    assert np.abs(emb[0] - emb[2]).max() < 1e-4 and np.array_equal(emb[1], emb[2])  # the base's embedding
    o_ort, o_tch, o_base = outs
    assert o_ort.logits is not None and o_tch.logits is not None
    assert np.abs(o_ort.low_res_logits - o_tch.low_res_logits).max() < 1e-4  # the repo's ONNX parity tolerance
    assert np.abs(o_ort.scores - o_tch.scores).max() < 1e-4
    sure = np.abs(o_tch.logits) > 1e-3  # masks agree wherever the logit is not within rounding of 0
    assert sure.mean() > 0.99 and np.array_equal(o_ort.masks[sure], o_tch.masks[sure])
    assert np.abs(o_tch.low_res_logits - o_base.low_res_logits).max() > 1e-2  # the overlay's decoder, not the base's
    # the mask prompt goes through the overlay decoder on both backends alike
    mask_in = o_tch.low_res_logits[:, 0]
    r_ort, r_tch, r_base = (p.predict(**prompt, mask_input=mask_in) for p in preds)
    assert np.abs(r_ort.low_res_logits - r_tch.low_res_logits).max() < 1e-4
    assert np.abs(r_tch.low_res_logits - o_tch.low_res_logits).max() > 1e-3
    assert np.abs(r_tch.low_res_logits - r_base.low_res_logits).max() > 1e-2
