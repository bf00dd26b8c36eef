"""Loading an adapted model on the inference side: ``models.load(name, adapter=)`` and the adapter file's home
(:mod:`medsamkit.models.adapted`), still importable from :mod:`medsamkit.train`."""

from __future__ import annotations

import numpy as np
import pytest

from tests.adapter_files import write_inverting_adapter
from tests.conftest import disk_image


@pytest.fixture(scope="module")
def inverting(litemedsam_model, tmp_path_factory):
    return write_inverting_adapter(tmp_path_factory.mktemp("adapter") / "adapter.pt", litemedsam_model)


def test_load_with_adapter_gives_the_adapted_model(inverting, litemedsam_model) -> None:
    from medsamkit import models
    from medsamkit.predict import Predictor

    model = models.load("litemedsam", adapter=inverting)
    assert model.spec.name == "litemedsam+decoder" and model.weights.name == "litemedsam+decoder"
    assert model.adapter_info["mode"] == "decoder" and model.adapter_info["path"] == str(inverting)
    assert models.load(adapter=inverting.parent).weights.sha256 == model.weights.sha256  # a run folder works too

    image, truth = disk_image(64, 64, 30, 34, 12)
    box = np.array([14, 18, 46, 50])
    base = Predictor(litemedsam_model, backend="torch")
    base.set_image(image)
    adapted = Predictor(model, backend="torch")
    adapted.set_image(image)
    a = base.predict(boxes=box).masks[0, 0]
    b = adapted.predict(boxes=box).masks[0, 0]
    assert a.any() and b.any() and not (a & b).any()  # the adapted mask is the base's complement


def test_prompted_load_refuses_autosam_and_other_bases(inverting, tmp_path) -> None:
    import torch

    from medsamkit import models

    doc = torch.load(inverting, weights_only=True)
    doc["mode"] = "autosam"
    torch.save(doc, tmp_path / "auto.pt")
    with pytest.raises(ValueError, match="autoseg"):
        models.load(adapter=tmp_path / "auto.pt")
    doc = torch.load(inverting, weights_only=True)
    doc["base"]["digest"] = "0" * 64
    torch.save(doc, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other base weights"):
        models.load(adapter=tmp_path / "other.pt")


def test_names_kept_in_train() -> None:
    import importlib

    import medsamkit.models.adapted as adapted
    import medsamkit.predict.autoseg as autoseg
    import medsamkit.train as train

    finetune = importlib.import_module("medsamkit.train.finetune")  # the attribute is the function finetune()

    assert train.load_adapted is adapted.load_adapted is finetune.load_adapted
    assert finetune.read_adapter is adapted.read_adapter and train.MODES == adapted.MODES
    assert train.AutoSegmenter is autoseg.AutoSegmenter and train.load_autosam is autoseg.load_autosam
