"""ONNX Runtime engine: the model's four stages exported once per weights and cached on disk.

Cache: ``<cache_dir>/onnx/<arch>-<sha256[:16]>-r<EXPORT_REVISION>/{encoder,prepare,decoder,decoder_masked}.onnx``,
keyed by the weights' sha256 (for a weights overlay: the digest of base + overlay) so a file exported for other
weights (or by older medsamkit code, via the revision) is never used. Files are written to a temporary name and
renamed (atomic). Loading a cached engine does not import PyTorch.

Precision ``int8`` (backend ``onnxruntime-int8``): the encoder's weight MatMul/Gemm nodes quantized to int8 (per
output channel, symmetric) with ONNX Runtime's dynamic quantization (activations quantized per call from their own
range, so no calibration set), built once from ``encoder.onnx`` into
``encoder-int8-q<QUANT_REVISION>-ort<onnxruntime version>.onnx`` in the same folder; convolutions, attention
products and the decoder stay fp32. Its embeddings differ from fp32 ones, so its ``encoder_id`` does too (embedding
caches never mix them). Why dynamic and not static, and how accurate: benchmarks/bench_quantized.py.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..configs import ArchSpec
from ..weights import cache_dir

log = logging.getLogger("medsamkit")

# Bump when a change to the model code changes the exported graphs.
EXPORT_REVISION = 6
OPSET = 17
STAGES = ("encoder", "prepare", "decoder", "decoder_masked")
# Bump when the quantization recipe changes.
QUANT_REVISION = 1
PRECISIONS = ("fp32", "int8")


def engine_dir(arch: ArchSpec, weights_sha256: str) -> Path:
    return cache_dir() / "onnx" / f"{arch.name}-{weights_sha256[:16]}-r{EXPORT_REVISION}"


def _export_all(model: Any, out_dir: Path) -> None:
    """Export the four stages of ``model`` (a ``SamModel``) into ``out_dir`` atomically."""
    import torch
    from torch import nn

    class _Encoder(nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.m.encode(image)

    class _Prepare(_Encoder):
        def forward(self, embedding: torch.Tensor):
            return self.m.prepare_decoder(embedding)

    class _Decode(_Encoder):
        def forward(self, keys, k, v, q, coords, labels, outputs):  # type: ignore[override]  # the decoder's inputs, not the encoder's
            return self.m.decode_prepared((keys, k, v, q), coords, labels, outputs, fast=True)

    class _DecodeMasked(_Encoder):
        def forward(self, embedding, coords, labels, mask_input, outputs):  # type: ignore[override]  # the decoder's inputs, not the encoder's
            return self.m.decode(embedding, coords, labels, mask_input, outputs, fast=True)

    s = model.spec.img_size
    model = model.eval().float()
    image = torch.zeros(1, 3, s, s)
    with torch.no_grad():
        emb = model.encode(image)
        prep = model.prepare_decoder(emb)
    coords = torch.tensor([[[10.0, 10.0], [30.0, 40.0]]])
    labels = torch.tensor([[2.0, 3.0]])
    masks = torch.zeros(1, 1, model.spec.low_res, model.spec.low_res)
    outputs = torch.tensor([1, 2, 3])
    np_axes = {
        "coords": {0: "n", 1: "p"},
        "labels": {0: "n", 1: "p"},
        "outputs": {0: "k"},
        "logits": {0: "n", 1: "k"},
        "iou": {0: "n", 1: "k"},
    }
    jobs = [
        ("encoder", _Encoder(model), (image,), ["image"], ["embedding"], {"image": {0: "b"}, "embedding": {0: "b"}}),
        ("prepare", _Prepare(model), (emb,), ["embedding"], ["keys", "k", "v", "q"], {}),
        (
            "decoder",
            _Decode(model),
            (*prep, coords, labels, outputs),
            ["keys", "k", "v", "q", "coords", "labels", "outputs"],
            ["logits", "iou"],
            np_axes,
        ),
        (
            "decoder_masked",
            _DecodeMasked(model),
            (emb, coords, labels, masks, outputs),
            ["embedding", "coords", "labels", "mask_input", "outputs"],
            ["logits", "iou"],
            {**np_axes, "mask_input": {0: "n"}},
        ),
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, module, args, input_names, output_names, axes in jobs:
        fd, tmp = tempfile.mkstemp(prefix=f"{name}.", suffix=".onnx.part", dir=out_dir)
        os.close(fd)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
                torch.onnx.export(
                    module,
                    args,
                    tmp,
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_axes=axes,
                    opset_version=OPSET,
                    dynamo=False,
                    do_constant_folding=True,
                )
            os.replace(tmp, out_dir / f"{name}.onnx")
        finally:
            Path(tmp).unlink(missing_ok=True)


def int8_encoder_file(folder: Path) -> Path:
    """The int8 encoder beside ``folder/encoder.onnx`` (see the module's docstring), built on first use (atomic)."""
    import onnxruntime as ort

    out = folder / f"encoder-int8-q{QUANT_REVISION}-ort{ort.__version__}.onnx"
    if out.is_file():
        return out
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = folder / "encoder.onnx"
    graph = onnx.load(str(src), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    nodes = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and any(i in weights for i in n.input)]
    t0 = time.perf_counter()
    log.info("quantizing the encoder to int8 (once per weights; %s)", out)
    fd, tmp = tempfile.mkstemp(prefix="encoder-int8.", suffix=".onnx.part", dir=folder)
    os.close(fd)
    # the quantizer advises pre-processing through logging.warning, which would also configure the root logger
    # when it has no handler: give it one that drops records, for this call only
    root, quiet = logging.getLogger(), logging.NullHandler()
    root.addHandler(quiet)
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            src,
            tmp,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_quantize=nodes,
        )
        os.replace(tmp, out)
    finally:
        root.setLevel(level)
        root.removeHandler(quiet)
        Path(tmp).unlink(missing_ok=True)
    log.info("quantized in %.1f s", time.perf_counter() - t0)
    return out


def state_dict_digest(model: Any) -> str:
    """sha256 over a module's parameter names, shapes and bytes (identity of in-memory weights)."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class OnnxEngine:
    backend = "onnxruntime"

    def __init__(
        self,
        folder: Path,
        arch: ArchSpec,
        weights_id: str,
        threads: int,
        encoder_id: str | None = None,
        precision: str = "fp32",
    ) -> None:

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.arch = arch
        self.weights_id = weights_id
        self.precision = precision
        #: the image encoder's identity (embedding caches key on it): ``weights_id`` unless given (an overlay
        #: model), with ``+int8`` for the quantized encoder
        self.encoder_id = (encoder_id or weights_id) + ("+int8" if precision == "int8" else "")
        if precision == "int8":
            self.backend = "onnxruntime-int8"
        self.folder = folder
        self._encoder_file = int8_encoder_file(folder) if precision == "int8" else folder / "encoder.onnx"
        self._threads = threads
        self._sessions: dict[str, Any] = {}
        self._sessions["encoder"] = self._session("encoder")

    def _options(self, stage: str) -> Any:  # onnxruntime.SessionOptions
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Four sessions run one after another; idle worker threads that spin would steal the cores of the
        # next session. Measured on 2 cores: without spinning the encoder alone is ~5% slower, but the
        # decoding right after it is ~40% faster, and an image + prompt end to end is faster.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # The memory-pattern planner keeps a block sized for all intermediates of a run; for the encoder that is
        # ~170 MB more peak RSS at the same speed, so it is off there. The decoders keep it: without it a
        # correction click (decoder_masked) took 33 ms instead of 22 (make bench).
        opts.enable_mem_pattern = stage != "encoder"
        return opts

    def _session(self, stage: str) -> Any:  # an onnxruntime.InferenceSession
        import onnxruntime as ort

        if stage not in self._sessions:
            path = self._encoder_file if stage == "encoder" else self.folder / f"{stage}.onnx"
            self._sessions[stage] = ort.InferenceSession(str(path), self._options(stage), providers=["CPUExecutionProvider"])
        return self._sessions[stage]

    # -- construction -----------------------------------------------------------------------------------
    @classmethod
    def _ensure(cls, arch: ArchSpec, weights_sha256: str, build_model: Callable[[], Any]) -> Path:
        folder = engine_dir(arch, weights_sha256)
        if not all((folder / f"{s}.onnx").is_file() for s in STAGES):
            model = build_model()  # a bad checkpoint fails here, before the export is announced
            t0 = time.perf_counter()
            log.info("exporting %s to ONNX Runtime (once per weights; cache %s)", arch.name, folder)
            _export_all(model, folder)
            log.info("export done in %.1f s", time.perf_counter() - t0)
        return folder

    @classmethod
    def from_weights(
        cls,
        model: Any = "litemedsam",
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        arch: str | None = None,
        threads: int = 1,
        precision: str = "fp32",
    ) -> OnnxEngine:
        """Engine for a registry name or checkpoint; PyTorch is only imported when an export is needed."""
        from ..loading import load, resolve

        resolved = resolve(model, checkpoint, arch)
        if resolved[0] is None:  # architecture must be read from the checkpoint itself
            net = load(resolved[1])
            folder = cls._ensure(net.spec, net.weights.sha256, lambda: net)
            return cls(folder, net.spec, net.weights.sha256, threads, precision=precision)
        ref = resolved[0]  # for an overlay model: sha256 of base + overlay, encoder_id the base's
        folder = cls._ensure(ref.arch, ref.sha256, lambda: load(model, checkpoint=checkpoint, arch=arch))
        return cls(folder, ref.arch, ref.sha256, threads, encoder_id=ref.encoder_id, precision=precision)

    @classmethod
    def from_module(cls, model: Any, threads: int = 1, precision: str = "fp32") -> OnnxEngine:
        """Engine for an in-memory ``SamModel`` (e.g. after fine-tuning), keyed by a digest of its weights.

        ``encoder_id`` is that digest too, except for a model loaded as a weights overlay that keeps its base's
        encoder (its ``weights.encoder_id`` differs from ``weights.sha256``): then the base's, trusting the model's
        ``weights`` as :class:`~.torch_engine.TorchEngine` does."""
        digest = state_dict_digest(model)
        folder = cls._ensure(model.spec, digest, lambda: model)
        ref = getattr(model, "weights", None)
        enc = getattr(ref, "encoder_sha256", None)
        shared = enc is not None and enc != getattr(ref, "sha256", None)
        return cls(folder, model.spec, digest, threads, encoder_id=enc if shared else None, precision=precision)

    # -- inference --------------------------------------------------------------------------------------
    def encode(self, images: np.ndarray) -> np.ndarray:
        return self._session("encoder").run(None, {"image": np.ascontiguousarray(images, dtype=np.float32)})[0]

    def prepare(self, embedding: np.ndarray) -> Any:
        return self._session("prepare").run(None, {"embedding": np.ascontiguousarray(embedding, np.float32)})

    def decode(self, prepared: Any, coords: np.ndarray, labels: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys, k, v, q = prepared
        feed = {
            "keys": keys,
            "k": k,
            "v": v,
            "q": q,
            "coords": np.ascontiguousarray(coords, np.float32),
            "labels": np.ascontiguousarray(labels, np.float32),
            "outputs": np.ascontiguousarray(outputs, np.int64),
        }
        logits, iou = self._session("decoder").run(None, feed)
        return logits, iou

    def decode_masked(
        self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray, outputs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        feed = {
            "outputs": np.ascontiguousarray(outputs, np.int64),
            "embedding": np.ascontiguousarray(embedding, np.float32),
            "coords": np.ascontiguousarray(coords, np.float32),
            "labels": np.ascontiguousarray(labels, np.float32),
            "mask_input": np.ascontiguousarray(mask_input, np.float32),
        }
        logits, iou = self._session("decoder_masked").run(None, feed)
        return logits, iou
