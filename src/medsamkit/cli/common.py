"""Helpers shared by the CLI commands: argument types, the model options and one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeAlias, TypeVar

if TYPE_CHECKING:
    from ..predict import Predictor
    from ..predict.cache import EmbeddingCache


#: ``--backend`` choices: models.backends.BACKENDS, repeated here so that building a parser imports no numpy (a test
#: keeps the two equal). ``onnxruntime-int8``: the int8 image encoder (faster, less exact; README.md, Speed)
BACKEND_CHOICES = ("auto", "onnxruntime", "onnxruntime-int8", "torch")
BACKEND_HELP = "inference engine (default auto: ONNX Runtime fp32 when installed); onnxruntime-int8: faster, less exact encoder"
#: ``--precision`` choices: models.backends.PRECISIONS, repeated for the same reason (the same test)
PRECISION_CHOICES = ("fp32", "fp16", "bf16")


class CliError(Exception):
    """An error to show the user as one line (exit status ``code``)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (raised as :class:`CliError`, printed by ``main``)."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: {message} (see --help)")


N = TypeVar("N", int, float)

#: what ``Parser.add_subparsers()`` returns, given to each command's ``add_parser(sub)`` (argparse has no public name)
SubParsers: TypeAlias = "argparse._SubParsersAction[Parser]"


def _numbers(text: str, counts: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {what}") from None
    if len(values) not in counts:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
    return values


def numbers_arg(text: str, counts: tuple[int, ...], what: str) -> list[float]:
    """Comma-separated numbers, as many as one of ``counts``."""
    return _numbers(text, counts, what)


def box_arg(text: str) -> list[float]:
    """``"X0,Y0,X1,Y1"`` -> 4 floats (inclusive pixel corners; x = column, y = row)."""
    return _numbers(text, (4,), "X0,Y0,X1,Y1 (four numbers)")


def bounded_number(text: str, kind: Callable[[str], N], ok: Callable[[N], bool], what: str, bound: str) -> N:
    """``kind(text)`` (``int`` or ``float``) when ``ok`` accepts it, else argparse's one-line error:
    ``'<text>' is not <what>`` or ``'<text>' must be <bound>``."""
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
    return v


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse ``type=``)."""
    return bounded_number(text, int, lambda v: v >= 1, "an integer", "at least 1")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (argparse ``type=``)."""
    return bounded_number(text, int, lambda v: v >= 0, "an integer", ">= 0")


def positive_float(text: str) -> float:
    """A number > 0 (argparse ``type=``)."""
    return bounded_number(text, float, lambda v: v > 0, "a number", "> 0")


def fraction(text: str) -> float:
    """A number in [0, 1) (argparse ``type=``)."""
    return bounded_number(text, float, lambda v: 0.0 <= v < 1.0, "a number", "in [0, 1)")


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    """The by-case train/validation/test split of ``train`` and ``finetune``: ``--val-fraction``,
    ``--test-fraction``, ``--folds``, ``--fold``."""
    p.add_argument("--val-fraction", type=fraction, default=0.2, help="share of cases for validation (default 0.2)")
    p.add_argument("--test-fraction", type=fraction, default=0.2, help="share of cases held out for testing (default 0.2)")
    p.add_argument(
        "--folds",
        type=int,
        help="k-fold by case: cut the shuffled cases into K parts and test on part --fold (replaces --test-fraction)",
    )
    p.add_argument("--fold", type=int, help="with --folds: the test part, 0..K-1 (default 0)")


def add_model_arguments(
    p: argparse.ArgumentParser,
    *,
    adapter_help: str | None = None,
    threads_help: str | None = "CPU threads (default: all cores)",
) -> None:
    """``--model``, ``--checkpoint``, ``--adapter`` (only with ``adapter_help``), ``--backend`` and ``--threads`` (not
    with ``threads_help=None``, for commands whose threads mean something else), in that order: the options that
    choose the prompted model a command runs (see :func:`adapter_predictor`)."""
    p.add_argument("--model", default="litemedsam", help="registered model (see `medsamkit models`)")
    p.add_argument("--checkpoint", type=Path, help="weight file to use for --model's architecture")
    if adapter_help is not None:
        p.add_argument("--adapter", type=Path, metavar="RUN_DIR/adapter.pt", help=adapter_help)
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help=BACKEND_HELP)
    add_device_arguments(p)
    if threads_help is not None:
        p.add_argument("--threads", type=positive_int, help=threads_help)


DEVICE_HELP = (
    "where the model runs: cpu (default), cuda, cuda:N, or auto (the first CUDA GPU when PyTorch sees one, else the "
    "CPU); a GPU runs the torch backend"
)
PRECISION_HELP = (
    "the image encoder's arithmetic on the torch backend: fp32 (default), bf16 or fp16 (autocast; fp16 on a GPU "
    "only); masks may differ slightly from fp32"
)


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision`` (see :class:`~medsamkit.predict.Predictor`)."""
    p.add_argument("--device", default="cpu", type=_device, metavar="{cpu,auto,cuda,cuda:N}", help=DEVICE_HELP)
    p.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES, help=PRECISION_HELP)


def _device(text: str) -> str:
    t = text.strip().lower()
    if t in ("cpu", "auto", "cuda") or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"expected cpu, auto, cuda or cuda:N, got {text!r}")


def adapter_predictor(args: argparse.Namespace, cache: EmbeddingCache | None = None) -> tuple[Predictor, str]:
    """The ``--adapter`` file's fine-tuned model on its base (the file names the base; ``--checkpoint``: the base's
    weights) as a :class:`Predictor`, on PyTorch unless ``--backend`` names one. Returns it with the model's name
    (``<base>+<mode>``, what saved masks record)."""
    from ..models.adapted import load_adapted
    from ..predict import Predictor

    model = load_adapted(args.adapter, args.checkpoint, prompted=True)
    backend = "torch" if args.backend == "auto" else args.backend
    predictor = Predictor(model, backend=backend, threads=args.threads, cache=cache, device=args.device, precision=args.precision)
    return predictor, model.weights.name


def model_predictor(args: argparse.Namespace, cache: EmbeddingCache | None = None) -> Predictor:
    """The :class:`Predictor` of ``--model``/``--checkpoint``/``--backend``/``--threads``/``--device``/``--precision``
    (the options of :func:`add_model_arguments`; ``--threads`` may be absent)."""
    from ..predict import Predictor

    return Predictor(
        args.model,
        checkpoint=args.checkpoint,
        backend=args.backend,
        threads=getattr(args, "threads", None),
        cache=cache,
        device=args.device,
        precision=args.precision,
    )


def say(msg: str) -> None:
    print(msg, file=sys.stderr)
