"""Interactive (SAM-style) decoder training on a tiny random TinyViT model (64 px input, low-res grid 64) and
synthetic disks: the round plan, the prompts each round adds, a few steps lowering the loss, the run end to end,
options, augmented copies, slices along all axes and combined datasets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from medsamkit.data import combine_datasets, load_dataset
from medsamkit.errors import InputError, OptionError
from medsamkit.preprocess.transforms import transform_for
from medsamkit.train.finetune import (
    FinetuneDataset,
    FinetuneOptions,
    augmented_copies,
    build_model,
    finetune,
    read_adapter,
    read_images,
)
from medsamkit.train.finetune.interactive import (
    PAD_LABEL,
    correction_points,
    interactive_loss,
    object_losses,
    round_plan,
    validation_score,
)
from medsamkit.train.loop import TrainConfig
from tests.models.test_layouts import SMALL, _random_model
from tests.train.synth import make_dataset

OPTS = FinetuneOptions(mode="decoder", prompt="interactive", clicks=3, mask_only=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("inter"), n=6, size=(64, 64))[0]


def _batch(data, options: FinetuneOptions = OPTS, n: int = 4):
    base = _random_model(SMALL["litemedsam"])
    net = build_model(base, options)
    recs = read_images(load_dataset(data).cases, options)
    ds = FinetuneDataset(recs, transform_for(base.spec.pipeline, base.spec.img_size), base.spec.low_res, options, train=False)
    items = [ds[i] for i in range(n)]
    return net, {k: torch.stack([it[k] for it in items]) for k in items[0]}, base.spec.img_size


def test_round_plan_places_the_mask_only_rounds_and_picks_gradient_rounds() -> None:
    rng = np.random.default_rng(0)
    plan, grad = round_plan(OPTS, rng)
    assert plan[0] == "first" and plan[-1] == "mask" and plan.count("click") == 3 and plan.count("mask") == 2
    assert grad == set(range(len(plan)))
    plan, grad = round_plan(replace(OPTS, grad_iterations=2), rng)
    assert len(grad) == 2 and grad <= set(range(len(plan)))
    assert round_plan(replace(OPTS, mask_only=0), rng)[0][-1] == "click"


def test_trainable_is_the_whole_decoder_but_its_upscaling(data) -> None:
    net, _, _ = _batch(data)
    dec = net.sam.mask_decoder
    trained = {n for n, p in dec.named_parameters() if p.requires_grad}
    assert any(n.startswith("iou_prediction_head") for n in trained)
    assert any(n.startswith("output_hypernetworks_mlps.3") for n in trained)
    assert not any(n.startswith("output_upscaling") for n in trained)
    assert not any(p.requires_grad for p in net.sam.image_encoder.parameters())
    assert not any(p.requires_grad for p in net.sam.prompt_encoder.parameters())


def test_correction_points_label_the_error_and_pad_where_none() -> None:
    gt = np.zeros((3, 16, 16), bool)
    gt[:, 4:12, 4:12] = True
    pred = np.zeros_like(gt)
    pred[1] = True  # everything: only false positives
    pred[2] = gt[2]  # perfect: no click
    coords, labels = correction_points(pred, gt, OPTS, np.random.default_rng(0), input_size=16)
    assert labels[:, 0].tolist() == [1.0, 0.0, PAD_LABEL]
    x, y = coords[0, 0]
    assert gt[0, int(y), int(x)]  # the positive click is on a missed pixel
    x, y = coords[1, 0]
    assert not gt[1, int(y), int(x)]  # the negative click is on a wrongly included pixel


def test_each_round_adds_a_prompt_and_feeds_the_mask_back(data, monkeypatch) -> None:
    net, batch, size = _batch(data)
    seen: list[tuple[int, bool]] = []
    decode = net.sam.decode

    def spy(emb, coords, labels, mask_input=None, outputs=None, fast=False):
        seen.append((coords.shape[1], mask_input is not None))
        return decode(emb, coords, labels, mask_input, outputs, fast)

    monkeypatch.setattr(net.sam, "decode", spy)
    loss, rounds = interactive_loss(net, batch, OPTS, np.random.default_rng(0), input_size=size)
    assert len(rounds) == 1 + 3 + 2 and loss.requires_grad and torch.isfinite(loss)
    # the first prompt is 2 points (box corners, or a click + padding), each click round adds one, mask rounds none
    assert seen[0] == (2, False)
    assert [n for n, _ in seen] == sorted(n for n, _ in seen) and seen[-1][0] == 2 + 3
    assert all(m for _, m in seen[1:])
    assert all(r.logits.shape == batch["target"].shape for r in rounds)


def test_a_few_steps_lower_the_loss(data) -> None:
    torch.manual_seed(0)
    net, batch, size = _batch(data)
    opts = replace(OPTS, clicks=2, mask_only=1)

    def loss_now() -> float:
        with torch.no_grad():
            return float(
                interactive_loss(net, batch, opts, np.random.default_rng(5), input_size=size, train=False)[1][-1].loss.mean()
            )

    before = loss_now()
    optim = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=3e-3)
    for step in range(8):
        optim.zero_grad()
        loss, _ = interactive_loss(net, batch, opts, np.random.default_rng(step), input_size=size)
        loss.backward()
        optim.step()
    assert loss_now() < 0.8 * before


def test_object_losses_is_dice_plus_bce() -> None:
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    logits = torch.randn(3, 1, 8, 8)
    target = (torch.rand(3, 1, 8, 8) > 0.5).float()
    ref = DiceCELoss(sigmoid=True, squared_pred=True)(logits, target)
    assert torch.allclose(object_losses(logits, target).mean(), ref, atol=1e-5)


def test_validation_score_is_deterministic(data) -> None:
    net, batch, size = _batch(data)
    a = validation_score(net, batch, OPTS, input_size=size)
    b = validation_score(net, batch, OPTS, input_size=size)
    assert torch.equal(a[1], b[1]) and a[1].shape == (batch["target"].shape[0],)
    assert ((a[1] >= 0) & (a[1] <= 1)).all()


def test_interactive_run_end_to_end(data, tmp_path) -> None:
    base = _random_model(SMALL["litemedsam"])
    cfg = TrainConfig(epochs=1, batch_size=2, lr=1e-3, device="cpu")
    res = finetune(
        data,
        tmp_path / "run",
        "decoder",
        model=base,
        config=cfg,
        progress=False,
        prompt="interactive",
        clicks=2,
        mask_only=1,
        grad_iterations=2,
        augment_copies=1,
        cache_embeddings=str(tmp_path / "cache"),
        encode_backend="torch",
    )
    assert res.adapter_path is not None and res.fit.epochs == 1
    doc = read_adapter(res.adapter_path)
    keys = set(doc["sam"])
    assert any(k.startswith("mask_decoder.iou_prediction_head") for k in keys)
    assert not any(k.startswith("mask_decoder.output_upscaling") for k in keys)
    assert res.items["train"] > 0


def test_options_are_checked() -> None:
    with pytest.raises(OptionError, match="decoder"):
        FinetuneOptions(mode="adapter", prompt="interactive")
    with pytest.raises(OptionError, match="cached embeddings"):
        FinetuneOptions(augment_copies=1)
    with pytest.raises(OptionError, match="click_farthest_p"):
        FinetuneOptions(prompt="interactive", click_farthest_p=2.0)
    with pytest.raises(OptionError, match="slice_axes"):
        FinetuneOptions(slice_axes="xy")
    with pytest.raises(OptionError, match="grad_iterations"):
        FinetuneOptions(grad_iterations=0)


def test_augmented_copies_move_picture_and_objects_together(data) -> None:
    recs = read_images(load_dataset(data).cases, OPTS)
    copies = augmented_copies(recs, 2, seed=0)
    assert len(copies) == 2 * len(recs) and copies[0].id.endswith("#aug0")
    again = augmented_copies(recs, 2, seed=0)
    assert all(np.array_equal(a.picture, b.picture) and np.array_equal(a.objects, b.objects) for a, b in zip(copies, again))
    for c in copies:
        orig = next(r for r in recs if r.id == c.id.split("#")[0])
        assert c.objects.shape == c.picture.shape[:2] and c.object_ids and c.union.dtype == bool
        assert (c.objects > 0).sum() == (orig.objects > 0).sum()  # flips and 90-degree turns keep every pixel
        # the bright disk is still where its object is (the picture moved with the mask)
        assert c.picture[c.objects > 0].mean() > c.picture[c.objects == 0].mean()
    assert any(not np.array_equal(c.objects, r.objects) for c, r in zip(copies[::2], recs))


def test_slices_along_all_axes_and_combined_datasets(tmp_path, data) -> None:
    import nibabel as nib

    root = tmp_path / "vol"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    z, y, x = np.mgrid[0:10, 0:20, 0:24]
    vol = np.random.default_rng(0).normal(100, 10, (10, 20, 24)).astype(np.float32)
    lab = (((z - 5) ** 2 + (y - 10) ** 2 + (x - 12) ** 2) <= 12).astype(np.uint8)
    vol[lab > 0] += 200
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), root / "images" / "v.nii.gz")
    nib.save(nib.Nifti1Image(lab.transpose(2, 1, 0), np.eye(4)), root / "masks" / "v.nii.gz")
    ds = load_dataset(root)
    axial = read_images(ds.cases, FinetuneOptions(slices_per_case=2))
    every = read_images(ds.cases, FinetuneOptions(slices_per_case=2, slice_axes="all"))
    assert len(axial) == 2 and len(every) == 6
    shapes = {r.id.split("@")[1][0]: r.picture.shape for r in every if not r.id.split("@")[1].isdigit()}
    assert shapes == {"y": (10, 24), "x": (10, 20)}
    assert all(r.picture[r.objects > 0].mean() > r.picture[r.objects == 0].mean() for r in every)

    both = combine_datasets([load_dataset(data), ds])
    assert len(both) == len(load_dataset(data)) + 1 and "vol/v" in both.ids
    assert both["vol/v"].dataset == ds.name
    with pytest.raises(InputError, match="share a name"):
        combine_datasets([ds, ds])
