"""The model shared by every session of the app: one engine (calls serialised by a lock), one embedding cache
bounded in bytes across all sessions (keyed by slice content, so identical slices are encoded once), and a
fresh :class:`Predictor` per request so no request sees another's current image."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..predict.cache import EmbeddingCache, embedding_key, encoder_id_of
from ..predict.predictor import Predictor
from ..preprocess.image2d import to_rgb_uint8


class LockedEngine:
    """An :class:`~medsamkit.models.backends.Engine` whose calls run one at a time: the model is CPU-bound and
    already uses every core per call, so requests take turns (at the granularity of one encode or decode)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self.backend = engine.backend
        self.arch = engine.arch
        self.weights_id = engine.weights_id
        self.encoder_id = encoder_id_of(engine)  # embeddings shared with models of the same image encoder

    def encode(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._engine.encode(images)

    def prepare(self, embedding: np.ndarray) -> Any:
        with self._lock:
            return self._engine.prepare(embedding)

    def decode(self, prepared: Any, coords: np.ndarray, labels: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._engine.decode(prepared, coords, labels, outputs)

    def decode_masked(
        self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray, outputs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._engine.decode_masked(embedding, coords, labels, mask_input, outputs)


class ModelService:
    """Hands out predictors that share one locked engine and one :class:`EmbeddingCache` of ``cache_bytes``.

    predictor: an existing :class:`Predictor` whose engine to share (its own cache is not used); otherwise the
    registry model ``model`` is loaded on first use.
    """

    def __init__(self, model: str = "litemedsam", predictor: Predictor | None = None, cache_bytes: int = 1 << 30) -> None:
        self.model = model
        self.cache = EmbeddingCache(max_bytes=cache_bytes)
        self._base = predictor
        self._engine: LockedEngine | None = None
        self._init_lock = threading.Lock()
        self._inflight: dict[str, list[Any]] = {}  # key -> [lock, users]
        self._inflight_lock = threading.Lock()
        self._busy = 0  # segment/propagate requests running now (background pre-encoding waits for none)
        self._idle = threading.Condition()

    def engine(self) -> LockedEngine:
        with self._init_lock:
            if self._engine is None:
                base = self._base or Predictor(self.model)
                self._engine = LockedEngine(base.engine)
            return self._engine

    def predictor(self, on_embed: Callable[[], None] | None = None) -> SharedPredictor:
        """A new predictor on the shared engine and cache; ``on_embed`` is called after each slice embedding
        (cached or computed), which is how the app counts propagation progress."""
        return SharedPredictor(self, on_embed)

    @contextmanager
    def foreground(self) -> Iterator[None]:
        """Mark a request that uses the model (segment, propagate) while it runs: background work
        (:mod:`medsamkit.app.preencode`) waits until none runs."""
        with self._idle:
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.notify_all()

    def wait_until_idle(self, timeout: float | None = None) -> bool:
        """Block until no request marked :meth:`foreground` runs (or ``timeout`` seconds); True when idle."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    @contextmanager
    def claim(self, key: str) -> Iterator[None]:
        """Hold ``key`` while computing it: concurrent requests for the same slice wait, then hit the cache."""
        with self._inflight_lock:
            entry = self._inflight.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._inflight_lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._inflight[key]


class SharedPredictor(Predictor):
    """:class:`Predictor` on the service's engine and cache, with in-flight de-duplication of encodes."""

    def __init__(self, service: ModelService, on_embed: Callable[[], None] | None = None) -> None:
        super().__init__(engine=service.engine(), cache=service.cache)
        self._service = service
        self.on_embed = on_embed

    def embed(self, image: np.ndarray) -> tuple[np.ndarray, Any]:
        rgb = to_rgb_uint8(image)
        key = embedding_key(encoder_id_of(self.engine), self.transform.name, self.transform.input_size, rgb)
        with self._service.claim(key):
            out = super().embed(rgb)
        if self.on_embed is not None:
            self.on_embed()
        return out
