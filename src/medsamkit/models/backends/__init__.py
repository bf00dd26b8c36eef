"""Inference engines behind one numpy interface: eager PyTorch and ONNX Runtime.

An engine runs the three stages of a SAM-family model on numpy arrays:

* ``encode(images (B, 3, S, S) float32) -> embeddings (B, 256, 64, 64)``
* ``prepare(embedding (1, 256, 64, 64)) -> opaque`` — the decoder's prompt-independent work for one image
* ``decode(prepared, coords (N, P, 2), labels (N, P), outputs (K,) int64) -> (logits (N, K, 256, 256), iou (N, K))``
* ``decode_masked(embedding, coords, labels, mask_input (N, 1, 256, 256), outputs) -> same``

Coordinates are in the model-input frame; labels use -1 pad, 0 negative, 1 positive, 2/3 box corners;
``outputs`` picks SAM's mask outputs (``[0]`` single-mask, ``[1, 2, 3]`` multimask).

Identity: ``weights_id`` names the whole model's weights (records, export caches); ``encoder_id`` names the image
encoder's, which is all an embedding depends on. They are equal except for a weights overlay that keeps its base's
encoder (e.g. ``litemedsam-interactive`` on ``litemedsam``), whose ``encoder_id`` is the base's ``weights_id``, so
embedding caches keyed on it are shared with the base model. Both engines here carry ``encoder_id``; read it with
:func:`medsamkit.predict.cache.encoder_id_of`, which falls back to ``weights_id`` for an engine (or wrapper) without
one.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from ...errors import OptionError
from ..configs import ArchSpec

#: ``onnxruntime-int8``: ONNX Runtime with the image encoder's weight matrices in int8 (see :mod:`.onnx`)
BACKENDS = ("auto", "onnxruntime", "onnxruntime-int8", "torch")
#: where the model runs: ``auto`` = the first CUDA GPU when PyTorch sees one, else the CPU; ``cuda:N`` names a GPU
DEVICES = ("cpu", "auto", "cuda", "cuda:N")
#: the image encoder's arithmetic on the PyTorch backend: fp32, or autocast to fp16/bf16 (the decoder stays fp32)
PRECISIONS = ("fp32", "fp16", "bf16")


class Engine(Protocol):
    backend: str
    arch: ArchSpec
    weights_id: str
    # encoder_id: str - carried by both engines; not yet required here, so that wrappers written before it (the
    # app's LockedEngine) still fit: read it with predict.cache.encoder_id_of

    def encode(self, images: np.ndarray) -> np.ndarray: ...

    def prepare(self, embedding: np.ndarray) -> Any: ...

    def decode(
        self, prepared: Any, coords: np.ndarray, labels: np.ndarray, outputs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def decode_masked(
        self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray, outputs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...


def default_threads() -> int:
    """CPU cores this process may use (``MEDSAMKIT_THREADS`` overrides)."""
    env = os.environ.get("MEDSAMKIT_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _nvidia_driver_present() -> bool:
    """An NVIDIA driver is loaded (checked without importing PyTorch, so ``auto`` costs nothing on a CPU box)."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def resolve_device(device: str = "cpu") -> str:
    """``cpu``, ``cuda`` / ``cuda:N`` (checked: PyTorch must see that GPU) or ``auto`` (the first GPU when there is
    one, else ``cpu``) -> the device the model will run on (``cpu``, ``cuda:N``). :class:`OptionError` naming the
    problem otherwise."""
    d = str(device).strip().lower()
    if d == "cpu":
        return "cpu"
    if d == "auto":
        if not _nvidia_driver_present():
            return "cpu"
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
        index = int(d[5:]) if ":" in d else 0
        import torch

        if not torch.cuda.is_available():
            raise OptionError(
                f"device {device!r}: PyTorch sees no CUDA GPU here (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto"
            )
        if index >= torch.cuda.device_count():
            raise OptionError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s) (cuda:0..)")
        return f"cuda:{index}"
    raise OptionError(f"unknown device {device!r}; choose cpu, auto, cuda or cuda:N")


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


# Models above this many parameters stay on PyTorch under "auto" (ONNX files > 2 GB need external data).
_AUTO_ONNX_MAX_PARAMS = 200_000_000


def create_engine(
    model: Any = "litemedsam",
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    backend: str = "auto",
    threads: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> Engine:
    """An engine for a registry name, a checkpoint path, or an in-memory ``SamModel``.

    ``backend="auto"`` uses ONNX Runtime when it is installed (exported once per weights and cached, see
    :mod:`.onnx`) for models up to 200 M parameters, else eager PyTorch. ``onnxruntime-int8``: ONNX Runtime with an
    int8 image encoder (built once per weights and cached).

    device: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``auto`` (:func:`resolve_device`); a GPU runs the PyTorch
    backend (``auto`` picks it there; naming an ONNX Runtime backend with a GPU is refused). precision: the image
    encoder's arithmetic on PyTorch, ``fp32`` or autocast ``fp16`` / ``bf16`` (fp16 on a GPU only); ONNX Runtime
    backends take ``fp32`` only (their int8 is the ``onnxruntime-int8`` backend).
    """
    if backend not in BACKENDS:
        raise OptionError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise OptionError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    dev = resolve_device(device)
    if dev != "cpu":
        if backend not in ("auto", "torch"):
            raise OptionError(f"backend {backend!r} runs on the CPU here; on {dev} use the torch backend (or auto)")
        backend = "torch"
    elif precision == "fp16":
        raise OptionError("precision fp16 needs a GPU (--device cuda); on the CPU use fp32 or bf16")
    if precision != "fp32":
        if backend not in ("auto", "torch"):
            raise OptionError(f"precision {precision} is the torch backend's autocast; backend {backend!r} runs fp32")
        backend = "torch"
    threads = threads or default_threads()
    is_module = hasattr(model, "image_encoder") and hasattr(model, "mask_decoder")
    if backend == "auto":
        backend = "onnxruntime" if onnxruntime_available() else "torch"
        if backend == "onnxruntime":
            if is_module:
                n_params = sum(p.numel() for p in model.parameters())
            else:
                from ..loading import resolve

                ref, _ = resolve(model, checkpoint, arch)
                n_params = ref.arch.approx_params if ref is not None else 0
            if n_params > _AUTO_ONNX_MAX_PARAMS:
                backend = "torch"
    if backend == "torch":
        from .torch_engine import TorchEngine

        if not is_module:
            from ..loading import load

            model = load(model, checkpoint=checkpoint, arch=arch)
        if dev != "cpu":
            model = model.to(dev)
        return TorchEngine(model, threads=threads, precision=precision)
    from .onnx import OnnxEngine

    onnx_precision = "int8" if backend == "onnxruntime-int8" else "fp32"
    if is_module:
        return OnnxEngine.from_module(model, threads=threads, precision=onnx_precision)
    return OnnxEngine.from_weights(model, checkpoint=checkpoint, arch=arch, threads=threads, precision=onnx_precision)
