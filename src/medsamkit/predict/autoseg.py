"""Prompt-free segmentation with a trained AutoSAM run (``medsamkit finetune --mode autosam``).

:func:`load_autosam` opens the run (:func:`medsamkit.models.adapted.load_adapted`), :class:`AutoSegmenter` runs it
on a 2D picture; :func:`autoseg_image` on a 2D image and :func:`autoseg_volume` on every axial slice of a volume
make the picture the model sees (:mod:`medsamkit.preprocess.picture`) and give the mask (``medsamkit autoseg``).
:func:`base_predictor` is the :class:`~medsamkit.predict.Predictor` of an adapter file's base model.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InputError, OptionError
from ..io.image import MedicalImage
from ..models.adapted import load_adapted
from ..models.autosam import AutoSam
from ..models.sam import SamModel
from ..preprocess.picture import model_picture, volume_pictures
from ..preprocess.transforms import Geometry
from .predictor import Predictor

if TYPE_CHECKING:
    from .cache import EmbeddingCache


def base_predictor(
    base: SamModel, base_info: Mapping[str, Any], backend: str = "auto", cache: EmbeddingCache | None = None
) -> Predictor:
    """A :class:`~medsamkit.predict.Predictor` of the base model with this process's torch thread count. A base
    loaded by name or file at its native size is opened by name (ONNX Runtime then reuses the export and the
    embedding-cache keys of ``medsamkit segment``); otherwise a copy of the module is used."""
    from ..models.registry import ARCHS

    threads = torch.get_num_threads()
    named = base_info.get("model") not in (None, "in-memory") and ARCHS.get(base.spec.name) == base.spec
    if named:
        return Predictor(
            base_info["model"], checkpoint=base_info.get("checkpoint"), backend=backend, threads=threads, cache=cache
        )
    # a copy: an engine may change the module it is given (eval mode, channels-last memory format)
    return Predictor(copy.deepcopy(base), backend=backend, threads=threads, cache=cache)


@dataclass
class AutoSegmentation:
    """mask: bool ``(H, W)`` (logit > 0); logits: float32 ``(H, W)`` on the image grid; low_res_logits: float32
    ``(L, L)`` in the model-input frame."""

    mask: np.ndarray
    logits: np.ndarray
    low_res_logits: np.ndarray


class AutoSegmenter:
    """Prompt-free segmentation with a trained AutoSAM: ``AutoSegmenter(load_autosam(RUN_DIR)).segment(image)``.

    The image goes through the base model's pipeline and image encoder (AutoSAM never changes the encoder; a base
    named in the run is opened by name, so ``backend`` "auto" / "onnxruntime" reuse the base's ONNX export, "torch"
    runs it in PyTorch), then the prompt generator and the mask decoder run in PyTorch.
    """

    def __init__(self, model: AutoSam, backend: str = "auto", threads: int | None = None) -> None:
        if not hasattr(model, "generator"):
            raise OptionError("AutoSegmenter needs an AutoSam model (load_autosam)")
        self.model = model.eval()
        info = getattr(model, "adapter_info", None) or {}
        base = info.get("base") or {}
        if base.get("model") not in (None, "in-memory"):
            if threads:
                torch.set_num_threads(threads)
            self.predictor = base_predictor(model.sam, base, backend)
        else:
            self.predictor = Predictor(copy.deepcopy(model.sam), backend=backend, threads=threads)

    def segment(self, image: np.ndarray) -> AutoSegmentation:
        """image: ``(H, W)``, ``(H, W, 1|3|4)`` array (uint8, or any numeric dtype min-max scaled, as
        :meth:`~medsamkit.predict.Predictor.set_image`)."""
        x, _ = self.predictor.preprocess(image)
        emb, geom = self.predictor.embed(image)
        return self.segment_embedded(x, emb, geom)

    def segment_embedded(self, x: np.ndarray, embedding: np.ndarray, geometry: Geometry) -> AutoSegmentation:
        """As :meth:`segment` from the preprocessed input ``(1, 3, S, S)`` and its embedding ``(1, 256, g, g)``."""
        dev = next(self.model.parameters()).device
        with torch.inference_mode():
            low = self.model(
                torch.from_numpy(np.ascontiguousarray(x)).to(dev), torch.from_numpy(np.ascontiguousarray(embedding)).to(dev)
            )
        low_np = low[0].float().cpu().numpy()
        full = self.predictor.transform.logits_to_image(low_np, geometry)[0]
        return AutoSegmentation(full > 0, full.astype(np.float32), low_np[0])


def load_autosam(
    run: str | os.PathLike[str], base: str | os.PathLike[str] | SamModel | None = None, device: str | torch.device = "cpu"
) -> AutoSam:
    """The :class:`~medsamkit.models.autosam.AutoSam` of an autosam run folder or adapter file (``base``: as
    :func:`~medsamkit.models.adapted.load_adapted`)."""
    m = load_adapted(run, base, device=device)
    if not isinstance(m, AutoSam):
        raise OptionError(
            f"{run} is a {m.adapter_info['mode']} run, not an AutoSAM run: use it with `medsamkit segment --adapter`"
        )
    return m


def autoseg_image(segmenter: AutoSegmenter, image: MedicalImage | np.ndarray, modality: str | None = None) -> np.ndarray:
    """uint8 ``(H, W)`` mask (1 = foreground) of a 2D image (a :class:`~medsamkit.io.MedicalImage`, or an array
    ``(H, W)``, ``(H, W, 1|3|4)``), on the image's pixel grid. The picture the model sees is
    :func:`medsamkit.preprocess.picture.model_picture` with the ``auto`` preset (alpha dropped, uint8 kept, CT
    through the soft-tissue window, percentile otherwise), as in training; ``modality`` overrides the image's."""
    picture, _ = model_picture(image, modality=modality)
    return segmenter.segment(picture).mask.astype(np.uint8)


def autoseg_volume(
    segmenter: AutoSegmenter, image: MedicalImage, modality: str | None = None, progress: bool = False
) -> np.ndarray:
    """uint8 ``(Z, Y, X)`` mask of a volume (a :class:`~medsamkit.io.MedicalImage`), segmented slice by slice along z;
    the pictures are :func:`medsamkit.preprocess.picture.volume_pictures` with the ``auto`` preset, fitted on the
    whole volume (as in training; ``modality`` overrides the image's). progress: a progress bar over the slices."""
    if image.is_rgb:
        raise InputError("RGB volumes are not supported")
    pictures = volume_pictures(image, modality=modality)
    out = np.zeros(image.spatial_shape, np.uint8)
    zs = range(image.spatial_shape[0])
    if progress:
        from tqdm import tqdm

        zs = tqdm(zs, desc="slices", unit="slice", leave=False)
    for z in zs:
        out[z] = segmenter.segment(pictures[z]).mask
    return out
