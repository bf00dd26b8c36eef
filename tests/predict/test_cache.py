"""Embedding cache: content keys, LRU bound, disk persistence across predictors."""

from __future__ import annotations

import numpy as np

from medsamkit.predict.cache import EmbeddingCache, embedding_key
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
