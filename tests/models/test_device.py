"""Where the predictor runs (``device``), the encoder's arithmetic (``precision``) and batched slice encoding.

The GPU tests at the end run only where PyTorch sees a CUDA GPU (CI has none: they skip with that reason);
benchmarks/bench_gpu.py records the figures on a GPU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from medsamkit.errors import OptionError
from medsamkit.models.backends import create_engine, resolve_device
from medsamkit.predict import ObjectPrompt, Predictor, segment_volume
from tests.conftest import box_of, dice, disk_image

torch = pytest.importorskip("torch")
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU visible to PyTorch here (CI has none)")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu" and resolve_device(" CPU ") == "cpu"
    assert resolve_device("auto") == ("cuda:0" if HAS_CUDA else "cpu")
    for bad in ("gpu", "cuda:x", "tpu", ""):
        with pytest.raises(OptionError, match="unknown device"):
            resolve_device(bad)
    if not HAS_CUDA:
        with pytest.raises(OptionError, match="PyTorch sees no CUDA GPU"):
            resolve_device("cuda")
        with pytest.raises(OptionError, match="PyTorch sees no CUDA GPU"):
            resolve_device("cuda:1")


def test_auto_device_without_a_gpu_driver_imports_no_torch() -> None:
    from medsamkit.models.backends import _nvidia_driver_present

    if _nvidia_driver_present():
        pytest.skip("an NVIDIA driver is present: 'auto' asks PyTorch")
    code = (
        "import sys; from medsamkit.models.backends import resolve_device; print(resolve_device('auto'), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["cpu", "False"], out


def test_precision_and_backend_combinations_are_checked() -> None:
    with pytest.raises(OptionError, match="unknown precision"):
        create_engine("litemedsam", precision="int4")
    with pytest.raises(OptionError, match="fp16 needs a GPU"):
        create_engine("litemedsam", precision="fp16")
    with pytest.raises(OptionError, match="autocast"):
        create_engine("litemedsam", backend="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="encode_batch"):
        Predictor("litemedsam", backend="torch", encode_batch=0)


def test_bf16_autocast_encoder_is_keyed_apart_and_close() -> None:
    """bf16 autocast (CPU here) gives embeddings of its own identity and the same object on a clear disk; it is
    not exact (benchmarks/results/bench_gpu_on_cpu.json: it fails the official parity rule on the CPU)."""
    image, truth = disk_image(160, 200, 90, 80, 35)
    fp32 = Predictor("litemedsam", backend="torch")
    bf16 = Predictor("litemedsam", precision="bf16")  # auto -> the torch backend
    assert bf16.engine.backend == "torch" and bf16.engine.encoder_id == fp32.engine.encoder_id + "+bf16"
    masks = []
    for p in (fp32, bf16):
        p.set_image(image)
        masks.append(p.predict(boxes=np.array(box_of(truth), float)).masks[0, 0])
    assert dice(masks[0], masks[1]) > 0.97, dice(masks[0], masks[1])
    assert dice(masks[1], truth) > 0.9


def _volume() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    z, y, x = np.ogrid[0:9, 0:64, 0:64]
    inside = ((z - 4) / 4.6) ** 2 + ((y - 30) / 16.0) ** 2 + ((x - 34) / 20.0) ** 2 <= 1
    vol = rng.normal(40, 6, (9, 64, 64)).astype(np.float32)
    vol[inside] = rng.normal(190, 6, int(inside.sum()))
    return vol, inside


def test_batched_slice_encoding_gives_the_same_masks(monkeypatch) -> None:
    """encode_batch > 1 (a GPU's default) encodes the walk's next slices together; the masks are those of one slice
    per call, and no slice is encoded twice."""
    vol, inside = _volume()
    prompt = [ObjectPrompt(label=1, box=box_of(inside[4]), slice_index=4)]
    one = Predictor("litemedsam", backend="torch")
    batched = Predictor("litemedsam", backend="torch", encode_batch=3)
    assert one.encode_batch == 1 and batched.encode_batch == 3
    calls: list[int] = []
    original = batched.engine.encode
    monkeypatch.setattr(batched.engine, "encode", lambda x: (calls.append(len(x)), original(x))[1])
    a = segment_volume(vol, prompt, one, preset="percentile").labels
    b = segment_volume(vol, prompt, batched, preset="percentile").labels
    assert a.any() and dice(a == 1, inside) > 0.8
    for k in range(vol.shape[0]):
        assert dice(a[k] == 1, b[k] == 1) >= 0.99 if a[k].any() else not b[k].any()
    assert max(calls) == 3 and sum(calls) <= vol.shape[0] + 2 * 2, calls  # at most batch - 1 extra per direction


def test_embed_many_uses_and_fills_the_cache() -> None:
    from medsamkit.predict import EmbeddingCache

    images = [disk_image(64, 64, 30, 30, 10 + i, seed=i)[0] for i in range(3)]
    p = Predictor("litemedsam", backend="torch", encode_batch=2, cache=EmbeddingCache())
    single = [p.embed(images[0])]
    assert p.cache.misses == 1
    many = p.embed_many(images)
    assert p.cache.hits >= 1 and len(p.cache) == 3
    assert np.array_equal(many[0][0], single[0][0])
    fresh = Predictor("litemedsam", backend="torch")
    for (emb, geom), image in zip(many, images):
        ref, ref_geom = fresh.embed(image)
        assert geom == ref_geom and np.abs(emb - ref).max() < 1e-3


def test_cli_device_errors_are_one_line(tmp_path) -> None:
    from PIL import Image

    image, truth = disk_image(64, 64, 30, 30, 12)
    src = tmp_path / "disk.png"
    Image.fromarray(image).save(src)
    cmd = [sys.executable, "-m", "medsamkit.cli.main", "segment", str(src), "--box", "10,10,50,50", "-o", str(tmp_path / "m.png")]
    bad = subprocess.run([*cmd, "--device", "gpu"], capture_output=True, text=True)
    assert bad.returncode == 2 and "expected cpu, auto, cuda or cuda:N" in bad.stderr
    if not HAS_CUDA:
        r = subprocess.run([*cmd, "--device", "cuda"], capture_output=True, text=True)
        assert r.returncode == 2 and "PyTorch sees no CUDA GPU" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "m.png").exists()


# -- on a GPU ------------------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpu_predictor_matches_the_cpu(precision) -> None:
    image, truth = disk_image(240, 320, 150, 120, 50)
    cpu = Predictor("litemedsam")
    gpu = Predictor("litemedsam", device="cuda", precision=precision)
    assert gpu.engine.backend == "torch" and str(gpu.engine.device).startswith("cuda") and gpu.encode_batch == 8
    out = []
    for p in (cpu, gpu):
        p.set_image(image)
        out.append(p.predict(boxes=np.array(box_of(truth), float)).masks[0, 0])
    assert dice(out[0], out[1]) >= (0.98 if precision == "fp32" else 0.95)


@needs_cuda
def test_gpu_volume_matches_the_cpu() -> None:
    vol, inside = _volume()
    prompt = [ObjectPrompt(label=1, box=box_of(inside[4]), slice_index=4)]
    a = segment_volume(vol, prompt, Predictor("litemedsam"), preset="percentile").labels == 1
    b = segment_volume(vol, prompt, Predictor("litemedsam", device="cuda"), preset="percentile").labels == 1
    assert dice(a, b) >= 0.98
