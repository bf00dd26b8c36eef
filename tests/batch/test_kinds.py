"""``batch everything`` and ``batch samaug`` on the shared local cluster: the same files as the single-process
functions, bad rows failed, reruns skip finished items."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsamkit.batch import EverythingJob, Ledger, ModelSpec, SamaugJob, dataset_items, run_batch
from medsamkit.cli.main import main
from medsamkit.io import read_image_2d
from tests.conftest import DATA, requires_shared

pytestmark = [requires_shared, pytest.mark.xdist_group("dask")]

NUCLEI = DATA / "dsb2018_nuclei_96"


def _options():
    from medsamkit.predict.automatic import default_options

    return default_options("litemedsam", points_per_side=4)  # a small grid: seconds per 96x96 image


def test_batch_everything_matches_the_single_process_function(dask_engine, predictor, tmp_path) -> None:
    from medsamkit.predict.jobs import everything_file

    image = DATA / "busi_breast_us" / "images" / "malignant_10.png"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": str(image), "id": "n1"}) + "\n" + json.dumps({"image": "nope.png"}) + "\n")
    out = tmp_path / "out"
    s = run_batch(EverythingJob(str(out), ModelSpec(threads=1), _options()), manifest, engine=dask_engine)
    assert (s.done, s.failed) == (1, 1) and "image not found" in s.failures[0]["error"]
    ref = everything_file(predictor, image, tmp_path / "ref", _options(), stem="n1")
    batch_labels = read_image_2d(out / "everything" / "n1_labels.png")
    assert np.array_equal(batch_labels, read_image_2d(ref["labels"]))
    record = json.loads((out / "records" / "n1.json").read_text())
    assert record["masks"] == ref["masks"] > 0 and record["job"] == "everything"
    # other options into the same folder are refused; the same ones skip the finished item
    with pytest.raises(ValueError, match="other settings \\(options\\)"):
        run_batch(EverythingJob(str(out), ModelSpec(threads=1), _options().__class__()), manifest, engine=dask_engine)
    s = run_batch(EverythingJob(str(out), ModelSpec(threads=1), _options()), manifest, engine=dask_engine, max_retries=0)
    assert s.already_done == 1 and s.attempted == 0 and not s.cluster_started


def test_batch_samaug_prepares_dataset_cases(dask_engine, tmp_path, capsys) -> None:
    from medsamkit.data import load_dataset
    from medsamkit.predict.unet import load_priors

    ds = load_dataset(NUCLEI).subset(limit=2)
    out = tmp_path / "aug"
    s = run_batch(SamaugJob(str(out), ModelSpec(threads=1), _options()), dataset_items(ds), engine=dask_engine)
    assert (s.done, s.failed) == (2, 0)
    for case in ds:
        seg_key = load_priors(out / "priors" / f"{case.id}.npz")[1]
        rec = json.loads((out / "batch_records" / f"{case.id}.json").read_text())
        assert rec["key"] == seg_key and rec["status"] == "computed"
        assert (out / "images" / f"{case.id}.png").is_file() and (out / "masks" / f"{case.id}.png").is_file()
    assert len(load_dataset(out)) == 2  # the output folder is itself a dataset
    with Ledger(out / "ledger.sqlite") as led:
        assert led.job()["settings"]["mode"] == "add"
    # the command on the same folder finds everything done (no cluster is started)
    rc = main(["batch", "samaug", str(NUCLEI), "--limit", "2", "-o", str(out), "--points-per-side", "4", "--workers", "2"])
    assert rc == 0 and "nothing to compute" in capsys.readouterr().err
