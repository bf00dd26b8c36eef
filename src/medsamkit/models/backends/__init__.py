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
) -> Engine:
    """An engine for a registry name, a checkpoint path, or an in-memory ``SamModel``.

    ``backend="auto"`` uses ONNX Runtime when it is installed (exported once per weights and cached, see
    :mod:`.onnx`) for models up to 200 M parameters, else eager PyTorch. ``onnxruntime-int8``: ONNX Runtime with an
    int8 image encoder (built once per weights and cached).
    """
    if backend not in BACKENDS:
        raise OptionError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
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
        return TorchEngine(model, threads=threads)
    from .onnx import OnnxEngine

    precision = "int8" if backend == "onnxruntime-int8" else "fp32"
    if is_module:
        return OnnxEngine.from_module(model, threads=threads, precision=precision)
    return OnnxEngine.from_weights(model, checkpoint=checkpoint, arch=arch, threads=threads, precision=precision)
