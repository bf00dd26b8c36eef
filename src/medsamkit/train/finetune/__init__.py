"""Adapting a SAM-family model to a labelled dataset: five modes, prompt sampling, cached embeddings, evaluation.

:func:`finetune` splits a dataset (``run_dir/split.json``, the same :func:`~medsamkit.data.split_cases` as
the U-Net, so a fixed ``split_seed`` gives both the same test cases), trains through
:func:`medsamkit.train.loop.fit` and writes ``run_dir/adapter.pt``: **only the trained parameters** of the best
epoch, loaded on top of the base checkpoint by :func:`load_adapted` (``medsamkit segment --adapter``) or, for
AutoSAM, :func:`load_autosam` (``medsamkit autoseg``).

Modes (:data:`MODES`); the prompt encoder is always frozen, BatchNorm layers always use their stored statistics:

* ``decoder``: the mask decoder (MedSAM's decoder-only recipe);
* ``full``: image encoder + mask decoder (MedSAM's recipe);
* ``adapter``: bottleneck adapters in every encoder block and the decoder's two-way transformer
  (:mod:`medsamkit.models.adapters`), base frozen;
* ``lora``: low-rank updates of the attention projections (:mod:`medsamkit.models.lora`), base frozen;
* ``autosam``: a prompt generator (:mod:`medsamkit.models.autosam`) replaces the prompts; SAM frozen (optionally
  the decoder trained too). Trained and evaluated without any prompt, on the union of the target labels.

In ``decoder`` and ``full`` mode the IoU-prediction head and the three multimask hypernetworks stay frozen: the loss
only sees the single-mask output (output 0), so they would receive no gradient (and weight decay alone would move them).

**Samples.** Every image (2D case, or an axial slice of a 3D case that holds the target: ``case@z``; the volume's
intensity preset is fitted on the whole volume) gives one sample per **object**: each label value present
(``objects="label"``, the evaluation's ``box`` protocol) or each connected component (``"component"``); objects with
fewer than ``min_pixels`` pixels are skipped. Pictures are made as for the evaluation (the ``auto`` intensity
preset) and fed through the model family's own pipeline (:mod:`medsamkit.preprocess.transforms`), exactly as
:class:`~medsamkit.predict.Predictor` does at inference. Targets are the object masks mapped into the model-input
frame (nearest neighbour onto the resized image, zero padding) at the low-res logit size.

**Prompts**, sampled on the fly in the model-input frame: ``box`` (the object's tight box, each side moved outwards
by a random 0..``bbox_shift`` pixels, MedSAM's jitter; 5 px at LiteMedSAM's 256 input), ``points``
(``num_points`` random foreground pixels + SAM's padding point) or ``mixed`` (box or points per batch, p = 0.5).
Validation uses the tight box (``points``: fixed random points). Draws are seeded by (seed, epoch, item).

**Augmentation** (training items, when the encoder runs in the step): MONAI flips along both axes (p = 0.5 each),
a rotation by k x 90 degrees (p = 0.5), a gamma contrast change in [0.7, 1.5] (p = 0.3) and Gaussian noise of
sd 0.02 (p = 0.2) on the picture before the model's preprocessing (min-max normalisation would cancel a plain
intensity scale or shift).

**Cached embeddings** (``cache_embeddings=DIR``, modes ``decoder`` and ``autosam``, whose image encoder is frozen):
every train/val picture is encoded once by the base model and stored in ``DIR`` under a content key (weights,
pipeline, input size, picture bytes: :func:`medsamkit.predict.cache.embedding_key`, shared with ``medsamkit segment
--embedding-cache``); training then never runs the encoder, and the pictures are not augmented. Without a cache,
frozen-encoder modes still encode the validation pictures only once (in memory).

**Distributed**: under ``torchrun`` every rank joins a gloo (CPU) / NCCL (CUDA) group, the model is wrapped in
``DistributedDataParallel`` and each rank trains on its share of every epoch; rank 0 encodes the cache and writes
every file.

The package: :mod:`.options` (what is adapted and how, the defaults), :mod:`.model` (the trained network, the
adapter file), :mod:`.samples` (images, objects, the dataset, the embedding cache), :mod:`.run` (:func:`finetune`)
and :mod:`.evaluation` (scoring a run and the base model). The adapter file's format and loading for inference
live in :mod:`medsamkit.models.adapted`, AutoSAM inference in :mod:`medsamkit.predict.autoseg`; both are
re-exported here.
"""

from __future__ import annotations

from ...models.adapted import (  # the adapter file's format and loading live in medsamkit.models
    ADAPTER_FILE,
    ADAPTER_FORMAT,
    MODES,
    arch_from_dict,
    arch_to_dict,
    build_base_for,
    load_adapted,
    load_base,
    read_adapter,
    weights_digest,
)
from ...predict.autoseg import AutoSegmentation, AutoSegmenter, base_predictor, load_autosam  # AutoSAM inference
from ..loop import FitResult, TrainConfig
from .evaluation import RESULT_COLUMNS, evaluate_finetune, summarize_rows, write_evaluation, zero_shot_rows
from .interactive import interactive_loss, validation_score
from .model import FinetuneModel, build_generator, build_model, parameter_counts, prompt_tensors, save_adapter, trained_state
from .options import (
    AUTOSAM_INPUTS,
    DEFAULT_LR,
    FROZEN_ENCODER_MODES,
    OBJECTS,
    PROMPTS,
    SLICE_AXES,
    SUMMARY_FILE,
    FinetuneOptions,
    default_config,
    evaluation_config,
)
from .run import FinetuneResult, finetune
from .samples import FinetuneDataset, ImageRecord, augmented_copies, embed_images, read_images, to_model_frame

__all__ = [
    "ADAPTER_FILE",
    "ADAPTER_FORMAT",
    "AUTOSAM_INPUTS",
    "DEFAULT_LR",
    "FROZEN_ENCODER_MODES",
    "MODES",
    "OBJECTS",
    "PROMPTS",
    "RESULT_COLUMNS",
    "SLICE_AXES",
    "SUMMARY_FILE",
    "AutoSegmentation",
    "AutoSegmenter",
    "FinetuneDataset",
    "FinetuneModel",
    "FinetuneOptions",
    "FinetuneResult",
    "FitResult",
    "ImageRecord",
    "TrainConfig",
    "arch_from_dict",
    "augmented_copies",
    "arch_to_dict",
    "base_predictor",
    "build_base_for",
    "build_generator",
    "build_model",
    "default_config",
    "embed_images",
    "evaluate_finetune",
    "evaluation_config",
    "finetune",
    "interactive_loss",
    "load_adapted",
    "load_autosam",
    "load_base",
    "parameter_counts",
    "prompt_tensors",
    "read_adapter",
    "read_images",
    "save_adapter",
    "summarize_rows",
    "to_model_frame",
    "validation_score",
    "trained_state",
    "weights_digest",
    "write_evaluation",
    "zero_shot_rows",
]
