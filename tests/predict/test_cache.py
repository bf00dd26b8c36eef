"""Embedding cache: content keys, LRU bound, disk persistence across predictors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from medsamkit.models.backends import create_engine
from medsamkit.predict.cache import EmbeddingCache, embedding_key, encoder_id_of
from medsamkit.preprocess.transforms import Geometry
from tests.conftest import disk_image
from tests.predict.test_volume import CountingPredictor

GEOM = Geometry((10, 20), (128, 256), 256, (12.8, 12.8))


def test_key_depends_on_pixels_model_and_preprocessing() -> None:
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[3, 3, 0] = 1
    k = embedding_key("w1", "litemedsam", 256, a)
    assert k == embedding_key("w1", "litemedsam", 256, a.copy())
    assert (
        len(
            {
                k,
                embedding_key("w1", "litemedsam", 256, b),
                embedding_key("w2", "litemedsam", 256, a),
                embedding_key("w1", "sam", 256, a),
                embedding_key("w1", "litemedsam", 1024, a),
                embedding_key("w1", "litemedsam", 256, a.reshape(4, 16, 3)),
            }
        )
        == 6
    )


def test_lru_eviction_by_bytes() -> None:
    c = EmbeddingCache(max_bytes=3 * 4000)
    for i in range(5):
        c.put(f"k{i}", np.zeros(1000, np.float32), GEOM)
    assert len(c) == 3 and c.nbytes == 12000
    assert c.get("k0") is None and c.get("k4") is not None
    c.get("k2")  # touch: k3 becomes the oldest
    c.put("k5", np.zeros(1000, np.float32), GEOM)
    assert c.get("k3") is None and c.get("k2") is not None


def test_disk_cache_skips_the_encoder_in_a_new_predictor(tmp_path) -> None:
    img, _ = disk_image(100, 120, 60, 50, 20)
    first = CountingPredictor("litemedsam", cache=EmbeddingCache(disk_dir=tmp_path))
    first.set_image(img)
    out1 = first.predict(boxes=[40, 30, 80, 70])
    assert first.encodes == 1 and len(list(tmp_path.glob("*.npz"))) == 1
    second = CountingPredictor("litemedsam", cache=EmbeddingCache(disk_dir=tmp_path))
    second.set_image(img)
    out2 = second.predict(boxes=[40, 30, 80, 70])
    assert second.encodes == 0 and second.cache.disk_hits == 1
    assert np.array_equal(out1.masks, out2.masks) and second.geometry == first.geometry
    changed = img.copy()
    changed[0, 0] ^= 1
    second.set_image(changed)  # one pixel differs: a new key, the encoder runs
    assert second.encodes == 1


def test_corrupt_disk_entry_is_recomputed(tmp_path) -> None:
    img, _ = disk_image(64, 64, 30, 30, 10)
    p = CountingPredictor("litemedsam", cache=EmbeddingCache(disk_dir=tmp_path))
    p.set_image(img)
    entry = next(tmp_path.glob("*.npz"))
    entry.write_bytes(b"garbage")
    q = CountingPredictor("litemedsam", cache=EmbeddingCache(disk_dir=tmp_path))
    q.set_image(img)
    assert q.encodes == 1


# -- encoder identity: a weights overlay shares its base's embeddings -------------------------------------------

LITE_SHA = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def test_keys_of_ordinary_models_are_unchanged() -> None:
    """Keys written before engines had an encoder_id stay valid: an ordinary model's encoder_id is its weights_id,
    and the key of a known input is the one earlier versions computed."""
    a = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    assert embedding_key(LITE_SHA, "litemedsam", 256, a) == "31aa914bc65561831cf8a241ffbd3b0ecf4d92e64b9818c2f105191f21199756"
    eng = create_engine("litemedsam", backend="torch", threads=1)
    assert eng.weights_id == LITE_SHA and encoder_id_of(eng) == LITE_SHA
    assert encoder_id_of(SimpleNamespace(weights_id="w")) == "w"  # an engine without encoder_id: its weights_id


@pytest.fixture
def lite_overlay(tmp_path, monkeypatch):
    """``litemedsam-test-overlay``: the bundled LiteMedSAM with a perturbed decoder, registered from a test package."""
    from medsamkit.models import ARCHS, ModelEntry, load, register
    from medsamkit.models.overlay import save_overlay
    from medsamkit.models.registry import unregister
    from medsamkit.models.weights import PackageFile
    from tests.models.test_overlay import fake_package, perturbed_decoder

    monkeypatch.setenv("MEDSAMKIT_OFFLINE", "1")
    pkg = fake_package(tmp_path / "site", monkeypatch)
    base = load("litemedsam")
    save_overlay(
        pkg / "models" / "ov.safetensors",
        perturbed_decoder(base, keys="mask_decoder.output_hypernetworks_mlps.0"),
        base="litemedsam",
        base_sha256=base.weights.sha256,
        arch="litemedsam",
    )
    name = "litemedsam-test-overlay"
    src = PackageFile(pkg.name, "models/ov.safetensors")
    register(ModelEntry(name, ARCHS["litemedsam"], "test", "MIT", "ov.safetensors", None, (src,), base="litemedsam"))
    try:
        yield name
    finally:
        unregister(name)


def test_disk_cache_filled_by_the_base_serves_an_overlay_model(tmp_path, lite_overlay) -> None:
    img, _ = disk_image(90, 110, 55, 45, 22)
    disk = tmp_path / "embeddings"
    base = CountingPredictor("litemedsam", backend="torch", cache=EmbeddingCache(disk_dir=disk))
    base.set_image(img)
    out_base = base.predict(boxes=[30, 20, 80, 70])
    entries = sorted(p.name for p in disk.glob("*.npz"))
    assert base.encodes == 1 and len(entries) == 1
    over = CountingPredictor(lite_overlay, backend="torch", cache=EmbeddingCache(disk_dir=disk))
    assert over.engine.weights_id != base.engine.weights_id  # another model ...
    assert encoder_id_of(over.engine) == encoder_id_of(base.engine) == LITE_SHA  # ... on the same encoder
    over.set_image(img)
    assert over.encodes == 0 and over.cache is not None and over.cache.disk_hits == 1  # the same key: no encoding
    assert sorted(p.name for p in disk.glob("*.npz")) == entries
    assert np.array_equal(over.get_image_embedding(), base.get_image_embedding())
    out = over.predict(boxes=[30, 20, 80, 70])
    assert np.abs(out.low_res_logits - out_base.low_res_logits).max() > 1e-2  # the overlay's decoder answered
    # the other way round, in memory: a shared cache filled by the overlay model serves the base
    shared = EmbeddingCache()
    first = CountingPredictor(lite_overlay, backend="torch", cache=shared)
    first.set_image(img)
    second = CountingPredictor("litemedsam", backend="torch", cache=shared)
    second.set_image(img)
    assert first.encodes == 1 and second.encodes == 0 and shared.hits == 1


def test_disk_folder_is_bounded_in_bytes_least_recently_used_first(tmp_path) -> None:
    import os

    emb = np.zeros(1000, np.float32)  # about 4.3 kB per .npz entry
    probe = EmbeddingCache(disk_dir=tmp_path / "probe", disk_max_bytes=None)
    probe.put("p", emb, GEOM)
    entry = probe.disk_nbytes
    c = EmbeddingCache(max_bytes=1, disk_dir=tmp_path / "c", disk_max_bytes=3 * entry)
    for i in range(3):
        c.put(f"k{i}", emb, GEOM)
        os.utime(tmp_path / "c" / f"k{i}.npz", (1000 + i, 1000 + i))  # distinct ages, k0 the oldest
    assert c.get("k0") is not None  # a disk hit (memory holds one entry): k0 becomes the most recent
    c.put("k3", emb, GEOM)  # over budget: the least recently used (k1) goes
    names = sorted(f.name for f in (tmp_path / "c").glob("*.npz"))
    assert names == ["k0.npz", "k2.npz", "k3.npz"]
    assert c.disk_nbytes <= 3 * entry
    # no bound: nothing is deleted
    u = EmbeddingCache(max_bytes=1, disk_dir=tmp_path / "u", disk_max_bytes=None)
    for i in range(6):
        u.put(f"k{i}", emb, GEOM)
    assert len(list((tmp_path / "u").glob("*.npz"))) == 6
    os.utime(tmp_path / "u" / "k0.npz", (1000, 1000))
    assert u.get("k0") is not None  # a disk hit of an unbounded cache writes nothing (fine-tuning relies on this)
    assert (tmp_path / "u" / "k0.npz").stat().st_mtime == 1000
