"""MONAI U-Nets trained on raw / SAMAug / both inputs: learning, the trained run predicting on the original grid
and as a test-time ensemble, evaluation, errors (the networks are tested in tests/models/test_unet.py, inference
conventions in tests/predict/test_unet.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medsamkit.cli.main import build_parser
from medsamkit.io import read_image
from medsamkit.models.unet import load_unet
from medsamkit.predict.unet import predict_unet
from medsamkit.train import TrainConfig, read_metrics, read_split
from medsamkit.train.unet import LOSSES, evaluate_unet, mean_dice, train_unet, unet_loss
from tests.conftest import dice, disk_image
from tests.train.synth import make_dataset


@pytest.fixture(scope="module")
def raw_run(tmp_path_factory):
    """The default U-Net trained 6 epochs on 10 easy synthetic cases (16 cases: 10 train, 3 val, 3 test)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("raw")
    data, samaug = make_dataset(root, n=16, mode="add")
    config = TrainConfig(epochs=6, batch_size=4, lr=1e-2, seed=0)
    res = train_unet(data, root / "run", "raw", size=64, config=config, progress=False)
    return data, samaug, root / "run", res


@pytest.fixture(scope="module")
def both_run(tmp_path_factory):
    """A small U-Net trained 2 epochs on both raw and stacked SAMAug inputs (grey images: 3 channels)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("both")
    data, samaug = make_dataset(root, n=10, mode="stack", seed=1)
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2, seed=0)
    net = {"channels": (8, 16, 32), "strides": (2, 2)}
    res = train_unet(data, root / "run", "both", samaug, size=32, config=config, network=net, progress=False)
    return data, samaug, root / "run", res


def test_raw_unet_learns_the_easy_set(raw_run) -> None:
    data, _, run, res = raw_run
    assert res.epochs == 6 and res.stop_reason == "completed"
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, 7))
    # measured with seeds 0, 1, 2: best val Dice 0.954 / 0.924 / 0.931, test Dice 0.953 / 0.831 / 0.877;
    # chance (everything foreground) is ~0.17 on these disks
    assert res.best_metric > 0.85
    rows = evaluate_unet(run, split="test")
    split = read_split(run / "split.json")
    assert [r["case"] for r in rows] == split.test and len(rows) == 3
    assert all(r["views"] == "raw" and r["height"] == 64 and 0 <= r["dice"] <= 1 for r in rows)
    assert mean_dice(rows) > 0.75
    meta = json.loads((run / "config.json").read_text())["meta"]
    assert meta["input"]["kind"] == "raw" and meta["network"]["in_channels"] == 1
    assert meta["cases"] == {"train": 10, "val": 3, "test": 3} and meta["train_items"] == 10
    # resuming a finished run trains nothing and keeps the split
    again = train_unet(
        data, run, "raw", size=64, config=TrainConfig(epochs=6, batch_size=4, lr=1e-2, seed=0), resume=True, progress=False
    )
    assert again.resumed_from == 6 and again.epochs == 6 and read_split(run / "split.json") == split


def test_predict_on_the_original_grid(raw_run, tmp_path) -> None:
    _, _, run, _ = raw_run
    model = load_unet(run)
    img, disk = disk_image(48, 80, 45, 22, 11, seed=5)
    prob = predict_unet(model, img)
    assert prob.shape == (48, 80) and prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
    assert dice(prob > 0.5, disk) > 0.7
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    np.testing.assert_array_equal(predict_unet(run, read_image(path)), prob)  # run folder + MedicalImage
    rgb = np.repeat(img[..., None], 3, axis=2)
    with pytest.raises(ValueError, match="grey"):
        predict_unet(model, rgb)


def test_both_ensemble_is_the_mean_of_the_two_inputs(both_run) -> None:
    data, samaug, run, res = both_run
    assert json.loads((run / "config.json").read_text())["meta"]["train_items"] == 2 * len(read_split(run / "split.json").train)
    model = load_unet(run)
    assert model.spec.kind == "both" and model.spec.mode == "stack" and model.spec.in_channels == 3
    image = np.asarray(Image.open(data / "images" / "c03.png"))
    priors = samaug / "priors" / "c03.npz"
    ens = predict_unet(model, image, priors)
    raw = predict_unet(model, image, None, ensemble=False)
    aug = predict_unet(model, image, priors, ensemble=False)
    assert ens.shape == image.shape
    assert not np.allclose(raw, aug, atol=1e-3)
    np.testing.assert_allclose(ens, (raw + aug) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="priors"):
        predict_unet(model, image)
    with pytest.raises(ValueError, match="priors are"):
        predict_unet(model, image, (np.zeros((5, 5), np.float32), np.zeros((5, 5), np.float32)))
    rows = evaluate_unet(run, split="val")
    assert len(rows) == len(read_split(run / "split.json").val) and {r["views"] for r in rows} == {"raw+samaug"}
    assert {r["views"] for r in evaluate_unet(run, split="val", ensemble=False)} == {"samaug"}
    assert len(evaluate_unet(run, data, samaug, split="all")) == 10


def test_errors(tmp_path) -> None:
    data, samaug = make_dataset(tmp_path, n=4)
    with pytest.raises(ValueError, match="multiple of 16"):
        train_unet(data, tmp_path / "r", size=40)
    with pytest.raises(ValueError, match="samaug_dir"):
        train_unet(data, tmp_path / "r", "both", size=32)
    with pytest.raises(ValueError, match="network option"):
        train_unet(data, tmp_path / "r", size=32, network={"width": 3})
    with pytest.raises(FileNotFoundError, match="best.pt"):
        load_unet(tmp_path)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        train_unet(data, tmp_path / "r", size=32, loss="focal")


def test_batch_dice_loss_has_no_flat_all_background_solution() -> None:
    """A batch of 4 images, 30 foreground pixels in one of them. Predicting background everywhere costs the per-image
    two-class Dice 0.5 on that image and ~0 on the other three (0.125 on average: background Dice ~1, and an absent
    foreground counts as matched), while the batch foreground Dice calls it a total miss (1.0); a perfect prediction
    costs ~0 under both."""
    label = torch.zeros(4, 1, 32, 32, dtype=torch.long)
    label[0, 0, 10:16, 10:15] = 1  # 30 px of 4096
    # logits of +-20: the softmax leaves ~1e-17 of the wrong class, far below MONAI's smoothing terms (1e-5)
    all_bg = torch.stack([torch.full((4, 32, 32), 20.0), torch.full((4, 32, 32), -20.0)], dim=1)
    perfect = torch.where(label.bool(), -20.0, 20.0).repeat(1, 2, 1, 1)
    perfect[:, 1] = -perfect[:, 1]
    per_image, batch = unet_loss("dice_ce"), unet_loss("dice_ce_batch")
    ce = torch.nn.functional.cross_entropy(all_bg, label[:, 0]).item()
    # dice_ce averages the two classes' Dice per image: images 1-3 (no foreground) are near-perfect for both
    assert per_image(all_bg, label).item() == pytest.approx(ce + 0.5 * (1 - 0) / 4 + 0.0, abs=0.02)
    assert batch(all_bg, label).item() == pytest.approx(ce + 1.0, abs=0.01)
    assert per_image(perfect, label).item() < 0.01 and batch(perfect, label).item() < 0.01
    with pytest.raises(ValueError, match="dice_ce, dice_ce_batch"):
        unet_loss("dice")
    # the CLI (which must not import torch to build its parser) offers exactly these losses
    train_unet_parser = build_parser("train")._subparsers._group_actions[0].choices["train"]
    unet_parser = train_unet_parser._subparsers._group_actions[0].choices["unet"]
    (loss_option,) = [a for a in unet_parser._actions if "--loss" in a.option_strings]
    assert tuple(loss_option.choices) == LOSSES and loss_option.default == "dice_ce"


def test_split_seed_fixes_the_split_across_training_seeds(tmp_path) -> None:
    torch.set_num_threads(1)
    data, _ = make_dataset(tmp_path, n=12, mode="add", seed=3)
    net = {"channels": (4, 8), "strides": (2,)}
    splits = []
    for seed in (0, 1):
        run = tmp_path / f"run{seed}"
        cfg = TrainConfig(epochs=1, batch_size=4, seed=seed)
        train_unet(data, run, "raw", size=16, config=cfg, network=net, progress=False, split_seed=7)
        splits.append(read_split(run / "split.json"))
    assert splits[0] == splits[1]
    # without split_seed the training seed draws the split
    cfg = TrainConfig(epochs=1, batch_size=4, seed=1)
    train_unet(data, tmp_path / "free", "raw", size=16, config=cfg, network=net, progress=False)
    other = [read_split(tmp_path / "free" / "split.json")]
    cfg = TrainConfig(epochs=1, batch_size=4, seed=2)
    train_unet(data, tmp_path / "free2", "raw", size=16, config=cfg, network=net, progress=False)
    other.append(read_split(tmp_path / "free2" / "split.json"))
    assert other[0] != other[1]


def test_evaluate_unet_views_pick_the_inputs_of_a_both_model(both_run) -> None:
    data, samaug, run, _ = both_run
    raw = evaluate_unet(run, data, samaug, split="all", views=("raw",))
    aug = evaluate_unet(run, data, samaug, split="all", views=("samaug",))
    ens = evaluate_unet(run, data, samaug, split="all")
    assert {r["views"] for r in raw} == {"raw"} and {r["views"] for r in aug} == {"samaug"}
    assert {r["views"] for r in ens} == {"raw+samaug"}
    # the raw view must not read priors: it works without a samaug folder at hand too
    assert [r["dice"] for r in evaluate_unet(run, data, None, split="all", views=("raw",))] == [r["dice"] for r in raw]
    with pytest.raises(ValueError, match="views"):
        evaluate_unet(run, data, samaug, split="all", views=("augmented",))


def test_names_kept_in_train() -> None:
    import medsamkit.models.unet as models_unet
    import medsamkit.predict.unet as predict_unet_module
    import medsamkit.train as train
    import medsamkit.train.data as data
    import medsamkit.train.unet as unet

    for name in ("ARCHS", "TrainedUNet", "build_network", "load_unet"):
        assert getattr(train, name) is getattr(unet, name) is getattr(models_unet, name)
    assert train.predict_unet is unet.predict_unet is predict_unet_module.predict_unet
    assert unet.views_for is predict_unet_module.views_for and unet.foreground_probability is models_unet.foreground_probability
    assert data.InputSpec is train.InputSpec is models_unet.InputSpec and data.make_view is predict_unet_module.make_view
    assert data.as_priors is predict_unet_module.as_priors and data.resize_input is predict_unet_module.resize_input


def test_scores_are_the_thresholded_prediction_against_the_target(raw_run, tmp_path) -> None:
    import csv

    from medsamkit.data import load_case, load_dataset
    from medsamkit.metrics import dice, iou
    from medsamkit.train.unet import SCORE_COLUMNS, write_scores

    data, _, run, _ = raw_run
    rows = evaluate_unet(run, split="all", threshold=0.3)
    model = load_unet(run)
    ds = load_dataset(data)
    assert [r["case"] for r in rows] == ds.ids
    for r in rows[:3]:
        image, mask = load_case(ds[r["case"]])
        pred = predict_unet(model, image) > 0.3
        assert r["dice"] == dice(pred, mask > 0) and r["iou"] == iou(pred, mask > 0)
        assert (r["gt_pixels"], r["pred_pixels"], r["height"], r["width"]) == (int((mask > 0).sum()), int(pred.sum()), 64, 64)
    out = write_scores(tmp_path / "scores.csv", rows)
    with open(out, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == list(SCORE_COLUMNS) and table[1][0] == rows[0]["case"] and table[1][1] == f"{rows[0]['dice']:.6f}"
    assert out.read_bytes().count(b"\r") == 0  # one "\n" per line


def test_a_case_without_the_target_is_scored_and_volumes_are_refused(raw_run, tmp_path) -> None:
    import shutil

    import nibabel as nib

    data, _, run, _ = raw_run
    other = tmp_path / "other"
    shutil.copytree(data, other)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(other / "masks" / "c00.png")
    rows = evaluate_unet(run, other, split="all")
    assert (
        rows[0]["case"] == "c00"
        and rows[0]["gt_pixels"] == 0
        and rows[0]["dice"] == (1.0 if rows[0]["pred_pixels"] == 0 else 0.0)
    )
    vol = tmp_path / "vol"
    (vol / "images").mkdir(parents=True)
    (vol / "masks").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), np.float32), np.eye(4)), vol / "images" / "v.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((16, 16, 4), np.uint8), np.eye(4)), vol / "masks" / "v.nii.gz")
    with pytest.raises(ValueError, match="2D images"):
        evaluate_unet(run, vol, split="all")
