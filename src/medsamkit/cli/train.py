"""``medsamkit train unet`` (train a MONAI U-Net on raw / SAMAug / both inputs) and ``medsamkit predict-unet``
(apply a trained run to one image, or score it on a dataset split)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CliError, SubParsers, add_split_arguments, positive_float, positive_int, say

#: the top-level commands this module adds, with their one-line help (``medsamkit --help`` lists them without
#: building their parsers)
COMMANDS = {
    "train": "train a segmentation network",
    "predict-unet": "apply a trained U-Net run to an image, or score it on a dataset split",
}


def add_parser(sub: SubParsers) -> None:
    from ..models.unet import ARCHS

    train = sub.add_parser(
        "train",
        help=COMMANDS["train"],
        description="Train a segmentation network on a labelled 2D dataset.",
    )
    tsub = train.add_subparsers(dest="train_command", metavar="MODEL", parser_class=type(train))
    p = tsub.add_parser(
        "unet",
        help="a MONAI U-Net on raw, SAMAug-augmented or both inputs",
        description="Train a MONAI U-Net on a 2D dataset (folder images/ + masks/, nnU-Net or MSD layout) with raw "
        "images, SAMAug-augmented images (priors from `medsamkit samaug prepare`) or both (each case twice; the "
        "prediction averages the two). Writes RUN_DIR/split.json, config.json, metrics.csv, last.pt and best.pt; "
        "--resume continues an interrupted run.",
    )
    p.add_argument("dataset", type=Path, help="dataset folder")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument("--input", choices=("raw", "samaug", "both"), default="raw", help="network input (default raw)")
    p.add_argument("--samaug-dir", type=Path, metavar="DIR", help="output of `medsamkit samaug prepare` (samaug/both)")
    p.add_argument("--arch", choices=ARCHS, default="unet", help="MONAI network (default unet)")
    p.add_argument("--size", type=positive_int, default=256, help="network input size S x S (default 256)")
    p.add_argument("--label", type=positive_int, help="train on this label value only (default: every label > 0)")
    p.add_argument("--epochs", type=positive_int, default=50, help="epochs (default 50)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="batch size (default 8)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warmup epochs before the cosine decay")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, initial weights and augmentation (default 0)")
    p.add_argument("--split-seed", type=int, help="seed of the train/val/test split only (default: --seed)")
    add_split_arguments(p)
    p.add_argument("--patience", type=int, help="stop after this many epochs without a better validation Dice")
    p.add_argument("--max-minutes", type=positive_float, help="wall-clock budget; no epoch starts that would pass it")
    p.add_argument("--no-augment", action="store_true", help="no train-time flips, rotations or intensity changes")
    p.add_argument(
        "--loss",
        choices=("dice_ce", "dice_ce_batch"),
        default="dice_ce",
        help="dice_ce: Dice per image over both classes + CE (default); dice_ce_batch: foreground Dice over the batch "
        "+ CE (nnU-Net's, for small foregrounds)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=run_train_unet)
    train.set_defaults(func=_no_model)

    q = sub.add_parser(
        "predict-unet",
        help=COMMANDS["predict-unet"],
        description="With IMAGE: write the predicted mask (uint8, 1 = foreground) of a trained run (RUN_DIR/best.pt) "
        "on the image's grid. With --dataset: score the run on a split of a dataset and write one CSV row per case "
        "(Dice and IoU at the original resolution); the mean Dice is printed. Models trained on samaug/both inputs "
        "need the priors (--priors for one image, --samaug-dir).",
    )
    q.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run folder of `medsamkit train unet`")
    q.add_argument("image", type=Path, nargs="?", metavar="IMAGE", help="2D image file")
    q.add_argument("-o", "--output", type=Path, required=True, help="mask file (IMAGE) or CSV file (--dataset)")
    src = q.add_mutually_exclusive_group()
    src.add_argument("--priors", type=Path, metavar="NPZ", help="the image's prior file (seg_prior, boundary_prior)")
    src.add_argument("--samaug-dir", type=Path, metavar="DIR", help="SAMAug folder: priors/<case>.npz")
    q.add_argument("--dataset", type=Path, help="score the run on this dataset instead of predicting one image")
    q.add_argument(
        "--split", choices=("train", "val", "test", "all"), default="test", help="--dataset: which cases (default test)"
    )
    q.add_argument(
        "--no-ensemble", action="store_true", help="both-trained model: one input only (augmented with priors, else raw)"
    )
    q.add_argument("--threshold", type=float, default=0.5, help="foreground where the probability is above this (default 0.5)")
    q.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which weights (default best)")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-case lines")
    q.set_defaults(func=run_predict_unet)


def _no_model(args: argparse.Namespace) -> None:
    raise CliError("train: name the model to train, e.g. `medsamkit train unet DATASET -o RUN_DIR` (see --help)")


def run_train_unet(args: argparse.Namespace) -> None:
    from ..train import TrainConfig, train_unet

    if args.input != "raw" and args.samaug_dir is None:
        raise CliError(f"--input {args.input} needs --samaug-dir (the output folder of `medsamkit samaug prepare`)")
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        patience=args.patience,
        seed=args.seed,
        num_workers=args.workers,
        device=args.device,
        max_minutes=args.max_minutes,
    )
    res = train_unet(
        args.dataset,
        args.output,
        args.input,
        args.samaug_dir,
        size=args.size,
        arch=args.arch,
        config=config,
        label=args.label,
        split_seed=args.split_seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        folds=args.folds,
        fold=args.fold,
        augment=not args.no_augment,
        resume=args.resume,
        progress=not args.quiet,
        loss=args.loss,
    )
    best = f"best val Dice {res.best_metric:.4f} at epoch {res.best_epoch}" if res.best_epoch else "no validation"
    print(f"{best}; {res.epochs} epoch(s), {res.stop_reason}")
    say(f"medsamkit: {res.seconds:.1f} s -> {args.output}/best.pt, metrics.csv")


def run_predict_unet(args: argparse.Namespace) -> None:
    if (args.image is None) == (args.dataset is None):
        raise CliError("predict-unet: give either IMAGE or --dataset DATASET")
    if not 0.0 <= args.threshold < 1.0:
        raise CliError(f"--threshold must be in [0, 1), got {args.threshold}")
    if args.dataset is not None:
        _score_dataset(args)
    else:
        _predict_image(args)


def _predict_image(args: argparse.Namespace) -> None:
    import numpy as np

    from ..data import case_id_of
    from ..io import read_image, write_mask
    from ..io.writers import check_mask_output
    from ..models.unet import load_unet
    from ..predict.unet import predict_unet, views_for
    from ..train.data import prior_path

    if args.output.suffix.lower() == ".csv":
        raise CliError("predict-unet IMAGE writes a mask: give -o MASK.png (a CSV is written with --dataset)")
    check_mask_output(args.output, [args.image, args.priors])
    model = load_unet(args.run_dir, args.checkpoint)
    image = read_image(args.image)
    if image.is_volume:
        raise CliError(f"{args.image.name} is a volume {image.spatial_shape}; predict-unet takes 2D images")
    priors = args.priors
    if args.samaug_dir is not None:
        priors = prior_path(args.samaug_dir, case_id_of(args.image))
        if not priors.is_file():
            raise CliError(f"no priors for {args.image.name} in {args.samaug_dir}: {priors} not found")
    if priors is not None and model.spec.kind == "raw":
        say("medsamkit: the model was trained on raw images; the priors are not used")
        priors = None
    prob = predict_unet(model, image, priors, ensemble=not args.no_ensemble)
    mask = (prob > args.threshold).astype(np.uint8)
    views = views_for(model.spec, priors is not None, not args.no_ensemble)
    meta = {"model": "unet", "run_dir": str(args.run_dir), "input": model.spec.kind, "views": "+".join(views)}
    meta["threshold"] = args.threshold
    write_mask(args.output, mask, like=image, names={1: "foreground"}, metadata=meta)
    say(f"medsamkit: {int(mask.sum())} foreground pixels of {mask.size} -> {args.output}")


def _score_dataset(args: argparse.Namespace) -> None:
    from ..train.unet import evaluate_unet, mean_dice, write_scores

    if args.image is not None or args.priors is not None:
        raise CliError("predict-unet --dataset takes no IMAGE and no --priors (use --samaug-dir)")
    rows = evaluate_unet(
        args.run_dir,
        args.dataset,
        args.samaug_dir,
        args.split,
        not args.no_ensemble,
        threshold=args.threshold,
        checkpoint=args.checkpoint,
        progress=not args.quiet,
    )
    write_scores(args.output, rows)
    if not args.quiet:
        for r in rows:
            print(f"{r['case']}: Dice {r['dice']:.4f}")
    views = rows[0]["views"] if rows else "-"
    print(f"mean Dice {mean_dice(rows):.4f} over {len(rows)} case(s) ({args.split} split, input {views})")
    say(f"medsamkit: -> {args.output}")
