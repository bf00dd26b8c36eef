"""Fine-tuning modes on a tiny random SAM model (TinyViT, 64 px input) and synthetic disks: what trains, what stays
frozen, the trained-parameters file, prompts, cached embeddings, resume, 3D slices and evaluation."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medsamkit.data import load_dataset, read_split
from medsamkit.models import resolve_weights
from medsamkit.preprocess.transforms import transform_for
from medsamkit.train.finetune import (
    FinetuneDataset,
    FinetuneModel,
    FinetuneOptions,
    ImageRecord,
    build_model,
    evaluate_finetune,
    finetune,
    load_adapted,
    read_adapter,
    read_images,
    save_adapter,
    summarize_rows,
    to_model_frame,
    weights_digest,
)
from medsamkit.train.loop import TrainConfig
from tests.models.test_layouts import SMALL, _random_model
from tests.train.synth import make_dataset

MODES = ("decoder", "full", "adapter", "lora", "autosam")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    return make_dataset(root, n=6, size=(64, 64))[0]


def tiny_base():
    return _random_model(SMALL["litemedsam"])  # TinyViT, 64 x 64 input, 16 x 16 embedding grid


def _config(**kw) -> TrainConfig:
    settings = {"epochs": 1, "batch_size": 2, "lr": 1e-2, "weight_decay": 0.01, "device": "cpu"}
    settings.update(kw)
    return TrainConfig(**settings)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _batch(ds: FinetuneDataset, n: int = 2) -> dict[str, torch.Tensor]:
    items = [ds[i] for i in range(min(n, len(ds)))]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@pytest.mark.parametrize("mode", MODES)
def test_mode_trains_only_its_parameters_and_the_file_reproduces_it(mode: str, data, tmp_path) -> None:
    base = tiny_base()
    before = _state(base)
    extra = {"encode_backend": "torch"}  # (ONNX Runtime would export the random model first)
    if mode == "decoder":
        extra["cache_embeddings"] = str(tmp_path / "cache")
    res = finetune(data, tmp_path / "run", mode, model=base, config=_config(), progress=False, **extra)
    assert _state(base).keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in _state(base).items())
    trained = res.model
    assert trained is not None and trained.mode == mode
    names = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert res.parameters["trainable"] == sum(p.numel() for p in trained.parameters() if p.requires_grad) > 0
    after = _state(trained.sam)
    changed = {k for k in before if k in after and not torch.equal(after[k], before[k])}
    # the frozen base (incl. BatchNorm statistics) is bit for bit the same; the mode's parameters moved
    sam_trainable = {n[len("sam.") :] for n in names if n.startswith("sam.")}
    assert changed <= sam_trainable, sorted(changed - sam_trainable)[:5]
    expect = {
        "decoder": lambda n: n.startswith("sam.mask_decoder.") and "iou_prediction_head" not in n,
        "full": lambda n: n.startswith(("sam.mask_decoder.", "sam.image_encoder.")),
        "adapter": lambda n: ".adapter_attn." in n or ".adapter_mlp." in n,
        "lora": lambda n: n.endswith((".lora_a", ".lora_b")),
        "autosam": lambda n: n.startswith("generator."),
    }[mode]
    assert all(expect(n) for n in names), [n for n in names if not expect(n)][:5]
    if mode in ("decoder", "full"):
        assert changed, "no base parameter changed"
        assert not any("iou_prediction_head" in n or "output_hypernetworks_mlps.1." in n for n in names)
    else:
        assert not changed  # adapter, lora, autosam: the whole base stays frozen
    if mode in ("adapter", "lora", "autosam"):  # the new parameters moved away from their initialisation
        torch.manual_seed(0)  # finetune seeds the initialisation with config.seed (0)
        init = _state(build_model(copy.deepcopy(base), FinetuneOptions(mode=mode)))
        now = _state(trained)
        new_keys = [k for k in now if k.startswith("generator.") or "lora_" in k or ".adapter_" in k]
        # (the random tiny encoder all but stops gradients before its first blocks: not every tensor moves)
        assert new_keys and sum(not torch.equal(now[k], init[k]) for k in new_keys) >= 0.5 * len(new_keys)

    # the file holds only the trained parameters and rebuilds the trained model exactly on the base
    doc = read_adapter(tmp_path / "run")
    assert doc["mode"] == mode and doc["base"]["digest"] == weights_digest(base)
    assert set(doc["sam"]) == {n[len("sam.") :] for n in names if n.startswith("sam.")}
    loaded = load_adapted(tmp_path / "run", base, merge=False)
    opts = FinetuneOptions(mode=mode)
    images = read_images(load_dataset(data).subset(res.split.train).cases, opts)
    batch = _batch(FinetuneDataset(images, transform_for("litemedsam", 64), 64, opts, train=False))
    with torch.no_grad():
        ref = trained(batch)
        out = loaded(batch["image"]) if mode == "autosam" else FinetuneModel(loaded, mode).eval()(batch)
    assert torch.equal(out, ref)
    if mode in ("decoder", "autosam"):  # test-split scores at the original resolution, against zero-shot box prompts
        rows = evaluate_finetune(tmp_path / "run", base=base)
        test_ids = read_split(tmp_path / "run" / "split.json").test
        assert [r["case"] for r in rows] == test_ids and all(0 <= r["dice"] <= 1 and 0 <= r["zero_shot_dice"] <= 1 for r in rows)
        assert (rows[0]["label"] == -1) == (mode == "autosam")  # AutoSAM: the union of the labels, no prompt
        assert summarize_rows(rows)["dice"]["n"] == len(rows)
        with pytest.raises(ValueError, match="in-memory"):
            load_adapted(tmp_path / "run")  # the base of an in-memory run must be given


def test_adapter_file_is_small_for_litemedsam(litemedsam_model, tmp_path) -> None:
    """The acceptance bound: adapter (and LoRA) files < 10 % of lite_medsam.pth; they load on the named base."""
    base_bytes = resolve_weights("litemedsam").stat().st_size
    info = {"model": "litemedsam", "checkpoint": None, "digest": weights_digest(litemedsam_model)}
    from medsamkit.train.finetune import arch_to_dict

    info["arch"] = arch_to_dict(litemedsam_model.spec)
    sizes = {}
    for mode in ("adapter", "lora"):
        opts = FinetuneOptions(mode=mode)
        net = build_model(copy.deepcopy(litemedsam_model), opts)
        path = save_adapter(tmp_path / f"{mode}.pt", net, opts, info)
        sizes[mode] = path.stat().st_size
        loaded = load_adapted(path)
        assert loaded.spec.name == f"litemedsam+{mode}" and loaded.weights.name == f"litemedsam+{mode}"
    assert sizes["adapter"] < 0.1 * base_bytes and sizes["lora"] < 0.02 * base_bytes


def test_prompts_targets_and_model_frame(data) -> None:
    from medsamkit.preprocess.transforms import Geometry
    from medsamkit.prompts import mask_box

    m = np.zeros((30, 60), bool)
    m[10:20, 40:50] = True
    geom = Geometry((30, 60), (128, 256), 256, (256 / 60, 256 / 60))
    t = to_model_frame(m, geom)
    assert t.shape == (256, 256) and t[128:].sum() == 0 and t.any()
    opts = FinetuneOptions(mode="decoder", bbox_shift=3, num_points=4)
    images = read_images(load_dataset(data).cases, opts)
    tf = transform_for("litemedsam", 64)
    train = FinetuneDataset(images, tf, 64, opts, train=True, seed=3)
    val = FinetuneDataset(images, tf, 64, opts, train=False, seed=3)
    assert len(train) == len(val) == 6
    for i in range(len(train)):
        a, b = train[i], val[i]
        tight = mask_box(b["target"][0].numpy() > 0)
        assert np.array_equal(b["box"].numpy(), tight)  # validation: the tight box
        x0, y0, x1, y1 = a["box"].numpy()
        assert a["image"].shape == (3, 64, 64) and a["target"].shape == (1, 64, 64)
        box_a = mask_box(a["target"][0].numpy() > 0)
        assert x0 <= box_a[0] and y0 <= box_a[1] and x1 >= box_a[2] and y1 >= box_a[3]  # jitter moves sides outwards
        assert max(box_a[0] - x0, box_a[1] - y0, x1 - box_a[2], y1 - box_a[3]) <= 3
        pts = a["points"].numpy().astype(int)
        assert pts.shape == (4, 2) and a["target"][0].numpy()[pts[:, 1], pts[:, 0]].all()
    # the same (seed, epoch, item) draws the same sample; another epoch draws another augmentation
    assert torch.equal(train[0]["image"], train[0]["image"])
    train.set_epoch(1)
    assert any(not torch.equal(train[i]["image"], val[i]["image"]) for i in range(len(train)))


def test_objects_components_and_volume_slices(tmp_path) -> None:
    import nibabel as nib
    from PIL import Image

    root = tmp_path / "vol"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    z, y, x = np.mgrid[0:10, 0:32, 0:32]
    for i in range(2):
        vol = (np.random.default_rng(i).normal(100, 10, (10, 32, 32))).astype(np.float32)
        lab = (((z - 5) ** 2 + (y - 16) ** 2 + (x - 16) ** 2) <= 9 + i).astype(np.uint8)
        vol[lab > 0] += 200
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), affine), root / "images" / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab.transpose(2, 1, 0), affine), root / "masks" / f"v{i}.nii.gz")
    ds = load_dataset(root)
    recs = read_images(ds.cases, FinetuneOptions(mode="decoder"))
    assert {r.case for r in recs} == {"v0", "v1"} and all("@" in r.id and r.slice >= 0 for r in recs)
    assert all(r.picture.dtype == np.uint8 and r.picture.shape == (32, 32) for r in recs)
    limited = read_images(ds.cases, FinetuneOptions(mode="decoder", slices_per_case=2))
    assert len(limited) == 4
    # two disks in one 2D mask: one object per label, two per component (small ones dropped by min_pixels)
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    (flat / "masks").mkdir()
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:15] = 1
    mask[25:35, 20:30] = 1
    mask[0, 39] = 1
    Image.fromarray((mask * 200 + 20).astype(np.uint8)).save(flat / "images" / "a.png")
    Image.fromarray(mask).save(flat / "masks" / "a.png")
    cases = load_dataset(flat).cases
    (one,) = read_images(cases, FinetuneOptions(mode="decoder"))
    (comp,) = read_images(cases, FinetuneOptions(mode="decoder", objects="component", min_pixels=5))
    assert len(one.object_ids) == 1 and len(comp.object_ids) == 2
    assert isinstance(comp, ImageRecord) and comp.object_mask(0).sum() == 100


def test_cached_embeddings_are_content_keyed_and_runs_reproducible(data, tmp_path) -> None:
    base = tiny_base()
    cache = tmp_path / "cache"
    kw = {"cache_embeddings": str(cache), "encode_backend": "torch"}
    finetune(data, tmp_path / "a", "autosam", model=base, config=_config(), progress=False, **kw)
    files = sorted(cache.glob("*.npz"))
    assert len(files) == 5  # train + val pictures, one file each
    mtimes = [f.stat().st_mtime_ns for f in files]
    finetune(data, tmp_path / "b", "autosam", model=base, config=_config(), progress=False, **kw)
    assert sorted(cache.glob("*.npz")) == files and [f.stat().st_mtime_ns for f in files] == mtimes  # nothing re-encoded
    a, b = read_adapter(tmp_path / "a"), read_adapter(tmp_path / "b")
    assert all(torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])  # same seed, same weights


def test_resume_equals_uninterrupted(data, tmp_path) -> None:
    base = tiny_base()
    cfg = {"schedule": "constant"}  # the learning rate does not depend on the number of epochs planned
    full = finetune(data, tmp_path / "full", "adapter", model=base, config=_config(epochs=2, **cfg), progress=False)
    finetune(data, tmp_path / "cut", "adapter", model=base, config=_config(epochs=1, **cfg), progress=False)
    resumed = finetune(
        data, tmp_path / "cut", "adapter", model=base, config=_config(epochs=2, **cfg), resume=True, progress=False
    )
    assert resumed.fit.resumed_from == 1 and full.fit.epochs == resumed.fit.epochs == 2
    a, b = read_adapter(tmp_path / "full"), read_adapter(tmp_path / "cut")
    assert a["sam"].keys() == b["sam"].keys() and all(torch.equal(a["sam"][k], b["sam"][k]) for k in a["sam"])
    with pytest.raises(ValueError, match="options differ"):
        finetune(
            data,
            tmp_path / "cut",
            "adapter",
            model=base,
            config=_config(epochs=3),
            resume=True,
            progress=False,
            adapter_ratio=0.5,
        )


def test_option_errors(data, tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        FinetuneOptions(mode="prefix")
    with pytest.raises(ValueError, match="frozen image encoder"):
        FinetuneOptions(mode="adapter", cache_embeddings=str(tmp_path))
    with pytest.raises(ValueError, match="multiple of 16"):
        FinetuneOptions(size=100)
    with pytest.raises(ValueError, match="rank"):
        FinetuneOptions(mode="lora", lora_rank=0)
    with pytest.raises(ValueError, match="fold must be below folds"):
        FinetuneOptions(folds=3, fold=3)
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        FinetuneOptions(folds=1)
    with pytest.raises(ValueError, match="fold needs folds"):
        FinetuneOptions(fold=1)
    with pytest.raises(ValueError, match="only TinyViT"):
        finetune(data, tmp_path / "r", "decoder", model=_random_model(SMALL["sam"]), size=128, config=_config(), progress=False)
    with pytest.raises(FileNotFoundError, match="adapter file not found"):
        read_adapter(tmp_path)


def test_ddp_two_cpu_processes_end_with_identical_weights(data, tmp_path) -> None:
    """torchrun, two CPU processes, gloo: DDP averages the gradients, so both ranks hold the same weights after
    training; the frozen base is untouched and rank 0 alone writes the run's files."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(repo / "tests" / "train" / "ddp_worker.py"), str(data), str(tmp_path), "adapter"]
    proc = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)["state"]
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)["state"]
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    base = _state(tiny_base())  # the workers build the same random base
    assert all(torch.equal(r0[f"sam.{k}"], v) for k, v in base.items())
    adapters = [k for k in r0 if ".adapter_" in k and k.endswith("up.weight")]
    assert adapters and any(torch.count_nonzero(r0[k]) for k in adapters)  # zero-initialised, then trained
    doc = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert doc["world_size"] == 2 and doc["items"]["train"] == 6
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 3


def test_evaluation_scores_the_trained_objects_through_the_runner(tmp_path) -> None:
    """Components of a run trained on components, numbered per image; Dice of the run's single-mask output for each
    object's tight box against the object, zero-shot the base model's for the same box; the files of the table."""
    import csv

    from PIL import Image

    from medsamkit.metrics import dice, iou
    from medsamkit.predict import Predictor
    from medsamkit.prompts import mask_box
    from medsamkit.train.finetune import RESULT_COLUMNS, write_evaluation

    root = tmp_path / "parts"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(5):
        mask = np.zeros((64, 64), np.uint8)
        mask[30 + i : 44 + i, 6:20] = 1  # second in raster order
        mask[6:18, 40 + i : 54 + i] = 1  # first
        mask[48:60, 36:52] = 2
        mask[0, 63] = 1  # a speck below min_pixels
        Image.fromarray(np.where(mask > 0, 190 + 20 * (mask == 2), 40).astype(np.uint8)).save(root / "images" / f"p{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"p{i}.png")
    base = tiny_base()
    run = tmp_path / "run"
    opts = {"encode_backend": "torch", "objects": "component", "min_pixels": 5}
    finetune(root, run, "decoder", model=base, config=_config(), progress=False, **opts)
    rows = evaluate_finetune(run, split="all", base=base)
    assert [r["case"] for r in rows] == [f"p{i}" for i in range(5) for _ in range(3)]
    assert [(r["object"], r["label"], r["pixels"]) for r in rows[:3]] == [(1, 1, 12 * 14), (2, 1, 14 * 14), (3, 2, 12 * 16)]
    assert all(r["image"] == r["case"] and r["slice"] == -1 for r in rows)
    mine = Predictor(load_adapted(run, base), backend="torch")
    theirs = Predictor(copy.deepcopy(base), backend="torch")
    picture = np.asarray(Image.open(root / "images" / "p0.png"))
    labels = np.asarray(Image.open(root / "masks" / "p0.png"))
    mine.set_image(picture)
    theirs.set_image(picture)
    first = np.zeros_like(labels, bool)
    first[6:18, 40:54] = True
    for p, key in ((mine, "dice"), (theirs, "zero_shot_dice")):
        pred = p.predict(boxes=mask_box(first)).masks[0, 0]
        assert rows[0][key] == dice(pred, first)
    assert rows[0]["iou"] == iou(mine.predict(boxes=mask_box(first)).masks[0, 0], first)
    summary = write_evaluation(run, rows, "all")
    with open(run / "all.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == list(RESULT_COLUMNS) and len(table) == len(rows) + 1
    assert table[1][:6] == ["p0", "p0", "-1", "1", "1", "168"] and table[1][6] == f"{rows[0]['dice']:.6f}"
    assert json.loads((run / "all.json").read_text()) == {"split": "all", "objects": len(rows), **summary}
    with pytest.raises(ValueError, match="unknown split"):
        evaluate_finetune(run, split="holdout", base=base)
