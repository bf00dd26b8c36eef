"""``medsamkit finetune``: adapt a SAM-family model to a labelled dataset (decoder, full, adapter, lora, autosam).

Runs under ``torchrun`` as well (``torchrun --nproc_per_node 2 -m medsamkit.cli.main finetune ...``): every rank
trains its share (DistributedDataParallel, gloo on CPU), rank 0 writes the files and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CliError, SubParsers, add_split_arguments, non_negative_int, positive_float, positive_int, say

#: the top-level commands this module adds, with their one-line help (``medsamkit --help`` lists them without
#: building their parsers)
COMMANDS = {
    "finetune": "adapt SAM/LiteMedSAM to a labelled dataset (decoder, full, adapter, LoRA, AutoSAM)",
}


def add_parser(sub: SubParsers) -> None:
    from ..train.finetune import AUTOSAM_INPUTS, DEFAULT_LR, MODES, OBJECTS, PROMPTS

    lrs = ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LR.items())
    p = sub.add_parser(
        "finetune",
        help=COMMANDS["finetune"],
        description="Fine-tune a SAM-family model on a labelled dataset (folder images/ + masks/, nnU-Net or MSD; 3D "
        "cases as axial slices) with simulated box/point prompts, or train an AutoSAM prompt generator. Writes "
        "RUN_DIR/split.json, config.json, metrics.csv, last.pt, best.pt, finetune.json and adapter.pt (only the "
        "trained parameters; use it with `medsamkit segment --adapter RUN_DIR/adapter.pt`, or `medsamkit autoseg "
        "--autosam RUN_DIR` for AutoSAM). Under torchrun the ranks train together (DDP, gloo on CPU).",
    )
    p.add_argument("dataset", type=Path, nargs="+", help="dataset folder(s); several are trained on together")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument("--mode", choices=MODES, default="decoder", help="what is trained (default decoder)")
    p.add_argument("--model", default="litemedsam", help="base model: registry name or checkpoint (default litemedsam)")
    p.add_argument("--checkpoint", type=Path, help="weight file for --model's architecture")
    p.add_argument("--size", type=positive_int, help="model input side (default the model's; TinyViT models only)")
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs (default 20)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="batch size per process (default 4)")
    p.add_argument("--lr", type=positive_float, help=f"AdamW learning rate (default per mode: {lrs})")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warmup epochs before the cosine decay")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="batches per optimizer step (default 1)")
    p.add_argument("--patience", type=int, help="stop after this many epochs without a better validation Dice")
    p.add_argument("--max-minutes", type=positive_float, help="wall-clock budget; no epoch starts that would pass it")
    p.add_argument("--prompt", choices=PROMPTS, default="box", help="training prompts (default box)")
    p.add_argument("--num-points", type=positive_int, default=1, help="points per point prompt (default 1)")
    g = p.add_argument_group(
        "interactive training (--prompt interactive, --mode decoder)",
        "SAM's simulated interaction: a box or a click, then correction clicks from the current error with the "
        "previous mask fed back, the loss summed over the rounds",
    )
    g.add_argument("--clicks", type=non_negative_int, default=8, help="correction clicks per object (default 8)")
    g.add_argument("--mask-only", type=non_negative_int, default=2, help="rounds with no new click (default 2)")
    g.add_argument(
        "--click-farthest-p",
        type=_probability,
        default=0.5,
        help="chance a click is the farthest error pixel, else a random one (default 0.5)",
    )
    g.add_argument("--box-start-p", type=_probability, default=0.5, help="chance an object starts from a box (default 0.5)")
    g.add_argument("--iou-loss-weight", type=float, default=1.0, help="weight of the IoU head's MSE (default 1; 0 off)")
    g.add_argument(
        "--grad-iterations", type=positive_int, help="back-propagate through this many random rounds per batch (default all)"
    )
    p.add_argument(
        "--bbox-shift",
        type=non_negative_int,
        default=5,
        help="max outward move of each box side in model-input pixels (default 5)",
    )
    p.add_argument("--objects", choices=OBJECTS, default="label", help="one sample per label (default) or per component")
    p.add_argument("--label", type=positive_int, help="train on this label value only (default: every label > 0)")
    p.add_argument("--min-pixels", type=positive_int, default=1, help="skip objects smaller than this (default 1)")
    p.add_argument("--slices-per-case", type=positive_int, help="3D cases: at most this many slices per axis (evenly spaced)")
    p.add_argument("--slice-axes", choices=("z", "all"), default="z", help="3D cases: axial slices (z) or along all three axes")
    p.add_argument(
        "--augment-copies",
        type=non_negative_int,
        default=0,
        help="with --cache-embeddings: augmented copies of each training picture, encoded once (default 0)",
    )
    p.add_argument("--no-augment", action="store_true", help="no flips, rotations, gamma or noise")
    p.add_argument(
        "--cache-embeddings",
        type=Path,
        metavar="DIR",
        help="decoder/autosam: encode every picture once into DIR (content-keyed) and train on the stored embeddings",
    )
    p.add_argument("--encode-backend", choices=("auto", "onnxruntime", "torch"), default="auto", help="engine filling the cache")
    p.add_argument("--adapter-ratio", type=positive_float, default=0.25, help="adapter bottleneck / block width (default 0.25)")
    p.add_argument("--lora-rank", type=positive_int, default=4, help="LoRA rank (default 4)")
    p.add_argument("--lora-alpha", type=positive_float, help="LoRA alpha (default: the rank, i.e. scale 1)")
    p.add_argument("--autosam-tokens", type=non_negative_int, default=2, help="AutoSAM sparse tokens (default 2)")
    p.add_argument("--autosam-input", choices=AUTOSAM_INPUTS, default="both", help="what the AutoSAM generator reads")
    p.add_argument("--autosam-train-decoder", action="store_true", help="AutoSAM: train the mask decoder too")
    add_split_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation, prompts and augmentation")
    p.add_argument("--split-seed", type=int, help="seed of the train/val/test split only (default: --seed)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument(
        "--evaluate", action="store_true", help="then score the test split (box prompts; AutoSAM: none) vs zero-shot -> test.csv"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=run)


def _probability(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return v


def run(args: argparse.Namespace) -> None:
    from ..train.finetune import default_config, finetune

    if args.evaluate and len(args.dataset) > 1:
        raise CliError("--evaluate scores one dataset's test split; train on several without it and evaluate each")
    if args.cache_embeddings is not None and args.mode not in ("decoder", "autosam"):
        raise CliError(f"--cache-embeddings needs a frozen image encoder (--mode decoder or autosam), not {args.mode}")
    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "weight_decay": args.weight_decay,
        "warmup_epochs": args.warmup_epochs,
        "grad_accum_steps": args.grad_accum,
        "patience": args.patience,
        "seed": args.seed,
        "num_workers": args.workers,
        "device": args.device,
        "max_minutes": args.max_minutes,
    }
    if args.lr is not None:
        overrides["lr"] = args.lr
    config = default_config(args.mode, **overrides)
    options = {
        "checkpoint": str(args.checkpoint) if args.checkpoint is not None else None,
        "size": args.size,
        "prompt": args.prompt,
        "num_points": args.num_points,
        "bbox_shift": args.bbox_shift,
        "objects": args.objects,
        "label": args.label,
        "min_pixels": args.min_pixels,
        "slices_per_case": args.slices_per_case,
        "slice_axes": args.slice_axes,
        "augment_copies": args.augment_copies,
        "clicks": args.clicks,
        "mask_only": args.mask_only,
        "click_farthest_p": args.click_farthest_p,
        "box_start_p": args.box_start_p,
        "iou_loss_weight": args.iou_loss_weight,
        "grad_iterations": args.grad_iterations,
        "augment": not args.no_augment,
        "cache_embeddings": str(args.cache_embeddings) if args.cache_embeddings is not None else None,
        "encode_backend": args.encode_backend,
        "adapter_ratio": args.adapter_ratio,
        "lora_rank": args.lora_rank,
        "lora_alpha": args.lora_alpha,
        "autosam_tokens": args.autosam_tokens,
        "autosam_input": args.autosam_input,
        "autosam_train_decoder": args.autosam_train_decoder,
        "val_fraction": args.val_fraction,
        "test_fraction": args.test_fraction,
        "folds": args.folds,
        "fold": args.fold,
        "split_seed": args.split_seed,
    }
    res = finetune(
        args.dataset,
        args.output,
        args.mode,
        model=args.model,
        config=config,
        resume=args.resume,
        progress=not args.quiet,
        **options,
    )
    if res.rank != 0:
        return
    f = res.fit
    pc = res.parameters
    has_val = f.best_epoch is not None and f.best_metric == f.best_metric
    best = f"best val Dice {f.best_metric:.4f} at epoch {f.best_epoch}" if has_val else "no validation"
    share = f"{pc['trainable']:,} trainable parameters ({pc['trainable_percent']:.2f} % of the base)"
    print(f"{best}; {f.epochs} epoch(s), {f.stop_reason}; {share}")
    size = res.adapter_path.stat().st_size / 1e6 if res.adapter_path is not None else float("nan")
    say(f"medsamkit: {f.seconds:.1f} s -> {args.output}/adapter.pt ({size:.2f} MB)")
    if args.evaluate:
        _evaluate(args)


def _evaluate(args: argparse.Namespace) -> None:
    from ..train.finetune import evaluate_finetune, write_evaluation

    rows = evaluate_finetune(args.output, progress=not args.quiet)
    summary = write_evaluation(args.output, rows, "test")
    if not rows:
        print("the test split holds no object to score")
        return
    d, z = summary["dice"], summary.get("zero_shot_dice")
    zs = f" (zero-shot with box prompts {z['mean']:.4f} +/- {z['sd']:.4f})" if z else ""
    print(f"test Dice {d['mean']:.4f} +/- {d['sd']:.4f} over {d['n']} object(s){zs}")
    say(f"medsamkit: -> {args.output}/test.csv, test.json")
