"""Eager PyTorch engine (CPU, or CUDA when the model lives there).

``precision``: the image encoder runs under ``torch.autocast`` in ``fp16`` / ``bf16`` (its output cast back to
float32), or in ``fp32``; prompt encoder and mask decoder always run in fp32. Autocast embeddings differ from fp32
ones, so ``encoder_id`` carries the precision (embedding caches never mix them). ``encode`` takes any batch size
(``batch_encode``): volumes on a GPU encode several slices per call."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_AUTOCAST: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchEngine:
    backend = "torch"
    batch_encode = True

    def __init__(self, model: Any, threads: int | None = None, channels_last: bool = True, precision: str = "fp32") -> None:
        if precision not in _AUTOCAST:
            raise ValueError(f"precision must be one of {', '.join(_AUTOCAST)}, got {precision!r}")
        self.model = model.eval()
        self.arch = model.spec
        ref = getattr(model, "weights", None)
        self.weights_id = ref.sha256 if ref is not None else "in-memory"
        #: the image encoder's identity: the base's for an overlay model (WeightsRef.encoder_id), else weights_id;
        #: with the precision appended when the encoder runs under autocast
        self.encoder_id = (getattr(ref, "encoder_id", None) or self.weights_id) + ("" if precision == "fp32" else f"+{precision}")
        self.precision = precision
        if threads:
            torch.set_num_threads(threads)
        self.channels_last = channels_last
        if channels_last:
            self.model.image_encoder.to(memory_format=torch.channels_last)
        self.device = next(self.model.parameters()).device
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 autocast needs the model on a CUDA device; on the CPU use bf16")

    def _t(self, a: np.ndarray) -> torch.Tensor:
        a = np.ascontiguousarray(a)
        if not a.flags.writeable:  # e.g. a broadcast mask_input: torch.from_numpy warns about read-only arrays
            a = a.copy()
        return torch.from_numpy(a).to(self.device)

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> np.ndarray:
        x = self._t(images.astype(np.float32, copy=False))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = _AUTOCAST[self.precision]
        if dtype is None:
            return self.model.encode(x).contiguous().cpu().numpy()
        with torch.autocast(self.device.type, dtype=dtype):
            out = self.model.encode(x)
        return out.float().contiguous().cpu().numpy()

    @torch.inference_mode()
    def prepare(self, embedding: np.ndarray) -> Any:
        return self.model.prepare_decoder(self._t(embedding))

    @torch.inference_mode()
    def decode(self, prepared: Any, coords: np.ndarray, labels: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, iou = self.model.decode_prepared(
            prepared, self._t(coords).float(), self._t(labels).float(), self._t(outputs).long(), fast=True
        )
        return logits.cpu().numpy(), iou.cpu().numpy()

    @torch.inference_mode()
    def decode_masked(
        self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray, outputs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        logits, iou = self.model.decode(
            self._t(embedding),
            self._t(coords).float(),
            self._t(labels).float(),
            self._t(mask_input).float(),
            self._t(outputs).long(),
            fast=True,
        )
        return logits.cpu().numpy(), iou.cpu().numpy()
