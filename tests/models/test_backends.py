"""ONNX Runtime engine equals eager PyTorch within 1e-4, and its export cache behaves."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.models.backends import create_engine
from medsamkit.models.backends.onnx import OnnxEngine, engine_dir
from medsamkit.models.backends.torch_engine import TorchEngine
from medsamkit.predict import Predictor
from tests.conftest import disk_image
from tests.models.test_layouts import SMALL, _random_model


def test_litemedsam_onnxruntime_equals_pytorch(litemedsam_model) -> None:
    ort_engine = create_engine("litemedsam", backend="onnxruntime")
    torch_engine = TorchEngine(litemedsam_model)
    assert isinstance(ort_engine, OnnxEngine)
    img, _ = disk_image(300, 420, 250, 140, 50, rgb=True)
    x, _ = Predictor(engine=torch_engine).preprocess(img)
    e_t = torch_engine.encode(x)
    e_o = ort_engine.encode(x)
    assert e_t.shape == (1, 256, 64, 64)
    assert np.abs(e_t - e_o).max() < 1e-4
    coords = np.array([[[100.0, 40.0], [180.0, 120.0]], [[140.0, 80.0], [0.0, 0.0]]], np.float32)
    labels = np.array([[2, 3], [1, -1]], np.float32)
    all4 = np.arange(4)
    l_t, i_t = torch_engine.decode(torch_engine.prepare(e_t), coords, labels, all4)
    l_o, i_o = ort_engine.decode(ort_engine.prepare(e_t), coords, labels, all4)
    assert l_t.shape == (2, 4, 256, 256) and i_t.shape == (2, 4)
    assert np.abs(l_t - l_o).max() < 1e-4
    assert np.abs(i_t - i_o).max() < 1e-4
    masks = np.stack([l_t[0, 0], l_t[1, 2]])[:, None]
    m_t = torch_engine.decode_masked(e_t, coords, labels, masks, all4)
    m_o = ort_engine.decode_masked(e_t, coords, labels, masks, all4)
    assert np.abs(m_t[0] - m_o[0]).max() < 1e-4 and np.abs(m_t[1] - m_o[1]).max() < 1e-4
    assert np.abs(m_t[0] - l_t).max() > 1e-3  # the mask prompt is really used
    # asking for some outputs computes exactly those
    multi = ort_engine.decode(ort_engine.prepare(e_t), coords, labels, np.array([1, 2, 3]))
    single = ort_engine.decode_masked(e_t, coords, labels, masks, np.array([0]))
    assert multi[0].shape == (2, 3, 256, 256) and np.abs(multi[0] - l_o[:, 1:]).max() < 1e-4
    assert np.abs(multi[1] - i_o[:, 1:]).max() < 1e-5 and np.abs(single[0] - m_o[0][:, :1]).max() < 1e-4


def test_batched_encoder_matches_single(litemedsam_model) -> None:
    eng = create_engine("litemedsam", backend="onnxruntime")
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 256, 256), dtype=np.float32)
    both = eng.encode(x)
    assert np.abs(both[1:] - eng.encode(x[1:])).max() < 1e-4


def test_export_cache_is_reused_and_keyed_by_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MEDSAMKIT_CACHE", str(tmp_path))
    spec = SMALL["litemedsam"]
    m1 = _random_model(spec, seed=1)
    e1 = OnnxEngine.from_module(m1, threads=1)
    folder = e1.folder
    assert folder.parent == tmp_path / "onnx"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.onnx")}
    assert sorted(stamps) == ["decoder.onnx", "decoder_masked.onnx", "encoder.onnx", "prepare.onnx"]
    e1b = OnnxEngine.from_module(m1, threads=1)
    assert e1b.folder == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.onnx")} == stamps  # not exported again
    e2 = OnnxEngine.from_module(_random_model(spec, seed=2), threads=1)
    assert e2.folder != folder  # other weights, other export
    assert not list(tmp_path.rglob("*.part"))  # no temporary files left behind
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    assert np.abs(TorchEngine(m1).encode(x) - e1.encode(x)).max() < 1e-4


def test_engine_dir_depends_on_weights_digest() -> None:
    spec = SMALL["sam"]
    assert engine_dir(spec, "a" * 64) != engine_dir(spec, "b" * 64)


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        create_engine("litemedsam", backend="tensorrt")


def test_int8_encoder_is_built_once_keyed_apart_and_close_to_fp32(tmp_path, monkeypatch) -> None:
    """backend onnxruntime-int8: a quantized encoder file beside the fp32 export, built once; its embeddings carry
    another encoder_id (caches never mix them) and stay close to fp32; the decoder stages are the fp32 files."""
    import logging

    import onnx
    import onnxruntime as ort

    monkeypatch.setenv("MEDSAMKIT_CACHE", str(tmp_path))
    model = _random_model(SMALL["litemedsam"], seed=1)
    handlers = list(logging.getLogger().handlers)
    fp32 = OnnxEngine.from_module(model, threads=1)
    int8 = OnnxEngine.from_module(model, threads=1, precision="int8")
    assert logging.getLogger().handlers == handlers  # the quantizer's advice configured no logging
    (qfile,) = fp32.folder.glob("encoder-int8-*.onnx")
    assert qfile.name == f"encoder-int8-q1-ort{ort.__version__}.onnx" and int8.folder == fp32.folder
    ops = {n.op_type for n in onnx.load(str(qfile)).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops  # really int8 matrix products
    assert int8.backend == "onnxruntime-int8" and fp32.backend == "onnxruntime"
    assert int8.weights_id == fp32.weights_id and int8.encoder_id == fp32.encoder_id + "+int8"
    stamp = qfile.stat().st_mtime_ns
    again = OnnxEngine.from_module(model, threads=1, precision="int8")
    assert qfile.stat().st_mtime_ns == stamp and again.encoder_id == int8.encoder_id  # not quantized again
    assert not list(tmp_path.rglob("*.part"))
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    e32, e8 = fp32.encode(x), int8.encode(x)
    rel = np.abs(e8 - e32).mean() / np.abs(e32).mean()
    assert 0 < rel < 0.2
    with pytest.raises(ValueError, match="precision"):
        OnnxEngine(fp32.folder, fp32.arch, fp32.weights_id, 1, precision="int4")


def test_int8_predictor_on_litemedsam_gives_nearly_the_fp32_mask() -> None:
    img, gt = disk_image(300, 420, 250, 140, 50, rgb=True)
    box = np.array([[200, 90, 300, 190]], float)
    masks = {}
    for backend in ("onnxruntime", "onnxruntime-int8"):
        p = Predictor("litemedsam", backend=backend)
        p.set_image(img)
        masks[backend] = p.predict(boxes=box).masks[0, 0]
    a, b = masks["onnxruntime"], masks["onnxruntime-int8"]
    agreement = 2 * (a & b).sum() / (a.sum() + b.sum())
    # the int8 encoder fails issue 17's per-box accuracy bar on real images (benchmarks/bench_quantized.py), so it is
    # opt-in; on a plain disk it must still give the same object
    assert agreement >= 0.95, agreement


def test_cli_backend_choices_are_the_engines() -> None:
    from medsamkit.cli.common import BACKEND_CHOICES, PRECISION_CHOICES
    from medsamkit.models.backends import BACKENDS, PRECISIONS

    assert BACKEND_CHOICES == BACKENDS and PRECISION_CHOICES == PRECISIONS
