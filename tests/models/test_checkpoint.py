"""The training checkpoint reader: absent, unreadable and foreign files are refused with their own errors; a
tagged dict reads back as written."""

from __future__ import annotations

import pytest
import torch

from medsamkit.models.checkpoint import CHECKPOINT_FORMAT, load_checkpoint


def test_load_checkpoint_refuses_other_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a medsamkit training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_load_checkpoint_reads_a_tagged_dict(tmp_path) -> None:
    doc = {"format": CHECKPOINT_FORMAT, "model": {"w": torch.arange(3.0)}, "epoch": 2}
    torch.save(doc, tmp_path / "best.pt")
    back = load_checkpoint(tmp_path / "best.pt")
    assert back["epoch"] == 2 and torch.equal(back["model"]["w"], doc["model"]["w"])
