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
