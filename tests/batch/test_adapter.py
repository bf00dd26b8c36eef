"""``medsamkit batch segment --adapter``: the workers load the adapted model (a ``medsamkit finetune`` result on
its base), on the shared local cluster."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medsamkit.batch import Ledger, ModelSpec
from medsamkit.cli.main import main
from tests.adapter_files import write_inverting_adapter
from tests.conftest import disk_image, one_line_error

pytestmark = pytest.mark.xdist_group("dask")


def test_batch_segment_runs_on_the_adapted_model(dask_engine, litemedsam_model, tmp_path, capsys) -> None:
    adapter = write_inverting_adapter(tmp_path / "run" / "adapter.pt", litemedsam_model)
    image, _ = disk_image(64, 64, 30, 34, 12)
    Image.fromarray(image).save(tmp_path / "disk.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "disk", "image": "disk.png", "box": "14,18,46,50"}) + "\n")
    out = tmp_path / "out"
    scheduler = ["--scheduler", dask_engine.client.scheduler.address]
    rc = main(["batch", "segment", str(manifest), "-o", str(out), "--adapter", str(adapter.parent), *scheduler, "-q"])
    assert rc == 0, capsys.readouterr().err
    record = json.loads((out / "records" / "disk.json").read_text())
    assert record["model"]["name"] == "litemedsam+decoder" and record["model"]["backend"] == "torch"
    with Ledger(out / "ledger.sqlite") as led:
        assert led.job()["settings"]["adapter"] == str(adapter.parent.resolve())
    adapted = np.asarray(Image.open(record["output"]))

    base_out = tmp_path / "base.png"
    assert (
        main(["segment", str(tmp_path / "disk.png"), "--box", "14,18,46,50", "--backend", "torch", "-o", str(base_out), "-q"])
        == 0
    )
    base = np.asarray(Image.open(base_out))
    assert base.any() and adapted.any() and not (base.astype(bool) & adapted.astype(bool)).any()  # the complement

    # the same folder with another adapter, or none, is refused; an AutoSAM run or a missing file is one line
    with pytest.raises(ValueError, match="other settings"):
        from medsamkit.batch import SegmentJob, run_batch

        run_batch(SegmentJob(str(out), ModelSpec(threads=1)), manifest, engine=dask_engine)
    code = main(["batch", "segment", str(manifest), "-o", str(tmp_path / "o2"), "--adapter", str(tmp_path / "nope.pt")])
    assert "adapter file not found" in one_line_error(capsys, code, 2)
    import torch

    doc = torch.load(adapter, weights_only=True)
    doc["mode"] = "autosam"
    torch.save(doc, tmp_path / "auto.pt")
    code = main(["batch", "segment", str(manifest), "-o", str(tmp_path / "o3"), "--adapter", str(tmp_path / "auto.pt")])
    assert "autoseg" in one_line_error(capsys, code, 2)
