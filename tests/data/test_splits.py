"""Case splits: deterministic, disjoint and complete; a run's split.json written once and read back on resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from medsamkit.data import read_split, run_split, split_cases, write_split


def test_split_deterministic_disjoint_and_complete(tmp_path) -> None:
    ids = [f"case{i:03d}" for i in range(37)]
    a = split_cases(ids, 0.2, 0.1, seed=3)
    assert a == split_cases(list(reversed(ids)), 0.2, 0.1, seed=3)  # input order does not matter
    assert a != split_cases(ids, 0.2, 0.1, seed=4)
    assert (len(a.test), len(a.val), len(a.train)) == (4, 7, 26)
    parts = [set(a.train), set(a.val), set(a.test)]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == len(ids)
    assert all(p == sorted(p) for p in a)
    write_split(tmp_path / "split.json", a, seed=3)
    assert read_split(tmp_path / "split.json") == a
    assert json.loads((tmp_path / "split.json").read_text())["seed"] == 3
    assert split_cases(ids[:3], 0.1, 0.1).train and len(split_cases(ids[:3], 0.1, 0.1).val) == 1  # at least one each
    assert split_cases(ids, 0.0, 0.0).train == ids
    with pytest.raises(ValueError, match="at least one training case"):
        split_cases(ids[:2], 0.5, 0.4)
    with pytest.raises(ValueError, match="val_fraction"):
        split_cases(ids, 1.0, 0.0)
    with pytest.raises(ValueError, match="unique"):
        split_cases(["a", "a", "b"], 0.0, 0.0)


def test_kfold_test_parts_cover_every_case_once() -> None:
    ids = [f"case{i:02d}" for i in range(16)]
    parts = [split_cases(ids, 0.15, seed=0, folds=4, fold=k) for k in range(4)]
    assert sorted(c for p in parts for c in p.test) == ids  # disjoint and complete
    for p in parts:
        assert (len(p.test), len(p.val), len(p.train)) == (4, 2, 10)
        assert not set(p.test) & set(p.val) and not set(p.test) & set(p.train) and not set(p.val) & set(p.train)
    # fold 0 of 4 is the split with test_fraction 1/4 (same shuffle, same val cases)
    assert parts[0] == split_cases(ids, 0.15, 0.25, seed=0)
    assert [len(split_cases(ids[:10], 0.1, seed=1, folds=3, fold=k).test) for k in range(3)] == [3, 4, 3]
    with pytest.raises(ValueError, match="folds must be an integer from 2 to the number of cases"):
        split_cases(ids, 0.1, folds=1)
    with pytest.raises(ValueError, match="fold must be an integer from 0 to 3"):
        split_cases(ids, 0.1, folds=4, fold=4)
    with pytest.raises(ValueError, match="fold 0 of 2 with at least one training case"):
        split_cases(ids[:2], 0.1, folds=2)
    with pytest.raises(ValueError, match="fold 2 needs folds"):
        split_cases(ids, 0.1, fold=2)
    assert split_cases(ids, 0.1, folds=4) == split_cases(ids, 0.1, folds=4, fold=0)


def test_run_split_is_saved_read_back_on_resume_and_checked(tmp_path) -> None:
    ds = SimpleNamespace(ids=[f"c{i}" for i in range(10)], root=tmp_path / "data")
    assert run_split(tmp_path / "quiet", ds, 0.2, 0.2, seed=3, write=False) and not (tmp_path / "quiet").exists()
    first = run_split(tmp_path / "run", ds, 0.2, 0.2, seed=3)
    assert read_split(tmp_path / "run" / "split.json") == first
    # resume reads the saved split back; asked for another seed, fraction or fold it refuses and leaves the file
    assert run_split(tmp_path / "run", ds, 0.2, 0.2, seed=3, resume=True) == first
    before = (tmp_path / "run" / "split.json").read_text()
    with pytest.raises(ValueError, match=r"another split: seed 3 \(asked 4\)"):
        run_split(tmp_path / "run", ds, 0.2, 0.2, seed=4, resume=True)
    with pytest.raises(ValueError, match=r"k-fold off \(asked on\)"):
        run_split(tmp_path / "run", ds, 0.2, 0.2, seed=3, resume=True, folds=5, fold=1)
    assert (tmp_path / "run" / "split.json").read_text() == before
    # a new run with another seed splits anew
    assert run_split(tmp_path / "run", ds, 0.2, 0.2, seed=4) != first
    folded = run_split(tmp_path / "fold", ds, 0.2, 0.2, seed=3, folds=5, fold=2)
    assert folded == split_cases(ds.ids, 0.2, seed=3, folds=5, fold=2)
    saved = json.loads((tmp_path / "fold" / "split.json").read_text())
    assert (saved["folds"], saved["fold"]) == (5, 2) and "test_fraction" not in saved
    assert run_split(tmp_path / "fold", ds, 0.2, 0.2, seed=3, resume=True, folds=5, fold=2) == folded
    with pytest.raises(ValueError, match=r"fold 2 \(asked 0\)"):
        run_split(tmp_path / "fold", ds, 0.2, 0.2, seed=3, resume=True, folds=5)
    fewer = SimpleNamespace(ids=ds.ids[:5], root=ds.root)
    with pytest.raises(ValueError, match="lacks"):
        run_split(tmp_path / "run", fewer, 0.2, 0.2, seed=4, resume=True)


def test_evaluate_and_train_still_export_the_dataset_and_split_names() -> None:
    import medsamkit.data as data
    import medsamkit.evaluate as evaluate
    import medsamkit.train as train

    for name in ("LAYOUTS", "Case", "Dataset", "case_id_of", "load_case", "load_dataset", "modality_from_name"):
        assert getattr(evaluate, name) is getattr(data, name)
    for name in ("Split", "read_split", "split_cases"):
        assert getattr(train, name) is getattr(data, name)
